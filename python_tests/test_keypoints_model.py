"""The pose task's parts against their definitions: the crop geometry (box to crop, affine maps,
heatmaps and back), SimpleBaseline's decoding and flip test, its loss, and its size against the
published count."""

import math

import numpy as np
import pytest
import torch

from fna_ext.arch import Arch
from fna_ext.cost import count, count_params
from fna_ext.data.transforms import flip_keypoints
from fna_ext.tasks.keypoints.decode import argmax_joints, decode, flip_back, heatmap_to_image
from fna_ext.tasks.keypoints.model import DeconvHead, SimpleBaseline, build_simplebaseline
from fna_ext.tasks.keypoints.skeleton import COCO_KEYPOINT_NAMES, COCO_SIGMAS, Skeleton, skeleton_of_category
from fna_ext.tasks.keypoints.transforms import (Crop, apply_affine, box_crop, crop_matrix, gaussian_heatmaps,
                                                invert_affine, mirrored_crop, to_heatmap_coordinates, warp)


def test_a_box_becomes_a_crop_of_the_input_aspect_enlarged_by_a_quarter():
    tall = box_crop([10, 20, 30, 80], aspect=192 / 256)
    assert tall.center == (25.0, 60.0)
    assert tall.size == pytest.approx((60 * 1.25, 80 * 1.25))  # widened to 3:4
    wide = box_crop([0, 0, 90, 40], aspect=0.75)
    assert wide.size == pytest.approx((90 * 1.25, 120 * 1.25))  # heightened to 3:4


def test_the_crop_matrix_maps_the_crop_onto_the_output_and_inverts():
    crop = Crop((50.0, 40.0), (30.0, 40.0), rotation=0.0)
    matrix = crop_matrix(crop, (64, 48))
    corners = np.array([[35.0, 20.0], [65.0, 60.0], [50.0, 40.0]])
    assert apply_affine(corners, matrix) == pytest.approx(np.array([[0, 0], [48, 64], [24, 32]]))
    rotated = crop_matrix(crop.rotated(30), (64, 48))
    points = np.random.default_rng(0).uniform(0, 100, (10, 2))
    assert apply_affine(apply_affine(points, rotated), invert_affine(rotated)) == pytest.approx(points)
    # a rotation keeps distances from the centre, scaled
    moved = apply_affine(np.array([[50.0, 40.0], [60.0, 40.0]]), rotated)
    assert np.linalg.norm(moved[1] - moved[0]) == pytest.approx(10 * 48 / 30)


def test_the_warp_puts_a_marked_pixel_where_the_matrix_says():
    image = np.zeros((100, 120, 3), np.uint8)
    image[30, 70] = 255  # continuous centre (70.5, 30.5)
    crop = Crop((60.0, 40.0), (48.0, 64.0), rotation=0.0)  # 1:1 scale to 48x64
    out = warp(image, crop_matrix(crop, (64, 48)), (64, 48))
    y, x = np.unravel_index(out[..., 0].argmax(), out.shape[:2])
    assert apply_affine(np.array([[70.5, 30.5]]), crop_matrix(crop, (64, 48)))[0] == pytest.approx([x + 0.5, y + 0.5])


def test_a_mirrored_crop_of_a_mirrored_image_is_the_mirrored_output():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    crop = Crop((30.0, 25.0), (24.0, 32.0), rotation=20.0)
    direct = warp(image, crop_matrix(crop, (32, 24)), (32, 24)).astype(int)
    mirrored = warp(np.ascontiguousarray(image[:, ::-1]), crop_matrix(mirrored_crop(crop, 70), (32, 24)), (32, 24))
    assert np.abs(direct[:, ::-1] - mirrored.astype(int)).max() <= 1


