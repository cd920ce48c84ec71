"""The synthetic shapes datasets: determinism, valid COCO and folder layouts, occlusion limits,
never-half-written output, the command line, the cached default dataset, and the folder dataset
that reads the classification layout."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from fna_ext import cli
from fna_ext.data import synthetic
from fna_ext.data.classification import EvalTransform, ImageFolderDataset, TrainTransform
from fna_ext.data.synthetic import CLASS_NAMES, default_dataset, generate_classification, generate_detection

SMALL = {"images": 20, "size": 64}


@pytest.fixture(scope="module")
def detection_root(tmp_path_factory):
    return generate_detection(tmp_path_factory.mktemp("det") / "shapes", **SMALL, seed=3)


@pytest.fixture(scope="module")
def classification_root(tmp_path_factory):
    return generate_classification(tmp_path_factory.mktemp("cls") / "shapes", images=25, size=64, seed=3)


def files_of(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def staging_leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_same_arguments_give_identical_files(detection_root, tmp_path):
    again = files_of(generate_detection(tmp_path / "again", **SMALL, seed=3))
    assert again == files_of(detection_root)
    other = files_of(generate_detection(tmp_path / "other", **SMALL, seed=4))
    assert other.keys() == again.keys()
    assert other["annotations/instances_train2017.json"] != again["annotations/instances_train2017.json"]


def test_detection_layout_loads_in_pycocotools_with_boxes_inside_images(detection_root):
    seen_images, seen_annotations = set(), set()
    for split, count in (("train2017", 16), ("val2017", 4)):
        coco = COCO(str(detection_root / "annotations" / f"instances_{split}.json"))
        assert [(c["id"], c["name"], c["supercategory"]) for c in coco.dataset["categories"]] == \
               [(i + 1, name, "shape") for i, name in enumerate(CLASS_NAMES)]
        assert {"info", "licenses"} <= coco.dataset.keys()
        assert len(coco.dataset["images"]) == count
        for image in coco.dataset["images"]:
            with Image.open(detection_root / split / image["file_name"]) as file:
                assert file.format == "JPEG" and file.size == (image["width"], image["height"]) == (64, 64)
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            assert 1 <= len(annotations) <= 6
            for ann in annotations:
                x, y, w, h = ann["bbox"]
                assert all(type(v) is float for v in ann["bbox"])
                assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
                assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0
                [polygon] = ann["segmentation"]
                assert len(polygon) >= 6 and len(polygon) % 2 == 0
                assert ann["category_id"] in range(1, len(CLASS_NAMES) + 1)
        seen_images |= set(coco.getImgIds())
        assert not seen_annotations & set(coco.getAnnIds())
        seen_annotations |= set(coco.getAnnIds())
    assert len(seen_images) == 20  # ids are unique across the splits


def test_the_box_is_the_bounding_box_of_the_drawn_pixels():
    rng = np.random.default_rng([0, 0])
    for shape, mask in synthetic._place(rng, 96, 6):
        rows, cols = np.nonzero(mask)
        x, y, w, h = synthetic._describe(shape, mask).bbox
        assert (x, y, x + w - 1, y + h - 1) == (cols.min(), rows.min(), cols.max(), rows.max())


def test_no_object_is_mostly_hidden():
    for index in range(40):
        placed = synthetic._place(np.random.default_rng([1, index]), 64, 6)
        masks = [mask for _, mask in placed]
        for i, mask in enumerate(masks):
            drawn_later = np.logical_or.reduce([np.zeros_like(mask)] + masks[i + 1:])
            assert (mask & drawn_later).sum() <= (1 - synthetic.MIN_VISIBLE_FRACTION) * mask.sum()


def test_classification_layout_has_every_class_in_both_splits(classification_root):
    assert (classification_root / "classes.txt").read_text().split() == list(CLASS_NAMES)
    for split, per_class in (("train", 4), ("val", 1)):
        for name in CLASS_NAMES:
            files = list((classification_root / split / name).glob("*.png"))
            assert len(files) == per_class
            with Image.open(files[0]) as image:
                assert image.format == "PNG" and image.size == (64, 64)


def test_classification_split_too_small_for_the_classes_is_refused_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="fewer than the 5 classes"):
        generate_classification(tmp_path / "tiny", images=20, size=64)
    assert not (tmp_path / "tiny").exists() and staging_leftovers(tmp_path) == []


def test_image_folder_dataset_reads_the_classification_layout(classification_root):
    val = ImageFolderDataset(classification_root, "val")
    assert val.classes == sorted(CLASS_NAMES) and len(val) == 5
    image, label = val[0]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64) and type(label) is int
    assert [label for _, label in val.samples] == list(range(5))
    assert -3 < float(image.min()) and float(image.max()) < 3  # normalized, not 0..255

    train = ImageFolderDataset(classification_root, "train", TrainTransform(48))
    torch.manual_seed(0)
    first = [train[i][0] for i in range(4)]
    torch.manual_seed(0)
    assert all(torch.equal(a, train[i][0]) for i, a in enumerate(first))
    assert first[0].shape == (3, 48, 48)
    assert ImageFolderDataset(classification_root, "val", EvalTransform(32))[0][0].shape == (3, 32, 32)


def test_image_folder_dataset_explains_missing_and_empty_folders(tmp_path):
    with pytest.raises(ValueError, match="no 'train' folder"):
        ImageFolderDataset(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolderDataset(tmp_path, "train")
    (tmp_path / "train" / "circle").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path, "train")


def test_a_non_empty_folder_is_replaced_only_with_force(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="--force"):
        generate_detection(out, **SMALL)
    assert (out / "keep.txt").read_text() == "mine"
    generate_detection(out, **SMALL, force=True)
    assert not (out / "keep.txt").exists() and (out / "annotations" / "instances_val2017.json").is_file()
    assert staging_leftovers(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (generate_detection(empty, **SMALL) / "train2017").is_dir()  # an empty folder is fine


@pytest.mark.parametrize("args, message", [
    (["--images", "0"], "--images must be at least 1"),
    (["--size", "8"], "--size must be at least 32"),
    (["--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
    (["--seed", "-1"], "--seed must be non-negative"),
])
def test_cli_bad_values_exit_2_with_one_error_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        cli.run(synthetic.main, ["--out", str(tmp_path / "x"), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_cli_writes_a_dataset_and_refuses_to_overwrite_it(tmp_path, capsys):
    args = ["--out", str(tmp_path / "d"), "--images", "10", "--size", "64", "--kind", "classification",
            "--val-fraction", "0"]
    done = subprocess.run([sys.executable, "-m", "fna_ext.data.synthetic", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "10 classification images (10 train, 0 val)" in done.stdout
    assert sorted(p.name for p in (tmp_path / "d" / "train").iterdir()) == sorted(CLASS_NAMES)
    for extra, message in (([], "error: --out"), (["--kind", "video"], "invalid choice")):
        with pytest.raises(SystemExit) as exit_:
            cli.run(synthetic.main, args + extra)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_default_dataset_is_generated_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FNA_EXT_CACHE", str(tmp_path))
    path = default_dataset("detection", images=10, size=64)
    assert path == tmp_path / "synthetic" / f"detection-10-64-0-{synthetic.FORMAT_VERSION}"
    assert (path / "annotations" / "instances_train2017.json").is_file()

    def must_not_regenerate(*args):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(synthetic, "_write_detection", must_not_regenerate)
    assert default_dataset("detection", images=10, size=64) == path
    assert staging_leftovers(path.parent) == []
    with pytest.raises(ValueError, match="kind"):
        default_dataset("video")


def test_default_dataset_that_loses_the_race_uses_the_winners(tmp_path, monkeypatch):
    monkeypatch.setenv("FNA_EXT_CACHE", str(tmp_path))
    final = tmp_path / "synthetic" / f"classification-10-64-0-{synthetic.FORMAT_VERSION}-val0"
    write = synthetic._write_classification

    def write_then_lose(root, *args):
        write(root, *args)
        final.mkdir(parents=True)  # another process publishes first
        (final / "winner.txt").write_text("theirs")

    monkeypatch.setattr(synthetic, "_write_classification", write_then_lose)
    assert default_dataset("classification", images=10, size=64, val_fraction=0) == final
    assert (final / "winner.txt").read_text() == "theirs"
    assert staging_leftovers(final.parent) == []
