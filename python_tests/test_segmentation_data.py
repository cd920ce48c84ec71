"""Segmentation data: Cityscapes' label table and layout, the generic folder layout, the synthetic
segmentation set, bad pairs found when a dataset is built, and the joint transforms."""

import numpy as np
import pytest
import torch
from PIL import Image

from fna_ext.data.synthetic import (EGO_VEHICLE_ID, SEGMENTATION_BACKGROUND_ID, SEGMENTATION_LABEL_IDS,
                                    generate_segmentation)
from fna_ext.tasks.segmentation import transforms as T
from fna_ext.tasks.segmentation.data import cityscapes, segmentation_folder
from fna_ext.tasks.segmentation.labels import CITYSCAPES_CLASSES, ID_TO_TRAIN_ID, IGNORE, to_train_ids


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_segmentation(tmp_path_factory.mktemp("seg") / "city", images=10, size=64, seed=3)


def test_the_label_table_is_cityscapes():
    assert CITYSCAPES_CLASSES[:3] == ("road", "sidewalk", "building") and len(CITYSCAPES_CLASSES) == 19
    assert CITYSCAPES_CLASSES[-1] == "bicycle"
    assert ID_TO_TRAIN_ID[7] == 0 and ID_TO_TRAIN_ID[33] == 18 and ID_TO_TRAIN_ID[26] == 13  # road, bicycle, car
    assert ID_TO_TRAIN_ID[0] == IGNORE and ID_TO_TRAIN_ID[9] == IGNORE  # unlabeled, parking
    with pytest.raises(ValueError, match=r"\[40\]"):
        to_train_ids(np.array([[7, 40]], dtype=np.uint8))


def test_synthetic_set_through_the_cityscapes_loader(synthetic):
    data = cityscapes(synthetic, "train", T.eval_transform())
    assert len(data) == 8 and data.num_classes == 19
    image, label = data[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert label.shape == (64, 64) and label.dtype == torch.int64
    assert set(label.unique().tolist()) <= {0, 1, 2, 3, 4, 5, IGNORE}
    assert (label[-3:] == IGNORE).all() and (label[:-4] != IGNORE).all()  # the ego vehicle's strip
    raw = np.asarray(Image.open(data.pairs[0].label))
    expected = {SEGMENTATION_BACKGROUND_ID: 0, EGO_VEHICLE_ID: IGNORE,
                **{label_id: i + 1 for i, label_id in enumerate(SEGMENTATION_LABEL_IDS)}}
    assert torch.equal(label, torch.from_numpy(np.vectorize(expected.get)(raw).astype(np.int64)))


def test_train_ids_are_preferred_when_present(synthetic, tmp_path):
    import shutil
    root = tmp_path / "city"
    shutil.copytree(synthetic, root)
    label_file = sorted((root / "gtFine" / "val").glob("*/*_labelIds.png"))[0]
    train_ids = np.full((64, 64), 18, dtype=np.uint8)
    Image.fromarray(train_ids).save(str(label_file).replace("_labelIds", "_labelTrainIds"))
    data = cityscapes(root, "val", T.eval_transform())
    first = [p for p in data.pairs if "TrainIds" in p.label.name]
    assert len(first) == 1 and not first[0].label_ids
    assert (data[data.pairs.index(first[0])][1] == 18).all()


def _break(root, split="train"):
    """Four kinds of bad pair in a copy of the synthetic set; returns the broken file names."""
    labels = sorted((root / "gtFine" / split).glob("*/*_labelIds.png"))
    images = sorted((root / "leftImg8bit" / split).glob("*/*.png"))
    labels[0].unlink()  # no label
    Image.fromarray(np.full((64, 64), 40, dtype=np.uint8)).save(labels[1])  # an id outside the table
    Image.fromarray(np.zeros((32, 64), dtype=np.uint8) + 7).save(labels[2])  # another size
    images[3].write_bytes(b"not a png")  # unreadable
    return images[:4]


def test_bad_pairs_are_skipped_with_one_warning_naming_the_first(synthetic, tmp_path):
    import shutil
    root = tmp_path / "city"
    shutil.copytree(synthetic, root)
    broken = _break(root)
    with pytest.warns(UserWarning, match=r"4 of 8 images of Cityscapes train .* cannot be used") as caught:
        data = cityscapes(root, "train", T.eval_transform())
    assert len(data) == 4 and not {p.image for p in data.pairs} & set(broken)
    # the first bad pair in file order: the second image, whose label holds id 40
    assert f"{broken[1]}: " in str(caught[0].message) and "holds values [40]" in str(caught[0].message)


def test_a_split_with_nothing_usable_is_an_error(tmp_path):
    root = tmp_path / "city"
    (root / "leftImg8bit" / "val" / "x").mkdir(parents=True)
    (root / "gtFine" / "val" / "x").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "leftImg8bit" / "val" / "x" / "a_leftImg8bit.png")
    with pytest.raises(ValueError, match="no usable labelled image .*a_leftImg8bit.png: no label file"):
        cityscapes(root, "val", T.eval_transform())
    with pytest.raises(ValueError, match=r"leftImg8bit/train does not exist: a Cityscapes root holds"):
        cityscapes(root, "train", T.eval_transform())


