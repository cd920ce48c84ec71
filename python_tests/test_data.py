"""COCO-format loading on tiny datasets written here, the transforms against hand-computed boxes,
and batching: bad data warns with counts or fails with a message naming the file."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fna_ext.data import (Compose, Expand, MinIoURandomCrop, PhotometricDistortion, RandomHorizontalFlip,
                          Resize, ResizeShortSide, collate_detection, detection_loader,
                          retinanet_eval_transform, retinanet_train_transform, ssd_eval_transform,
                          ssd_train_transform)
from fna_ext.data.images import UnreadableImage
from fna_ext.tasks.detection.coco_data import CocoDetection, resolve_coco_paths
from fna_ext.data.transforms import hsv_to_rgb, rgb_to_hsv

CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}]


def write_coco(folder, images, annotations, categories=CATEGORIES, write_files=True):
    """images: (id, file_name, width, height); annotations: (image_id, category_id, bbox[, iscrowd])."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    if write_files:
        rng = np.random.default_rng(0)
        for _, name, w, h in images:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / "images" / name)
    data = {"images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, w, h in images],
            "annotations": [{"id": k + 1, "image_id": a[0], "category_id": a[1], "bbox": a[2],
                             "iscrowd": a[3] if len(a) > 3 else 0, "area": 1.0}
                            for k, a in enumerate(annotations)],
            "categories": categories}
    (folder / "ann.json").write_text(json.dumps(data))
    return folder / "ann.json", folder / "images"


@pytest.fixture
def tiny(tmp_path):
    images = [(1, "a.png", 64, 48), (2, "b.png", 40, 30), (3, "c.png", 32, 32)]
    annotations = [(1, 90, [4, 6, 20, 10]), (1, 5, [30, 20, 10, 10]), (1, 1, [0, 0, 64, 48], 1),
                   (2, 1, [10, 5, 8, 8]), (3, 1, [1, 1, 5, 5], 1)]
    return write_coco(tmp_path, images, annotations)


def sample(width=64, height=48, boxes=((4, 6, 24, 16), (30, 20, 40, 30)), crowd=(False, True)):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    target = {"boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
              "labels": np.arange(len(boxes), dtype=np.int64), "iscrowd": np.array(crowd, dtype=bool),
              "scale": np.ones(2, np.float32)}
    return image, target


def assert_valid(image, target):
    h, w = image.shape[-2:] if isinstance(image, torch.Tensor) else image.shape[:2]
    boxes = np.asarray(target["boxes"])
    assert len(boxes) == len(target["labels"]) == len(target["iscrowd"])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w + 1e-3).all() and (boxes[:, 3] <= h + 1e-3).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()


# ---- paths --------------------------------------------------------------------------------------

def test_resolve_standard_layout_and_custom_pair(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="val2017"):
        resolve_coco_paths(tmp_path, "val")
    (tmp_path / "val2017").mkdir()
    assert resolve_coco_paths(tmp_path, "val") == (tmp_path / "annotations" / "instances_val2017.json",
                                                   tmp_path / "val2017")
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        resolve_coco_paths(tmp_path, "train")
    assert resolve_coco_paths(tmp_path, ann_file="annotations/instances_val2017.json", img_dir="val2017") \
        == resolve_coco_paths(tmp_path, "val")
    with pytest.raises(ValueError, match="ann_file and img_dir"):
        resolve_coco_paths(None, img_dir=tmp_path / "val2017")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        resolve_coco_paths(None, ann_file=tmp_path / "nowhere.json", img_dir=tmp_path / "val2017")


# ---- dataset ------------------------------------------------------------------------------------

def test_labels_are_contiguous_and_round_trip(tiny):
    ds = CocoDetection(*tiny)
    assert ds.cat_ids == [1, 5, 90] and ds.cat_of_label == [1, 5, 90]
    assert ds.label_of_cat == {1: 0, 5: 1, 90: 2}
    assert ds.class_names == ["person", "airplane", "toothbrush"] and ds.num_classes == 3
    assert all(ds.label_of_cat[ds.cat_of_label[k]] == k for k in range(ds.num_classes))
    _, target = ds[0]
    cats = [ds.cat_of_label[k] for k in target["labels"].tolist()]
    assert cats == [90, 5, 1]


def test_item_layout_and_crowd_boxes(tiny):
    ds = CocoDetection(*tiny)
    assert ds.image_ids == [1, 2, 3] and ds.get_image_info(1) == (2, 40, 30)
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 48, 64)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["iscrowd"].tolist() == [False, False, True]
    torch.testing.assert_close(target["boxes"], torch.tensor([[4., 6, 24, 16], [30, 20, 40, 30], [0, 0, 64, 48]]))
    assert target["image_id"] == 1 and target["orig_size"] == (48, 64) and target["size"] == (48, 64)
    torch.testing.assert_close(target["scale"], torch.ones(2))


