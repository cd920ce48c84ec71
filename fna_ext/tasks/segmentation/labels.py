"""Cityscapes' label table: the 34 label ids of ``*_gtFine_labelIds.png`` and the 19 train ids the
benchmark evaluates (cityscapesScripts' ``labels.py``, public); every other id is ignored (255)."""

from __future__ import annotations

import numpy as np

IGNORE = 255

# (label id, name, train id); the train id is IGNORE for classes the benchmark leaves out
LABELS: tuple[tuple[int, str, int], ...] = (
    (0, "unlabeled", IGNORE), (1, "ego vehicle", IGNORE), (2, "rectification border", IGNORE),
    (3, "out of roi", IGNORE), (4, "static", IGNORE), (5, "dynamic", IGNORE), (6, "ground", IGNORE),
    (7, "road", 0), (8, "sidewalk", 1), (9, "parking", IGNORE), (10, "rail track", IGNORE),
    (11, "building", 2), (12, "wall", 3), (13, "fence", 4), (14, "guard rail", IGNORE), (15, "bridge", IGNORE),
    (16, "tunnel", IGNORE), (17, "pole", 5), (18, "polegroup", IGNORE), (19, "traffic light", 6),
    (20, "traffic sign", 7), (21, "vegetation", 8), (22, "terrain", 9), (23, "sky", 10), (24, "person", 11),
    (25, "rider", 12), (26, "car", 13), (27, "truck", 14), (28, "bus", 15), (29, "caravan", IGNORE),
    (30, "trailer", IGNORE), (31, "train", 16), (32, "motorcycle", 17), (33, "bicycle", 18),
)

CITYSCAPES_CLASSES: tuple[str, ...] = tuple(name for _, name, train in sorted(LABELS, key=lambda l: l[2])
                                            if train != IGNORE)

# any byte that is not a label id maps here: found when the dataset is built
_NOT_AN_ID = 254


def _lookup() -> np.ndarray:
    table = np.full(256, _NOT_AN_ID, dtype=np.uint8)
    for label_id, _, train_id in LABELS:
        table[label_id] = train_id
    return table


ID_TO_TRAIN_ID = _lookup()


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """A labelIds image as train ids (0-18, IGNORE elsewhere). Bytes outside the table raise."""
    train = ID_TO_TRAIN_ID[label_ids]
    if (train == _NOT_AN_ID).any():
        raise ValueError(f"label ids {sorted(set(np.unique(label_ids[train == _NOT_AN_ID]).tolist()))} are not "
                         "Cityscapes label ids (0-33)")
    return train


def unknown_values(label: np.ndarray, num_classes: int | None) -> list[int]:
    """The values of a label image that are not allowed: for a labelIds image (``num_classes`` None)
    those outside the table; for train ids or a folder dataset's class indices, those that are
    neither below ``num_classes`` nor IGNORE."""
    values = np.unique(label)
    if num_classes is None:
        return [int(v) for v in values if ID_TO_TRAIN_ID[v] == _NOT_AN_ID]
    return [int(v) for v in values if v >= num_classes and v != IGNORE]