def test_the_folder_layout_with_its_own_classes(tmp_path):
    root = tmp_path / "mine"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("sky\nsea\nboat\n")
    rng = np.random.default_rng(0)
    for i, values in enumerate(([0, 1, 2], [0, 255], [0, 3])):  # the last has an index past the classes
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(root / "images" / "train" / f"{i}.jpg")
        label = np.array(values, dtype=np.uint8)[rng.integers(0, len(values), (10, 12))]
        Image.fromarray(label).save(root / "labels" / "train" / f"{i}.png")
    with pytest.warns(UserWarning, match=r"1 of 3 images .* 2.png holds values \[3\]"):
        data = segmentation_folder(root, "train", T.eval_transform())
    assert data.class_names == ["sky", "sea", "boat"] and len(data) == 2
    assert set(data[1][1].unique().tolist()) <= {0, 255}
    (root / "classes.txt").write_text("sky\nsky\n")
    with pytest.raises(ValueError, match="names a class twice"):
        segmentation_folder(root, "train", T.eval_transform())


def test_crop_pads_with_ignore_and_transforms_move_image_and_label_together():
    torch.manual_seed(0)
    image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    label = (np.arange(6 * 8).reshape(6, 8) % 7).astype(np.uint8)
    cropped_image, cropped_label = T.RandomCrop((10, 4))(image, label)
    assert cropped_image.shape == (10, 4, 3) and cropped_label.shape == (10, 4)
    assert (cropped_label[6:] == IGNORE).all() and (cropped_image[6:] == 0).all()
    for _ in range(4):  # every flip and crop keeps pixel (y, x) of the image with pixel (y, x) of the label
        pair_image, pair_label = T.Compose([T.RandomCrop((5, 5)), T.RandomHorizontalFlip()])(image, label)
        index = pair_image[..., 0].astype(int) // 3  # the image encodes each pixel's position
        assert np.array_equal(pair_label, (index % 7).astype(np.uint8))
    scaled_image, scaled_label = T.Resize((12, 16))(image, label)
    assert scaled_image.shape == (12, 16, 3) and set(np.unique(scaled_label)) <= set(np.unique(label))


def test_the_published_recipes_give_their_sizes():
    torch.manual_seed(1)
    image, label = np.zeros((300, 600, 3), np.uint8), np.zeros((300, 600), np.uint8)
    x, y = T.search_transform()(image, label)
    assert x.shape == (3, 321, 321) and y.shape == (321, 321)
    x, y = T.finetune_transform(crop=(97, 97))(image, label)
    assert x.shape == (3, 97, 97) and y.shape == (97, 97)
    with pytest.raises(ValueError, match="scales must be positive"):
        T.RandomScale([0.0])


def test_the_synthetic_set_is_the_same_for_the_same_arguments(synthetic, tmp_path):
    again = generate_segmentation(tmp_path / "again", images=10, size=64, seed=3)
    files = sorted(p.relative_to(synthetic) for p in synthetic.rglob("*.png"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.png")) and len(files) == 20
    assert all((synthetic / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_a_16_bit_label_is_refused_not_indexed(synthetic, tmp_path):
    """Label PNGs hold bytes; a 16-bit one (values past the 256-entry id table) is a bad pair."""
    import shutil
    root = tmp_path / "city"
    shutil.copytree(synthetic, root)
    label = sorted((root / "gtFine" / "val").glob("*/*_labelIds.png"))[0]
    Image.fromarray(np.full((64, 64), 300, dtype=np.uint16)).save(label)
    with pytest.warns(UserWarning, match="one 8-bit channel, got mode I;16"):
        assert len(cityscapes(root, "val", T.eval_transform())) == 1