def test_skip_empty_drops_images_with_only_crowd_boxes(tiny):
    assert CocoDetection(*tiny, skip_empty=True).image_ids == [1, 2]


def test_missing_image_files_warn_once_with_count(tiny):
    (tiny[1] / "b.png").unlink()
    with pytest.warns(UserWarning, match=r"1 of 3 images .* missing .*b\.png") as record:
        ds = CocoDetection(*tiny)
    assert len(record) == 1 and ds.image_ids == [1, 3]
    assert CocoDetection(*tiny, check_files=False).image_ids == [1, 2, 3]


def test_all_image_files_missing_is_an_error(tmp_path):
    ann, images = write_coco(tmp_path, [(1, "a.png", 8, 8)], [], write_files=False)
    with pytest.raises(ValueError, match="none of the 1 images"):
        CocoDetection(ann, images)


def test_bad_annotations_are_skipped_with_counts_per_reason(tmp_path):
    annotations = [(1, 1, [2, 2, 10, 10]),             # fine
                   (1, 1, [-3, 30, 10, 20]),           # sticks out: clipped to [0, 30, 7, 40]
                   (1, 1, [50, 50, 10, 10]),           # entirely outside
                   (1, 1, [2, 2, 0, 5]), (1, 1, [2, 2, 5, -1]),  # zero / negative area
                   (1, 1, [1, 2, 3]), (1, 1, "box"),   # malformed
                   (1, 7, [2, 2, 5, 5]),               # unknown category
                   (9, 1, [2, 2, 5, 5])]               # unknown image
    ann, images = write_coco(tmp_path, [(1, "a.png", 40, 40)], annotations)
    with pytest.warns(UserWarning, match=r"skipped 7 annotations .*ann\.json: 2 with a malformed bbox, "
                                         r"2 with zero or negative area, 1 with a bbox entirely outside "
                                         r"the image, 1 with an unknown category id, 1 with an unknown "
                                         r"image id") as record:
        ds = CocoDetection(ann, images)
    assert len(record) == 1
    torch.testing.assert_close(ds[0][1]["boxes"], torch.tensor([[2., 2, 12, 12], [0, 30, 7, 40]]))


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid json"),
    ("[1, 2]", "json list"),
    (json.dumps({"images": [], "annotations": [], "categories": CATEGORIES}), "lists no images"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}], "categories": []}),
     "no categories"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "categories": CATEGORIES}), "lacks 'width'"),
    (json.dumps({"images": [], "annotations": []}), "no 'categories' list"),
])
def test_invalid_json_names_the_file(tmp_path, content, message):
    (tmp_path / "bad.json").write_text(content)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match=f"bad.json.*{message}|{message}.*bad.json"):
        CocoDetection(tmp_path / "bad.json", tmp_path)


