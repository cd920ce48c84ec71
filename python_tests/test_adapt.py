"""The whole pipeline on a tiny generated dataset (adapt), then evaluating and exporting what it
trained: summary files, the evaluation reproducing the training's metrics, exported models that
run without fna_ext and agree with the original, and clear errors."""

import json
import subprocess
import sys

import pytest
import torch

from fna_ext.arch import Arch, mobilenet_v2_arch
from fna_ext.data.synthetic import generate_detection
from fna_ext.tasks.detection.model_file import load_detector, read_detector_file
from fna_ext.data.coco_eval import STAT_NAMES
from fna_ext.tasks.detection.export import DecodedDetector
from fna_ext.families.mbconv import build_network
from fna_ext.remap import save_weights
from fna_ext.tasks import build_model

SEARCH = ["data.input_size=[64, 64]", "train.batch_size=4", "train.num_workers=0", "train.epochs=2",
          "train.schedule.warmup_iters=2", "search.alpha_start_epoch=1", "search.weight_steps_per_alpha_step=2",
          "model.backbone_bn_eps=0.001"]
TRAIN = ["data.input_size=[64, 64]", "train.batch_size=4", "train.num_workers=0", "train.epochs=1",
         "train.schedule.warmup_iters=2", "eval.batch_size=8", "model.backbone_bn_eps=0.001"]


def run(module, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    data = generate_detection(root / "coco", images=24, size=64, seed=5)
    torch.manual_seed(0)
    save_weights(root / "seed.pt", build_network(mobilenet_v2_arch(0.35), None))
    args = ["--data", str(data), "--seed-weights", str(root / "seed.pt"), "--out", str(root / "run"),
            "--bn-recalibrate", "2"]
    for setting in SEARCH:
        args += ["--search-set", setting]
    for setting in TRAIN:
        args += ["--train-set", setting]
    result = run("fna_ext.adapt", *args)
    assert result.returncode == 0, result.stderr
    return root, data, result.stdout


def test_adapt_writes_the_summary_and_each_phase(adapted):
    root, _, stdout = adapted
    out = root / "run"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pipeline"] == "Remap -> ArchAdapt -> Remap -> ParamAdapt"
    assert list(summary["metrics"]) == list(STAT_NAMES)
    assert summary["metrics"] == json.loads((out / "train" / "metrics.json").read_text())
    assert summary["arch"] == json.loads((out / "search" / "arch.json").read_text())["net_config"]
    assert summary["adapted"]["madds"] > 0 and summary["seed"]["params"] > 0
    phases = summary["seconds"]
    assert {"seed", "search: search", "parameter adaptation: fine-tune",
            "parameter adaptation: bn recalibration"} <= set(phases)
    assert phases["total"] >= sum(v for k, v in phases.items() if k != "total") * 0.99
    cost = summary["cost"]
    assert cost["total_device_hours"] == pytest.approx(phases["total"] / 3600)
    markdown = (out / "summary.md").read_text()
    assert "| AP | AP50 |" in markdown and "device-hours" in markdown and summary["arch"] in markdown
    for png in ("search/arch.png", "search/alphas.png", "train/training.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "AP50" in stdout and "summary.md" in stdout


def test_evaluate_reproduces_the_training_metrics(adapted, tmp_path):
    root, data, _ = adapted
    weights = root / "run" / "train" / "model_final.pt"
    result = run("fna_ext.evaluate", "--checkpoint", str(weights), "--out", str(tmp_path / "e.json"))
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "e.json").read_text())
    trained = json.loads((root / "run" / "train" / "metrics.json").read_text())
    assert record["metrics"] == pytest.approx(trained, abs=1e-6)
    assert record["annotations"].endswith("instances_val2017.json")


