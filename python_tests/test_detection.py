"""Detection components against hand computations and independent references, and the paper's
Table 3 figures for MobileNetV2."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from fna_ext.arch import mobilenet_v2_arch
from fna_ext.cli.count import count_task
from fna_ext.tasks.detection import (BACKGROUND, IGNORE, BoxCoder, GridAnchorGenerator, Matcher,
                               SSDAnchorGenerator, box_iou)
from fna_ext.families.features import Tap, extract_features
from fna_ext.tasks.detection.losses import retinanet_loss, sigmoid_focal_loss, ssd_loss
from fna_ext.tasks.detection.postprocess import PostprocessConfig, ssd_postprocess
from fna_ext.families.mbconv import build_network
from fna_ext.tasks import build_model


# ---------------------------------------------------------------- Table 3 (backbone MobileNetV2)

def test_ssdlite_params_and_madds_match_table_3():
    report = count_task("ssdlite", mobilenet_v2_arch())
    assert report.input_size == (320, 320)
    assert abs(report.params / 4.3e6 - 1) < 0.01
    assert abs(report.madds / 0.8e9 - 1) < 0.015  # 0.8B is given to one decimal: 0.808B
    parts = report.grouped()
    assert list(parts) == ["backbone", "neck", "head"]
    # backbone = MobileNetV2 without its classifier (3,504,872 - 1,281,000)
    assert parts["backbone"][0] == 2_223_872


@pytest.mark.slow
def test_retinanet_params_and_madds_match_table_3():
    report = count_task("retinanet", mobilenet_v2_arch())
    assert report.input_size == (800, 1088)
    assert abs(report.params / 11.49e6 - 1) < 0.01
    assert abs(report.madds / 133.05e9 - 1) < 0.01
    # backbone without the 320->1280 conv and the classifier
    assert report.grouped()["backbone"][0] == 2_223_872 - 320 * 1280 - 2 * 1280


# ---------------------------------------------------------------- anchors

def test_ssd_anchor_counts_and_first_anchor_by_hand():
    generator = SSDAnchorGenerator(((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)))
    sizes = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    levels = generator(sizes, (320, 320))
    assert [len(a) for a in levels] == [400 * 4, 100 * 6, 25 * 6, 9 * 6, 4 * 4, 1 * 4]
    # cell (0, 0) of the 20x20 level: centre (8, 8), scale 0.2 * 320 = 64, clipped to the image
    assert torch.allclose(levels[0][0], torch.tensor([0.0, 0.0, 40.0, 40.0]))
    # second box: sqrt(0.2 * 0.35) * 320
    side = math.sqrt(0.2 * 0.35) * 320
    assert torch.allclose(levels[0][1], torch.tensor([0, 0, 8 + side / 2, 8 + side / 2]).float())
    # last level: one cell centred in the image, scale 0.95 and sqrt(0.95 * 1.0)
    assert torch.allclose(levels[-1][0], torch.tensor([8.0, 8.0, 312.0, 312.0]))


def test_grid_anchors_by_hand():
    generator = GridAnchorGenerator(strides=(8,), scales_per_octave=3, ratios=(0.5, 1.0, 2.0))
    (anchors,) = generator([(2, 3)], (16, 24))
    assert anchors.shape == (2 * 3 * 9, 4)
    # first cell, ratio 0.5, size 32: w = 32 / sqrt(0.5), h = 32 * sqrt(0.5), centre (4, 4)
    w, h = 32 / math.sqrt(0.5), 32 * math.sqrt(0.5)
    assert torch.allclose(anchors[0], torch.tensor([4 - w / 2, 4 - h / 2, 4 + w / 2, 4 + h / 2]))
    # ratio 1, second scale 32 * 2^(1/3), on the cell at row 1, column 2: centre (20, 12)
    s = 32 * 2 ** (1 / 3)
    assert torch.allclose(anchors[(1 * 3 + 2) * 9 + 4], torch.tensor([20 - s / 2, 12 - s / 2, 20 + s / 2, 12 + s / 2]))


# ---------------------------------------------------------------- box coding and IoU

boxes_strategy = st.tuples(st.floats(0, 200), st.floats(0, 200), st.floats(1, 150), st.floats(1, 150))


@settings(max_examples=50, deadline=None)
@given(boxes_strategy, st.tuples(st.floats(0, 200), st.floats(0, 200), st.floats(10, 150), st.floats(10, 150)),
       st.sampled_from([(0.1, 0.1, 0.2, 0.2), (1.0, 1.0, 1.0, 1.0)]))
def test_box_coder_round_trips(box, anchor, stds):
    # (size ratios stay under the decoder's clamp of 1000/16)
    to_xyxy = lambda b: torch.tensor([[b[0], b[1], b[0] + b[2], b[1] + b[3]]], dtype=torch.float64)
    coder = BoxCoder(stds)
    deltas = coder.encode(to_xyxy(box), to_xyxy(anchor))
    assert torch.allclose(coder.decode(deltas, to_xyxy(anchor)), to_xyxy(box), atol=1e-6)


def test_box_coder_by_hand():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    box = torch.tensor([[5.0, 0.0, 15.0, 40.0]])  # centre moves (5, 10), height doubles
    deltas = BoxCoder((0.1, 0.1, 0.2, 0.2)).encode(box, anchor)
    assert torch.allclose(deltas, torch.tensor([[0.5 / 0.1, 0.5 / 0.1, 0.0, math.log(2) / 0.2]]))


def test_box_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[50 / 150, 0.0, 1.0]]))


# ---------------------------------------------------------------- matching

def test_matcher_thresholds_low_quality_and_crowd():
    anchors = torch.tensor([[0.0, 0, 10, 10],      # IoU 1 with object 0
                            [0.0, 0, 10, 14],      # IoU 10/14 = 0.71 with object 0
                            [0.0, 0, 10, 22],      # IoU 10/22 = 0.45 -> ignored at (0.4, 0.5)
                            [100.0, 100, 110, 110],  # inside the crowd region
                            [200.0, 200, 210, 210],  # nothing: background
                            [50.0, 50, 70, 95]])   # object 1's best anchor, IoU 400/900 = 0.44
    boxes = torch.tensor([[0.0, 0, 10, 10], [50.0, 50, 70, 70], [90.0, 90, 130, 130]])
    crowd = torch.tensor([False, False, True])
    matches = Matcher(pos_iou=0.5, neg_iou=0.4)(anchors, boxes, crowd)
    assert matches.tolist() == [0, 0, IGNORE, IGNORE, BACKGROUND, 1]
    # SSD's thresholds (0.5, 0.5) leave nothing ignored but the crowd
    matches = Matcher(0.5, 0.5, allow_low_quality=False)(anchors, boxes, crowd)
    assert matches.tolist() == [0, 0, BACKGROUND, IGNORE, BACKGROUND, BACKGROUND]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_an_anchor_that_is_two_objects_best_goes_to_the_later_one(device):
    """The low-quality rule writes one anchor twice here; the later object wins on every device."""
    anchors = torch.tensor([[0.0, 0, 10, 10], [100.0, 100, 110, 110]], device=device)
    boxes = torch.tensor([[0.0, 0, 20, 20], [0.0, 0, 30, 30], [0.0, 0, 25, 25]], device=device)  # all IoU < 0.5
    matches = Matcher(pos_iou=0.5, neg_iou=0.05)(anchors, boxes, torch.zeros(3, dtype=torch.bool))
    assert matches.tolist() == [2, BACKGROUND]


def test_matcher_without_objects_gives_background():
    anchors = torch.tensor([[0.0, 0, 10, 10]])
    assert Matcher()(anchors, torch.zeros(0, 4)).tolist() == [BACKGROUND]


# ---------------------------------------------------------------- losses

def _ssd_loss_by_loops(logits, deltas, labels, box_targets, ratio=3):
    cls_total, box_total, positives = 0.0, 0.0, 0
    for n in range(labels.shape[0]):
        pos = [a for a in range(labels.shape[1]) if labels[n, a] >= 0]
        neg = [a for a in range(labels.shape[1]) if labels[n, a] == BACKGROUND]
        ce = lambda a, c: -F.log_softmax(logits[n, a], 0)[c].item()
        neg_losses = sorted((ce(a, 0) for a in neg), reverse=True)[:ratio * len(pos)]
        cls_total += sum(ce(a, labels[n, a].item() + 1) for a in pos) + sum(neg_losses)
        box_total += sum(F.smooth_l1_loss(deltas[n, a], box_targets[n, a], reduction="sum").item() for a in pos)
        positives += len(pos)
    return cls_total / max(positives, 1), box_total / max(positives, 1)


def test_ssd_loss_matches_a_loop_reference():
    torch.manual_seed(0)
    logits, deltas, box_targets = torch.randn(2, 30, 4), torch.randn(2, 30, 4), torch.randn(2, 30, 4)
    labels = torch.full((2, 30), BACKGROUND)
    labels[0, [1, 5]] = torch.tensor([0, 2])
    labels[1, 7] = 1
    labels[1, [3, 4]] = IGNORE
    loss = ssd_loss(logits, deltas, labels, box_targets)
    cls, box = _ssd_loss_by_loops(logits, deltas, labels, box_targets)
    assert loss["loss_cls"].item() == pytest.approx(cls, rel=1e-5)
    assert loss["loss_box"].item() == pytest.approx(box, rel=1e-5)


def test_focal_loss_matches_its_formula():
    logits = torch.tensor([2.0, -1.0, 0.3])
    targets = torch.tensor([1.0, 0.0, 0.0])
    p = torch.sigmoid(logits)
    expected = [-0.25 * (1 - p[0]) ** 2 * math.log(p[0]), -0.75 * p[1] ** 2 * math.log(1 - p[1]),
                -0.75 * p[2] ** 2 * math.log(1 - p[2])]
    assert torch.allclose(sigmoid_focal_loss(logits, targets), torch.tensor(expected))


def test_retinanet_loss_skips_ignored_anchors_and_normalises_by_positives():
    logits = torch.zeros(1, 3, 2)
    labels = torch.tensor([[1, BACKGROUND, IGNORE]])
    loss = retinanet_loss(logits, torch.zeros(1, 3, 4), labels, torch.zeros(1, 3, 4))
    per_element = sigmoid_focal_loss(torch.zeros(4), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert loss["loss_cls"].item() == pytest.approx(per_element.sum().item())
    assert loss["loss_box"].item() == 0.0


# ---------------------------------------------------------------- features and post-processing

def test_expand_tap_is_the_first_layers_expansion_output():
    net = build_network(mobilenet_v2_arch(), None).eval()
    x = torch.randn(1, 3, 64, 64)
    expand, head = extract_features(net, [Tap("expand", 5), Tap("head")], x)
    h = net.stem(x)
    for stage in net.stages[:5]:
        h = stage(h)
    assert torch.equal(expand, net.stages[5][0].expand(h))
    assert expand.shape[1] == 576
    assert torch.allclose(head, net.head(net.forward_stages(x)[-1]))


def test_ssd_postprocess_decodes_thresholds_and_suppresses():
    anchors = torch.tensor([[10.0, 10, 50, 50], [12.0, 10, 52, 50], [100.0, 100, 140, 140]])
    logits = torch.full((1, 3, 3), -10.0)
    logits[0, 0, 1] = 5.0   # class 0, confident
    logits[0, 1, 1] = 4.0   # same class, overlaps anchor 0 (IoU 0.9) -> suppressed
    logits[0, 2, 2] = 4.5   # class 1
    config = PostprocessConfig(score_threshold=0.5, nms_iou=0.6, max_per_image=10, candidates=100)
    (result,) = ssd_postprocess(logits, torch.zeros(1, 3, 4), anchors, [(120, 130)], BoxCoder(), config)
    assert result["labels"].tolist() == [0, 1]
    assert torch.allclose(result["boxes"], torch.tensor([[10.0, 10, 50, 50], [100.0, 100, 130, 120]]))


@pytest.mark.parametrize("detector", ["ssdlite", "retinanet"])
def test_detectors_train_and_predict_on_a_tiny_batch(detector):
    torch.manual_seed(0)
    model = build_model(detector, mobilenet_v2_arch(0.35), num_classes=3)
    images = torch.randn(2, 3, 128, 128)
    targets = [{"boxes": torch.tensor([[10.0, 20, 70, 90]]), "labels": torch.tensor([2]),
                "iscrowd": torch.tensor([False])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                "iscrowd": torch.zeros(0, dtype=torch.bool)}]
    losses = model.loss(model(images), targets)
    assert set(losses) == {"loss_cls", "loss_box"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.stem.conv.weight.grad is not None
    model.eval()
    with torch.no_grad():
        detections = model.predict(images, [(128, 128), (100, 120)])
    for det, (h, w) in zip(detections, [(128, 128), (100, 120)]):
        assert det["boxes"].shape[1] == 4 and len(det["boxes"]) <= model.test_config.max_per_image
        assert (det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all()
        assert ((det["labels"] >= 0) & (det["labels"] < 3)).all()


def test_ssdlite_overfits_one_image():
    """Training must move the right anchors: after a few steps on one image, the top detection
    is the object, with the right class, at IoU > 0.5."""
    torch.manual_seed(0)
    model = build_model("ssdlite", mobilenet_v2_arch(0.35), num_classes=2)
    images = torch.randn(1, 3, 96, 96).repeat(2, 1, 1, 1)  # BN needs two values on 1x1 maps
    target = {"boxes": torch.tensor([[20.0, 30, 70, 80]]), "labels": torch.tensor([1]),
              "iscrowd": torch.tensor([False])}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(60):
        loss = sum(model.loss(model(images), [target, target]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.train()  # batch statistics of this one image, as in training
    with torch.no_grad():
        outputs = model(images)
        det = model.postprocess(outputs, [(96, 96)] * 2)[0]
    assert det["labels"][0].item() == 1
    assert box_iou(det["boxes"][:1], target["boxes"]).item() > 0.5


def test_build_model_rejects_unknown_tasks_and_bad_class_counts():
    with pytest.raises(ValueError, match="unknown task"):
        build_model("yolo", "mobilenet_v2")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("ssdlite", "mobilenet_v2", 0)