def test_heatmaps_peak_at_the_joint_and_weigh_only_labelled_joints_that_reach_the_map():
    joints = np.array([[5.0, 7.0], [10.3, 2.6], [40.0, 40.0], [3.0, 3.0]])
    visible = np.array([True, True, True, False])
    heatmaps, weights = gaussian_heatmaps(joints, visible, (16, 12), sigma=2.0)
    assert weights.tolist() == [1, 1, 0, 0]
    assert heatmaps[0, 7, 5] == pytest.approx(1.0)
    assert heatmaps[0, 7, 6] == pytest.approx(math.exp(-1 / 8))
    assert heatmaps[1].max() < 1 and np.unravel_index(heatmaps[1].argmax(), (16, 12)) == (3, 10)
    assert not heatmaps[2].any() and not heatmaps[3].any()
    assert (heatmaps[0][np.hypot(*np.mgrid[0:16, 0:12][::-1] - np.array([5, 7])[:, None, None]) > 6] == 0).all()


def test_decoding_a_target_heatmap_returns_the_joint_within_a_quarter_pixel():
    rng = np.random.default_rng(2)
    crop = Crop((80.0, 90.0), (96.0, 128.0), rotation=-15.0)
    matrix = crop_matrix(crop, (128, 96))
    joints = rng.uniform([50, 50], [110, 130], (13, 2))
    on_heatmap = to_heatmap_coordinates(apply_affine(joints, matrix))
    heatmaps, _ = gaussian_heatmaps(on_heatmap, np.ones(13, bool), (32, 24))
    found, peaks = decode(torch.from_numpy(heatmaps)[None], torch.from_numpy(invert_affine(matrix))[None])
    # the crop is at the image's scale: after the quarter-pixel step a joint is off by at most a
    # quarter of a stride-4 heatmap pixel in x and in y (in the crop's rotated axes)
    error = np.linalg.norm(found[0].numpy() - joints, axis=1)
    assert error.max() <= 0.25 * 4 * math.sqrt(2) + 1e-6
    assert peaks.min() > 0.8


def test_the_quarter_pixel_shift_goes_towards_the_higher_neighbour_and_not_at_the_border():
    heatmaps = torch.zeros(1, 3, 5, 6)
    heatmaps[0, 0, 2, 3], heatmaps[0, 0, 2, 4], heatmaps[0, 0, 1, 3] = 1.0, 0.5, 0.2
    heatmaps[0, 1, 0, 0], heatmaps[0, 1, 0, 1] = 1.0, 0.9
    heatmaps[0, 2, 4, 2], heatmaps[0, 2, 4, 1] = 1.0, 0.3
    points, peaks = argmax_joints(heatmaps)
    assert points[0].tolist() == [[3.25, 1.75], [0.0, 0.0], [1.75, 4.0]]
    assert peaks[0].tolist() == [1.0, 1.0, 1.0]


def test_heatmap_to_image_applies_the_stride_and_the_inverse_map():
    inverse = torch.tensor([[[2.0, 0.0, 10.0], [0.0, 2.0, 20.0]]], dtype=torch.float64)
    points = torch.tensor([[[0.0, 0.0], [3.0, 1.0]]])
    assert heatmap_to_image(points, inverse)[0].tolist() == [[14.0, 24.0], [38.0, 32.0]]


def test_flip_back_undoes_a_mirror_with_left_and_right_swapped():
    skeleton = Skeleton(("nose", "left_eye", "right_eye"), (0.1, 0.1, 0.1))
    assert skeleton.flip_pairs == ((1, 2),) and skeleton.flip_permutation() == [0, 2, 1]
    heatmaps = torch.rand(2, 3, 8, 6)
    mirrored = heatmaps.flip(-1)[:, [0, 2, 1]]
    assert torch.equal(flip_back(mirrored, skeleton.flip_permutation()), heatmaps)


def test_flip_keypoints_matches_the_flip_pairs_of_coco_names():
    skeleton = Skeleton(COCO_KEYPOINT_NAMES, COCO_SIGMAS)
    assert skeleton.flip_pairs == ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
    joints = np.zeros((1, 17, 3), np.float32)
    joints[0, 5] = [10, 20, 2]
    flipped = flip_keypoints(joints, 100, skeleton.flip_pairs)
    assert flipped[0, 6].tolist() == [90, 20, 2] and not flipped[0, 5].any()