def test_a_file_that_is_not_an_image_is_skipped_when_the_dataset_is_built(tiny):
    (tiny[1] / "b.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match=r"1 of 3 images .* skipped \(e\.g\. .*b\.png: not an image") as record:
        ds = CocoDetection(*tiny)
    assert len(record) == 1 and ds.image_ids == [1, 3]


def test_an_image_of_another_size_than_its_annotation_is_skipped(tiny):
    Image.new("RGB", (41, 30)).save(tiny[1] / "b.png")
    with pytest.warns(UserWarning, match=r"b\.png: 41x30 pixels, not the 40x30 its annotation says"):
        assert CocoDetection(*tiny).image_ids == [1, 3]


def test_no_readable_image_is_an_error_naming_one(tiny):
    for name in ("a.png", "b.png", "c.png"):
        (tiny[1] / name).write_text("text")
    with pytest.raises(ValueError, match=r"none of the 3 images .*a\.png"):
        CocoDetection(*tiny)


def test_an_image_damaged_after_its_header_names_the_file_when_read(tiny):
    data = (tiny[1] / "b.png").read_bytes()
    (tiny[1] / "b.png").write_bytes(data[:len(data) // 2])  # the header reads, the pixels do not
    ds = CocoDetection(*tiny)
    with pytest.raises(UnreadableImage, match=r"b\.png"):
        ds[1]


def test_scale_maps_boxes_back_to_the_original_image(tiny):
    ds = CocoDetection(*tiny, transform=retinanet_eval_transform(short=100, max_long=120))
    image, target = ds[0]
    assert target["size"] == (90, 120) == tuple(image.shape[-2:]) and target["orig_size"] == (48, 64)
    sx, sy = target["scale"].tolist()
    back = target["boxes"] / torch.tensor([sx, sy, sx, sy])
    torch.testing.assert_close(back, torch.tensor([[4., 6, 24, 16], [30, 20, 40, 30], [0, 0, 64, 48]]))


# ---- transforms -------------------------------------------------------------------------------

def test_resize_fixed_size():
    image, target = Resize((32, 128))(*sample())
    assert image.shape == (32, 128, 3)
    np.testing.assert_allclose(target["boxes"], [[8, 4, 48, 32 / 3], [60, 40 / 3, 80, 20]], rtol=1e-5)
    np.testing.assert_allclose(target["scale"], [2, 2 / 3], rtol=1e-6)
    image, target = Resize((32, 128), keep_ratio=True)(*sample())
    assert image.shape == (32, 43, 3)  # 64x48 fitted into 128x32: factor 2/3


def test_flip_with_p1_mirrors_boxes():
    original, before = sample()
    image, target = RandomHorizontalFlip(p=1)(original, before)
    np.testing.assert_array_equal(image, original[:, ::-1])
    np.testing.assert_allclose(target["boxes"], [[40, 6, 60, 16], [24, 20, 34, 30]])
    assert target["iscrowd"].tolist() == [False, True]


@pytest.mark.parametrize("width, height, short, max_long, expected", [
    (640, 480, 800, 1333, (800, 1067)),
    (2000, 500, 800, 1333, (333, 1333)),  # 800 on the short side would make the long side 3200
    (480, 640, 800, 1333, (1067, 800)),
])
def test_resize_short_side(width, height, short, max_long, expected):
    transform = ResizeShortSide(short, max_long)
    assert transform.output_size(height, width) == expected
    image, target = transform(*sample(width, height, boxes=((0, 0, width, height),), crowd=(False,)))
    assert image.shape[:2] == expected
    np.testing.assert_allclose(target["boxes"], [[0, 0, expected[1], expected[0]]], rtol=1e-6)


def test_expand_with_p1_shifts_boxes_onto_a_mean_canvas():
    torch.manual_seed(0)
    original, before = sample()
    image, target = Expand(p=1, ratio_range=(2, 3))(original, before)
    assert image.shape[0] >= 96 and image.shape[1] >= 128
    shift = target["boxes"][0, :2] - before["boxes"][0, :2]
    np.testing.assert_allclose(target["boxes"] - np.tile(shift, 2), before["boxes"])
    x, y = shift.astype(int)
    np.testing.assert_array_equal(image[y:y + 48, x:x + 64], original)
    assert image[0, 0].tolist() == [124, 116, 104] or (x == 0 and y == 0)


def test_min_iou_crop_keeps_boxes_inside_and_aligned():
    torch.manual_seed(0)
    crop = MinIoURandomCrop()
    for _ in range(100):
        image, target = crop(*sample())
        assert_valid(image, target)


@pytest.mark.parametrize("min_iou", [0.0, 0.3, 0.7, 0.9])
def test_min_iou_crop_takes_the_first_try_that_fits(min_iou):
    """Against the patches checked one at a time from the same random draws, by the definition."""
    crop = MinIoURandomCrop()
    _, target = sample(boxes=((4, 6, 24, 16), (30, 20, 40, 30), (2, 2, 60, 40)), crowd=(False, True, False))
    counted = target["boxes"][~target["iscrowd"]]
    for seed in range(40):
        torch.manual_seed(seed)
        found = crop.fitting_patch(64, 48, target, min_iou)
        torch.manual_seed(seed)
        draws = torch.rand(crop.max_tries, 4, dtype=torch.float64).numpy()
        expected = None
        for rw, rh, rl, rt in draws:
            w, h = 0.3 * 64 + 0.7 * 64 * rw, 0.3 * 48 + 0.7 * 48 * rh
            x, y = (64 - w) * rl, (48 - h) * rt
            patch = np.array([int(x), int(y), int(x + w), int(y + h)], dtype=np.float32)
            if not 0.5 <= h / w <= 2 or patch[2] <= patch[0] or patch[3] <= patch[1]:
                continue
            ious = [_iou(patch, box) for box in counted]
            centres = (target["boxes"][:, :2] + target["boxes"][:, 2:]) / 2
            inside = ((centres > patch[:2]) & (centres < patch[2:])).all(axis=1)
            if min(ious) >= min_iou and inside[~target["iscrowd"]].any():
                expected = (patch, inside)
                break
        if expected is None:
            assert found is None
        else:
            np.testing.assert_array_equal(found[0], expected[0])
            np.testing.assert_array_equal(found[1], expected[1])


def _iou(a, b):
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_photometric_distortion_keeps_shape_and_boxes():
    torch.manual_seed(0)
    original, before = sample()
    image, target = PhotometricDistortion(p=1)(original, before)
    assert image.dtype == np.uint8 and image.shape == original.shape and not np.array_equal(image, original)
    np.testing.assert_array_equal(target["boxes"], before["boxes"])


def test_hsv_round_trip():
    rgb = np.random.default_rng(0).uniform(0, 255, (500, 3)).astype(np.float32)
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-3)


def test_ssd_train_transform_keeps_boxes_valid():
    torch.manual_seed(0)
    transform = ssd_train_transform(size=(64, 64))
    for _ in range(150):
        image, target = transform(*sample())
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert_valid(image, target)


@pytest.mark.parametrize("make", [ssd_train_transform, retinanet_train_transform])
def test_same_seed_same_output(make):
    transform = make() if make is ssd_train_transform else make(short=64, max_long=100)
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        outputs.append([transform(*sample()) for _ in range(5)])
    for (a, ta), (b, tb) in zip(*outputs):
        torch.testing.assert_close(a, b)
        np.testing.assert_array_equal(ta["boxes"], tb["boxes"])


def test_eval_transforms_are_resize_and_normalize():
    image, target = ssd_eval_transform((32, 32))(*sample())
    assert image.shape == (3, 32, 32)
    assert image.mean().abs() < 2  # normalized, not in [0, 255]
    assert isinstance(Compose([Resize((8, 8))])(*sample())[0], np.ndarray)


# ---- batching -----------------------------------------------------------------------------------

def test_collate_pads_to_a_multiple_of_32():
    batch = [(torch.ones(3, 40, 70), {"i": 0}), (torch.ones(3, 65, 20), {"i": 1})]
    images, targets = collate_detection(batch)
    assert images.shape == (2, 3, 96, 96) and [t["i"] for t in targets] == [0, 1]
    assert images[0, :, :40, :70].eq(1).all() and images[0, :, 40:].eq(0).all() and images[0, :, :, 70:].eq(0).all()
    assert collate_detection(batch, size_divisor=1)[0].shape == (2, 3, 65, 70)


def test_loader_is_reproducible_with_workers(tiny):
    ds = CocoDetection(*tiny, transform=ssd_train_transform((32, 32)))

    def epoch(seed):
        loader = detection_loader(ds, 2, shuffle=True, num_workers=2, seed=seed)
        return [(images, [t["image_id"] for t in targets]) for images, targets in loader]

    first, again = epoch(7), epoch(7)
    assert [ids for _, ids in first] == [ids for _, ids in again]
    for (a, _), (b, _) in zip(first, again):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="sampler"):
        detection_loader(ds, 2, shuffle=True, sampler=torch.utils.data.SequentialSampler(ds))


def test_flip_mirrors_keypoints_masks_and_swaps_left_and_right():
    from fna_ext.data.transforms import COCO_PERSON_FLIP_PAIRS

    image = np.zeros((4, 10, 3), np.uint8)
    image[:, 2] = 255
    keypoints = np.zeros((1, 17, 3), np.float32)
    keypoints[0, 1] = (2.0, 1.0, 2)   # left eye
    keypoints[0, 2] = (7.0, 1.0, 1)   # right eye
    keypoints[0, 5] = (3.0, 2.0, 0)   # left shoulder, unlabelled
    semantic = np.zeros((4, 10), np.int64)
    semantic[:, 2] = 3
    target = {"boxes": np.array([[1, 0, 4, 2]], np.float32), "keypoints": keypoints, "semantic": semantic}
    flip = RandomHorizontalFlip(p=1.0, flip_pairs=COCO_PERSON_FLIP_PAIRS)
    out_image, out = flip(image, target)
    assert out_image[0, 7, 0] == 255 and out["semantic"][0, 7] == 3
    np.testing.assert_array_equal(out["boxes"], [[6, 0, 9, 2]])
    np.testing.assert_array_equal(out["keypoints"][0, 1], [3.0, 1.0, 1])  # the right eye, mirrored
    np.testing.assert_array_equal(out["keypoints"][0, 2], [8.0, 1.0, 2])
    np.testing.assert_array_equal(out["keypoints"][0, 6], [0, 0, 0])     # unlabelled stays zero
    again_image, again = flip(out_image, out)
    np.testing.assert_array_equal(again_image, image)
    np.testing.assert_array_equal(again["keypoints"][0, :3], keypoints[0, :3])
    with pytest.raises(ValueError, match="keypoints need flip_pairs"):
        RandomHorizontalFlip(p=1.0)(image, target)
