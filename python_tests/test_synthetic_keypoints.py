"""The synthetic stick-figure dataset in the COCO person-keypoints layout: determinism, a layout
pycocotools reads, keypoints consistent with their visibility, the box and the image, left and
right as for people facing the viewer, the command line, the cached default, and the older kinds
still drawn as before."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from fna_ext.data import synthetic
from fna_ext.data.synthetic import (KEYPOINT_NAMES, KEYPOINT_SIGMAS, KEYPOINT_SKELETON, default_dataset,
                                    draw_keypoints_image, generate_keypoints)

SMALL = {"images": 12, "size": 96}
SPLITS = (("train2017", 10), ("val2017", 2))
# The last commit before the keypoints kind: the other kinds must still draw what it drew.
BEFORE_KEYPOINTS = "d995f328c072f1a42ee177bb3a48d2fef13f7dc8"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keypoints_root(tmp_path_factory):
    return generate_keypoints(tmp_path_factory.mktemp("kp") / "persons", **SMALL, seed=3)


def files_of(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def annotations_of(root):
    """(image, annotation) pairs of both splits, read through pycocotools."""
    pairs = []
    for split, _ in SPLITS:
        coco = COCO(str(root / "annotations" / f"person_keypoints_{split}.json"))
        for image in coco.dataset["images"]:
            pairs += [(image, ann) for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))]
    return pairs


def test_same_arguments_give_identical_files(keypoints_root, tmp_path):
    again = files_of(generate_keypoints(tmp_path / "again", **SMALL, seed=3))
    assert again == files_of(keypoints_root)
    other = files_of(generate_keypoints(tmp_path / "other", **SMALL, seed=4))
    assert other.keys() == again.keys()
    name = "annotations/person_keypoints_train2017.json"
    assert other[name] != again[name]


def test_layout_loads_in_pycocotools_with_one_person_category(keypoints_root):
    seen_images, seen_annotations = set(), []
    for split, count in SPLITS:
        coco = COCO(str(keypoints_root / "annotations" / f"person_keypoints_{split}.json"))
        [category] = coco.loadCats(coco.getCatIds())
        assert (category["id"], category["name"], category["supercategory"]) == (1, "person", "person")
        assert category["keypoints"] == list(KEYPOINT_NAMES) and len(KEYPOINT_NAMES) == 13
        assert category["sigmas"] == list(KEYPOINT_SIGMAS) and len(KEYPOINT_SIGMAS) == 13
        assert category["skeleton"] == [[a + 1, b + 1] for a, b in KEYPOINT_SKELETON]  # 1-based, as COCO
        assert all(1 <= i <= 13 for bone in category["skeleton"] for i in bone)
        assert {"info", "licenses"} <= coco.dataset.keys()
        assert len(coco.dataset["images"]) == count
        for image in coco.dataset["images"]:
            assert image["file_name"] == f"{image['id']:012d}.jpg"
            with Image.open(keypoints_root / split / image["file_name"]) as file:
                assert file.format == "JPEG" and file.size == (image["width"], image["height"]) == (96, 96)
            assert 1 <= len(coco.getAnnIds(imgIds=image["id"])) <= synthetic.MAX_PERSONS
        seen_images |= set(coco.getImgIds())
        seen_annotations += coco.getAnnIds()
    assert len(seen_images) == 12  # image ids are unique across the splits
    assert sorted(seen_annotations) == list(range(1, len(seen_annotations) + 1))  # and annotation ids


def test_annotations_are_consistent(keypoints_root):
    pairs = annotations_of(keypoints_root)
    assert pairs
    for image, ann in pairs:
        size = image["width"]
        assert ann["category_id"] == 1 and ann["iscrowd"] == 0
        x, y, w, h = ann["bbox"]
        assert all(type(v) is float for v in ann["bbox"])
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= size and y + h <= size
        assert 0 < ann["area"] <= w * h
        assert len(ann["keypoints"]) == 3 * 13
        keypoints = np.array(ann["keypoints"], dtype=float).reshape(13, 3)
        visibility = keypoints[:, 2]
        assert set(visibility) <= {0, 1, 2}
        assert ann["num_keypoints"] == np.count_nonzero(visibility) >= synthetic.MIN_LABELLED_KEYPOINTS
        assert all(round(v, 2) == v for v in ann["keypoints"])
        assert (keypoints[visibility == 0, :2] == 0).all()
        labelled = keypoints[visibility > 0, :2]
        assert ((labelled >= 0) & (labelled <= size - 1)).all()  # pixel indices, as COCO's
        # A visible joint lies on the person's drawn pixels: inside the box, up to rounding to a pixel.
        shown = keypoints[visibility == 2, :2]
        assert ((shown >= [x - 1, y - 1]) & (shown <= [x + w, y + h])).all()
        assert ann["segmentation"] and all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
        assert all(0 <= v <= size for p in ann["segmentation"] for v in p)  # clipped to the image


def test_segmentation_rasterizes_in_pycocotools_like_the_drawing(keypoints_root):
    coco = COCO(str(keypoints_root / "annotations" / "person_keypoints_train2017.json"))
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        assert mask.shape == (96, 96) and mask.any()
        x, y, w, h = (int(v) for v in ann["bbox"])
        assert mask[y:y + h, x:x + w].any()
    # The polygons are the drawn figure's, up to edge pixels: Pillow fills them, pycocotools
    # does not, which makes the drawing about a pixel thicker.
    for index in range(10):
        figure = synthetic._random_person(np.random.default_rng([2, index]), 96)
        drawn = synthetic._rasterize_figure(figure, 96)[0] > 0
        if not drawn.any():
            continue
        owner = np.where(drawn, 0, -1).astype(np.int16)
        polygons = synthetic._describe_person(figure, 0, owner).polygons
        rasterized = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, 96, 96))) > 0
        assert (drawn & rasterized).sum() / (drawn | rasterized).sum() > 0.7


def test_left_joints_are_on_the_image_right_as_for_people_facing_the_viewer(keypoints_root):
    left = [KEYPOINT_NAMES.index(f"left_{joint}") for joint in ("shoulder", "hip")]
    right = [KEYPOINT_NAMES.index(f"right_{joint}") for joint in ("shoulder", "hip")]
    for index in range(50):
        figure = synthetic._random_figure(np.random.default_rng([7, index]), 80.0)
        assert (figure.joints[left, 0] > figure.joints[right, 0]).all()  # the torso tilts at most 30 degrees
        assert figure.joints[KEYPOINT_NAMES.index("nose"), 1] < figure.joints[left + right, 1].min()  # upright
    for _, ann in annotations_of(keypoints_root):
        keypoints = np.array(ann["keypoints"], dtype=float).reshape(13, 3)
        for a, b in zip(left, right):
            if keypoints[a, 2] > 0 and keypoints[b, 2] > 0:
                assert keypoints[a, 0] > keypoints[b, 0]
    # Left and right pair up by name, as a loader's flip finds them.
    sides = {name.split("_", 1)[1] for name in KEYPOINT_NAMES if name.startswith(("left_", "right_"))}
    assert all(f"left_{s}" in KEYPOINT_NAMES and f"right_{s}" in KEYPOINT_NAMES for s in sides) and len(sides) == 6


def test_a_joint_covered_by_a_later_figure_is_labelled_but_hidden():
    size = 96
    first = synthetic._moved(synthetic._random_figure(np.random.default_rng([0, 0]), 70.0), np.array([40.0, 55.0]))
    later = synthetic._moved(first, np.array([6.0, 3.0]))  # the same pose drawn a little aside, over it
    owner = np.full((size, size), -1, dtype=np.int16)
    for index, figure in enumerate((first, later)):
        owner[synthetic._rasterize_figure(figure, size)[0] > 0] = index
    keypoints = np.array(synthetic._describe_person(first, 0, owner).keypoints).reshape(13, 3)
    pixels = np.rint(first.joints).astype(int)
    covered = owner[pixels[:, 1], pixels[:, 0]] == 1
    assert covered.any() and not covered.all()
    assert (keypoints[covered, 2] == 1).all() and (keypoints[~covered, 2] == 2).all()
    assert (synthetic._describe_person(later, 1, owner).keypoints[2::3]) == [2] * 13


def test_drawing_marks_joints_covered_by_later_figures_1():
    found = 0
    for index in range(40):
        image, people = draw_keypoints_image(np.random.default_rng([1, index]), 96)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8 and people
        found += sum(person.keypoints[2::3].count(1) for person in people[:-1])
        assert people[-1].keypoints[2::3].count(1) == 0  # nothing is drawn over the last one
    assert found > 0


def test_clip_polygon_keeps_the_part_inside_the_image():
    square = np.array([[-10.0, -10.0], [10.0, -10.0], [10.0, 10.0], [-10.0, 10.0]])
    clipped = synthetic._clip_polygon(square, 50)
    assert sorted(map(tuple, clipped.tolist())) == [(0.0, 0.0), (0.0, 10.0), (10.0, 0.0), (10.0, 10.0)]
    assert synthetic._clip_polygon(square - 30, 50).shape == (0, 2)
    assert np.array_equal(synthetic._clip_polygon(square + 20, 50), square + 20)


def test_cli_writes_a_keypoints_dataset(tmp_path):
    out = tmp_path / "d"
    done = subprocess.run([sys.executable, "-m", "fna_ext.data.synthetic", "--kind", "keypoints", "--out", str(out),
                           "--images", "6", "--size", "96"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"wrote 6 keypoints images (5 train, 1 val), 96x96, to {out}"]
    assert sorted(p.name for p in (out / "annotations").iterdir()) == \
           ["person_keypoints_train2017.json", "person_keypoints_val2017.json"]
    assert len(list((out / "train2017").glob("*.jpg"))) == 5 and len(list((out / "val2017").glob("*.jpg"))) == 1


def test_default_dataset_is_generated_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FNA_EXT_CACHE", str(tmp_path))
    assert synthetic.DEFAULTS["keypoints"] == {"images": 800, "size": 160}
    path = default_dataset("keypoints", images=4, size=64)
    assert path == tmp_path / "synthetic" / f"keypoints-4-64-0-{synthetic.FORMAT_VERSION}"
    assert (path / "annotations" / "person_keypoints_val2017.json").is_file()

    def must_not_regenerate(*args):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(synthetic, "_write_keypoints", must_not_regenerate)
    assert default_dataset("keypoints", images=4, size=64) == path


def _module_before_keypoints(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git history")
    done = subprocess.run(["git", "show", f"{BEFORE_KEYPOINTS}:fna_ext/data/synthetic/__init__.py"],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"commit {BEFORE_KEYPOINTS} is not in this checkout")
    source = tmp_path / "synthetic_before.py"
    source.write_text(done.stdout, encoding="utf-8")
    # A submodule of the package, so that its relative imports resolve.
    spec = importlib.util.spec_from_file_location("fna_ext.data.synthetic._before_keypoints", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.mark.skipif(synthetic.FORMAT_VERSION != "v2", reason="the drawing changed on purpose (a new FORMAT_VERSION)")
def test_the_other_kinds_draw_as_before_the_keypoints_kind(tmp_path):
    before = _module_before_keypoints(tmp_path)
    for index in range(4):
        rng = lambda: np.random.default_rng([0, index])  # noqa: E731
        old, old_objects = before.draw_detection_image(rng(), 64)
        new, new_objects = synthetic.draw_detection_image(rng(), 64)
        assert old.tobytes() == new.tobytes()
        assert [(o.label, o.bbox, o.area, o.polygon) for o in old_objects] == \
               [(o.label, o.bbox, o.area, o.polygon) for o in new_objects]
        assert before.draw_classification_image(rng(), 64, index).tobytes() == \
               synthetic.draw_classification_image(rng(), 64, index).tobytes()
        assert [a.tobytes() for a in before.draw_segmentation_image(rng(), 64)] == \
               [a.tobytes() for a in synthetic.draw_segmentation_image(rng(), 64)]
    old = files_of(before.generate_detection(tmp_path / "old", images=5, size=64, seed=1))
    assert files_of(synthetic.generate_detection(tmp_path / "new", images=5, size=64, seed=1)) == old