def _exported_outputs_without_fna_ext(path, images_path):
    # a fresh interpreter that cannot import fna_ext runs the exported file
    code = ("import sys; sys.modules['fna_ext'] = None\n"
            "import torch\n"
            f"model = torch.jit.load({str(path)!r})\n"
            f"boxes, scores = model(torch.load({str(images_path)!r}))\n"
            f"torch.save({{'boxes': boxes, 'scores': scores}}, {str(images_path)!r} + '.out')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return torch.load(str(images_path) + ".out", weights_only=True)


def test_torchscript_export_runs_without_fna_ext_and_matches(adapted, tmp_path):
    root, _, _ = adapted
    weights = root / "run" / "train" / "model_final.pt"
    out = tmp_path / "model.torchscript.pt"
    result = run("fna_ext.export", "--checkpoint", str(weights), "--format", "torchscript", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "largest difference boxes" in result.stdout
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 255
    torch.save(images, tmp_path / "images.pt")
    got = _exported_outputs_without_fna_ext(out, tmp_path / "images.pt")
    detector, _ = load_detector(weights)
    with torch.no_grad():
        boxes, scores = DecodedDetector(detector, (64, 64))(images)
        # the dense outputs hold the detector's own detections: its best one is a decoded box
        best = detector.predict(((images / 255) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
                                / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))[0]
    # within what the export itself checks: two processes may sum in other orders (threads)
    box_tolerance, score_tolerance = DecodedDetector.tolerances
    torch.testing.assert_close(got["boxes"], boxes, atol=box_tolerance, rtol=1e-4)
    torch.testing.assert_close(got["scores"], scores, atol=score_tolerance, rtol=1e-4)
    assert scores.shape[-1] == 5 and (scores.sum(-1) <= 1 + 1e-5).all()  # softmax minus background
    if len(best["scores"]):
        top = best["scores"].argmax()
        label = best["labels"][top]
        anchor = scores[0, :, label].argmax()
        torch.testing.assert_close(scores[0, anchor, label], best["scores"][top])
        torch.testing.assert_close(boxes[0, anchor], best["boxes"][top], atol=1e-3, rtol=1e-4)


def test_onnx_export_matches_under_onnxruntime(adapted, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    root, _, _ = adapted
    # The adapted architecture with fresh weights: the fixture's detector (a random seed, two tiny
    # epochs) has activations in the thousands, which turn onnxruntime's and PyTorch's
    # last-bit float32 differences into score differences above the check's 1e-4.
    payload = read_detector_file(root / "run" / "train" / "model_final.pt")
    torch.manual_seed(0)
    fresh = build_model(payload["detector"], Arch.parse(payload["arch"]), payload["num_classes"])
    weights = tmp_path / "fresh.pt"
    torch.save({**payload, "state_dict": {k: v.contiguous() for k, v in fresh.state_dict().items()}}, weights)
    result = run("fna_ext.export", "--checkpoint", str(weights), "--format", "onnx",
                 "--out", str(tmp_path / "m.onnx"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.onnx").stat().st_size > 100_000


def test_onnx_without_its_packages_says_what_to_install(monkeypatch, tmp_path):
    import importlib.util

    from fna_ext.engine import export

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'fna_ext\[onnx\]'"):
        export.export_model(tmp_path / "whatever.pt", tmp_path / "m.onnx", "onnx")


@pytest.mark.parametrize("module, args, message", [
    ("fna_ext.evaluate", ["--checkpoint", "NOPE.pt"], "NOPE.pt does not exist"),
    ("fna_ext.export", ["--checkpoint", "NOPE.pt", "--format", "torchscript"], "NOPE.pt does not exist"),
    ("fna_ext.evaluate", ["--checkpoint", "SEED"], "is not a trained model"),
    ("fna_ext.export", ["--checkpoint", "WEIGHTS", "--format", "torchscript", "--input-size", "16", "16"],
     "--input-size"),
    ("fna_ext.adapt", ["--data", "DATA"], "--seed-weights is required"),
    ("fna_ext.adapt", ["--train-set", "train.optimizer.momentun=0.9"], "momentun"),
])
def test_bad_input_exits_2_with_one_line(adapted, tmp_path, module, args, message):
    root, data, _ = adapted
    swap = {"SEED": str(root / "seed.pt"), "WEIGHTS": str(root / "run" / "train" / "model_final.pt"),
            "DATA": str(data), "NOPE.pt": str(tmp_path / "NOPE.pt")}
    result = run(module, *[swap.get(a, a) for a in args], "--out", str(tmp_path / "o"))
    assert result.returncode == 2, result.stderr
    assert message.replace("NOPE.pt", str(tmp_path / "NOPE.pt")) in result.stderr
    assert "Traceback" not in result.stderr


def test_retinanet_dense_outputs_hold_its_detections():
    from fna_ext.arch import Arch
    from fna_ext.tasks import build_model

    torch.manual_seed(0)
    arch = Arch.parse("[[16, 8], ['k3_e1'], 1]|[[8, 16], ['k3_e3'], 2]|[[16, 24], ['k3_e3'], 2]|"
                      "[[24, 32], ['k3_e3'], 2]|[[32, 48], ['k3_e6'], 2]|[[48, 64], ['k3_e3'], 1]")
    detector = build_model("retinanet", arch, 3).eval()
    torch.nn.init.normal_(detector.head.cls.bias, 0.0, 1.0)  # scores above the test threshold
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 255
    with torch.no_grad():
        boxes, scores = DecodedDetector(detector, (64, 64))(images)
        normalised = (images / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
            / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        found = detector.predict(normalised)[0]
    assert scores.shape == (1, boxes.shape[1], 3) and (scores >= 0).all() and (scores <= 1).all()
    assert len(found["scores"]) > 0
    top = found["scores"].argmax()
    anchor = scores[0, :, found["labels"][top]].argmax()
    torch.testing.assert_close(scores[0, anchor, found["labels"][top]], found["scores"][top])
    torch.testing.assert_close(boxes[0, anchor], found["boxes"][top], atol=1e-3, rtol=1e-4)