def test_left_and_right_pair_up_by_prefix_or_suffix_in_any_case():
    names = ("Left_eye", "Right_eye", "wrist_l", "wrist_r", "LShoulder", "RShoulder", "nose")
    assert Skeleton(names, (0.1,) * 7).flip_pairs == ((0, 1), (2, 3), (4, 5))
    with pytest.raises(ValueError, match="'left_hand' names a side"):
        skeleton_of_category({"id": 1, "keypoints": ["left_hand", "right_foot"], "sigmas": [0.1, 0.1]}, "f.json")


def test_a_category_without_sigmas_is_refused_unless_it_is_cocos():
    assert skeleton_of_category({"id": 1, "keypoints": list(COCO_KEYPOINT_NAMES)}, "f.json").sigmas == COCO_SIGMAS
    with pytest.raises(ValueError, match="f.json.*sigmas"):
        skeleton_of_category({"id": 1, "keypoints": ["a", "b"]}, "f.json")
    with pytest.raises(ValueError, match="skeleton"):
        skeleton_of_category({"id": 1, "keypoints": ["a", "b"], "sigmas": [0.1, 0.1], "skeleton": [[1, 3]]}, "f.json")
    assert COCO_SIGMAS[0] == pytest.approx(0.026) and COCO_SIGMAS[-1] == pytest.approx(0.089)
    for bad in ({"sigmas": [0.1, 10 ** 400]}, {"sigmas": [0.1, float("inf")]}, {"sigmas": [0.1, 0.1], "skeleton": 5}):
        with pytest.raises(ValueError, match="f.json"):
            skeleton_of_category({"id": 1, "keypoints": ["a", "b"], **bad}, "f.json")


def test_simplebaseline_on_resnet50_has_the_published_parameter_count():
    # SimpleBaseline's ResNet-50 at 256x192 for COCO's 17 joints: 33,999,697 parameters (by hand:
    # ResNet-50 without its classifier 23,508,032; deconvs 2048*256*16 + 2 * 256*256*16; three BNs
    # of 256; the 1x1 conv 256*17 + 17)
    model = build_simplebaseline(Arch.from_arg("resnet50"), 17)
    assert count_params(model) == 23_508_032 + 2048 * 256 * 16 + 2 * 256 * 256 * 16 + 3 * 512 + 256 * 17 + 17
    assert count_params(model) == 33_999_697


def test_the_head_reads_the_head_conv_of_a_mobilenet_and_c5_of_a_resnet():
    mobilenet = build_simplebaseline(Arch.from_arg("mobilenet_v2"), 17)
    assert mobilenet.head.deconvs[0].in_channels == 1280
    assert build_simplebaseline(Arch.from_arg("resnet18"), 17).head.deconvs[0].in_channels == 512
    assert mobilenet(torch.zeros(2, 3, 64, 64)).shape == (2, 17, 16, 16)


def test_deconvolutions_count_their_kernel_at_the_input_resolution():
    head = DeconvHead(32, 5, channels=16, layers=2)
    report = count(torch.nn.Sequential(torch.nn.Conv2d(3, 32, 1, stride=32, bias=False), head), (64, 96))
    # input 2x3 -> 4x6 -> 8x12; each deconv costs 16 taps x C_in x C_out per input position
    expected = 3 * 32 * 6 + 16 * 32 * 16 * 6 + 16 * 16 * 16 * 24 + (16 * 5 + 5) * 96
    assert report.madds == expected


def test_the_loss_is_half_the_weighted_mean_squared_error():
    heatmaps, target = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    weights = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    loss = SimpleBaseline.loss(heatmaps, {"heatmaps": target, "weights": weights})["loss_heatmap"]
    expected = 0.5 * (((heatmaps - target) ** 2) * weights[:, :, None, None]).mean()
    assert loss.item() == pytest.approx(expected.item())
