"""What a keypoint dataset says of its joints: their names, which pairs trade places in a mirror
image, the skeleton drawn between them, and the per-joint sigmas of the OKS.

COCO's person category lists ``keypoints`` (names) and ``skeleton`` (1-based pairs); the sigmas
live in pycocotools, not in the file. A dataset of other joints gives its own in the category's
``sigmas`` (an extension the synthetic generator writes); for COCO's 17 joints the published
sigmas are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

# COCO's person keypoints and their OKS sigmas (pycocotools' COCOeval.Params.kpt_oks_sigmas)
COCO_KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                       "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
                       "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
COCO_SIGMAS = (0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87,
               0.89, 0.89)
COCO_SIGMAS = tuple(s / 10 for s in COCO_SIGMAS)


# left/right markers a joint's name may start or end with (lower case), tried in order
_SIDE_PREFIXES = (("left_", "right_"), ("left", "right"), ("l_", "r_"), ("l", "r"))
_SIDE_SUFFIXES = (("_left", "_right"), ("left", "right"), ("_l", "_r"))


@dataclass(frozen=True)
class Skeleton:
    """The joints of a keypoint category."""

    names: tuple[str, ...]
    sigmas: tuple[float, ...]
    edges: tuple[tuple[int, int], ...] = ()  # 0-based

    @property
    def num_joints(self) -> int:
        return len(self.names)

    @cached_property  # read for every mirrored training sample
    def flip_pairs(self) -> tuple[tuple[int, int], ...]:
        """(left, right) index pairs: joints whose names differ only in a left/right marker
        (``left_eye``/``right_eye``, ``eye_left``/``eye_right``, ``LShoulder``/``RShoulder``...,
        in any case)."""
        pairs = []
        for i, name in enumerate(self.names):
            partner = self._partner(name)
            if partner is not None:
                pairs.append((i, partner))
        return tuple(pairs)

    def _partner(self, name: str) -> int | None:
        """The index of the right joint of ``name`` when ``name`` is a left one."""
        index = {n.lower(): i for i, n in enumerate(self.names)}
        lower = name.lower()
        for left, right in _SIDE_PREFIXES:
            if lower.startswith(left) and right + lower[len(left):] in index:
                return index[right + lower[len(left):]]
        for left, right in _SIDE_SUFFIXES:
            if lower.endswith(left) and lower[:-len(left)] + right in index:
                return index[lower[:-len(left)] + right]
        return None

    def flip_permutation(self) -> list[int]:
        """Joint ``i`` of a mirrored image is joint ``permutation[i]`` of the original."""
        permutation = list(range(self.num_joints))
        for left, right in self.flip_pairs:
            permutation[left], permutation[right] = right, left
        return permutation

    def to_json(self) -> dict:
        return {"names": list(self.names), "sigmas": list(self.sigmas), "edges": [list(e) for e in self.edges]}

    @classmethod
    def from_json(cls, data: dict) -> "Skeleton":
        return cls(tuple(data["names"]), tuple(float(s) for s in data["sigmas"]),
                   tuple((int(a), int(b)) for a, b in data.get("edges", ())))


def skeleton_of_category(category: dict, source: str) -> Skeleton:
    """The :class:`Skeleton` of a COCO keypoint category; ValueError naming ``source`` when its
    names, skeleton or sigmas are unusable."""
    names = category.get("keypoints")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{source}: the category {category.get('name', category.get('id'))!r} has no 'keypoints' "
                         "list of joint names; a COCO keypoints file names its joints there")
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: the category's 'keypoints' names a joint twice")
    sigmas = category.get("sigmas")
    if sigmas is None:
        if tuple(names) != COCO_KEYPOINT_NAMES:
            raise ValueError(f"{source}: the category's {len(names)} joints are not COCO's 17, so their OKS sigmas "
                             "are unknown; add a 'sigmas' list (one per joint) to the category")
        sigmas = COCO_SIGMAS
    if (not isinstance(sigmas, (list, tuple)) or len(sigmas) != len(names)
            or not all(_positive_finite(s) for s in sigmas)):
        raise ValueError(f"{source}: the category's 'sigmas' must be {len(names)} positive numbers, one per joint")
    pairs = category.get("skeleton") or []
    if not isinstance(pairs, list):
        raise ValueError(f"{source}: the category's 'skeleton' is {pairs!r}, not a list of joint pairs")
    edges = []
    for pair in pairs:
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(j, int) and 1 <= j <= len(names) for j in pair)):
            raise ValueError(f"{source}: the category's 'skeleton' holds {pair!r}; each entry is a pair of "
                             f"1-based joint numbers up to {len(names)}")
        edges.append((pair[0] - 1, pair[1] - 1))
    skeleton = Skeleton(tuple(names), tuple(float(s) for s in sigmas), tuple(edges))
    paired = {joint for pair in skeleton.flip_pairs for joint in pair}
    unpaired = [name for i, name in enumerate(names) if i not in paired and ("left" in name.lower()
                                                                               or "right" in name.lower())]
    if unpaired:
        raise ValueError(f"{source}: the joint {unpaired[0]!r} names a side but no joint of the other side matches "
                         "it, so a mirror image would keep its label; name the pair like left_X and right_X")
    return skeleton


def _positive_finite(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and value > 0
    except OverflowError:
        return False
