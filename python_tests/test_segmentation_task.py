"""The segmentation task end to end on a tiny generated Cityscapes-layout set: the registry, a
search, parameter adaptation with evaluation, and the model file read back."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from fna_ext.arch import Arch, mobilenet_v2_arch
from fna_ext.cli.count import count_task
from fna_ext.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fna_ext.engine.export import export_model
from fna_ext.config import resolve
from fna_ext.data.synthetic import generate_segmentation
from fna_ext.engine.finetune import evaluate_checkpoint, finetune
from fna_ext.families.mbconv import build_network
from fna_ext.nas.search import search
from fna_ext.remap import save_weights
from fna_ext.tasks import get_task, load_model_file, resolve as resolve_model
from fna_ext.tasks.segmentation.evaluation import EvalSettings

TINY = ["data.crop_size=[64, 64]", "data.eval_crop=[64, 64]", "train.batch_size=4", "train.num_workers=0",
        "train.epochs=2", "train.schedule.warmup_iters=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("segmentation")
    data = generate_segmentation(root / "city", images=30, size=64, seed=7)
    torch.manual_seed(0)
    seed = build_network(mobilenet_v2_arch(0.35), None)
    save_weights(root / "seed.pt", seed)
    return data, seed, root / "seed.pt"


def test_the_registry_knows_the_task_by_its_names():
    task = get_task("cityscapes")
    assert task is get_task("segmentation") and task.default_model == "deeplabv3"
    assert resolve_model("deeplabv3plus") == (task, "deeplabv3plus")
    search_preset, finetune_preset = task.presets("deeplabv3", synthetic=False)
    assert search_preset["search"]["lambda"] == 9e-3 and search_preset["search"]["tau"] == 45.0  # A.1
    assert search_preset["train"]["epochs"] == 80 and search_preset["search"]["alpha_start_epoch"] == 30
    assert search_preset["search"]["split_fraction"] == 0.2
    assert finetune_preset["data"]["crop_size"] == [769, 769] and finetune_preset["train"]["schedule"]["name"] == "poly"
    assert task.search_space("deeplabv3").max_depths == (4, 4, 6, 6, 4, 1)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """A search, then parameter adaptation of what it found (with 2 batches of BN recalibration
    from the config), on the tiny set."""
    data, seed, seed_path = tiny
    out = tmp_path_factory.mktemp("seg_run")
    task = get_task("segmentation")
    config = resolve(task.search_preset("deeplabv3", synthetic=True), None,
                     [f"data.root={data}", *TINY, "search.alpha_start_epoch=1"])
    found = search(config, seed, out / "search")
    config = resolve(task.finetune_preset("deeplabv3", synthetic=True), None,
                     [f"data.root={data}", *TINY, "adaptation.bn_recalibrate=2"])
    result = finetune(task, config, found.arch, out / "train", seed_weights=seed_path)
    return out, found, result


def test_search_then_adapt_then_read_the_model_back(trained):
    out, found, result = trained
    record = json.loads((out / "search" / "arch.json").read_text())["search"]
    assert len(record["layers"]) == 4 + 4 + 6 + 6 + 4 + 1
    assert (out / "search" / "alphas.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "train" / "metrics.json").read_text())
    assert 0 <= metrics["mIoU"] <= 1 and "IoU/road" in metrics
    assert result.metrics["mIoU"] == metrics["mIoU"] and result.weights == out / "train" / "model_final.pt"
    assert "bn recalibration" in result.phase_seconds  # adaptation.bn_recalibrate was read

    task, model, payload = load_model_file(result.weights)
    assert task is get_task("segmentation") and Arch.parse(payload["arch"]) == found.arch
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 19, 64, 64)


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300)


def test_evaluate_reproduces_the_metrics_then_flips_and_draws(trained, tmp_path):
    out, _, result = trained
    plain = run("fna_ext.evaluate", "--checkpoint", str(result.weights), "--out", str(tmp_path / "plain.json"))
    assert plain.returncode == 0, plain.stderr
    assert json.loads((tmp_path / "plain.json").read_text())["metrics"] == pytest.approx(result.metrics, abs=1e-9)
    picture = (tmp_path / "plain.png").read_bytes()
    assert picture[:4] == b"\x89PNG" and "plain.png" in plain.stdout
    with Image.open(tmp_path / "plain.png") as image:  # three columns of a few rows
        assert image.width > image.height / 2

    flipped = run("fna_ext.evaluate", "--checkpoint", str(result.weights), "--out", str(tmp_path / "flip.json"),
                  "--set", "eval.flip=true", "--set", "eval.scales=[0.75,1.0]")
    assert flipped.returncode == 0, flipped.stderr
    record = json.loads((tmp_path / "flip.json").read_text())
    assert record["settings"] == ["eval.flip=true", "eval.scales=[0.75,1.0]"]
    evaluation = evaluate_checkpoint(result.weights, eval_settings=["eval.flip=true", "eval.scales=[0.75,1.0]"])
    assert evaluation.dataset.eval_settings == EvalSettings((64, 64), flip=True, scales=(0.75, 1.0))
    assert evaluation.metrics == pytest.approx(record["metrics"], abs=1e-9)

    refused = run("fna_ext.evaluate", "--checkpoint", str(result.weights), "--set", "train.epochs=3")
    assert refused.returncode == 2 and refused.stderr.startswith("error: --set train.epochs=3")


def test_the_torchscript_export_gives_the_models_logits(trained, tmp_path):
    _, _, result = trained
    report = export_model(result.weights, tmp_path / "seg.torchscript.pt", "torchscript")
    assert report["matches"] and report["input_size"] == [64, 64]
    assert report["outputs"] == {"logits": [1, 19, 64, 64]}
    _, model, _ = load_model_file(result.weights)
    images = torch.rand(2, 3, 64, 64) * 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((images / 255 - mean) / std)
        (got,) = torch.jit.load(str(tmp_path / "seg.torchscript.pt"))(images)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_output_stride_8_trains_reloads_and_counts(tiny, tmp_path):
    data, _, seed_path = tiny
    task = get_task("segmentation")
    config = resolve(task.finetune_preset("deeplabv3", synthetic=True), None,
                     [f"data.root={data}", *TINY, "train.epochs=1", "model.output_stride=8"])
    result = finetune(task, config, mobilenet_v2_arch(0.35), tmp_path / "os8", seed_weights=seed_path)
    _, model, _ = load_model_file(result.weights)
    features = {}
    model.head.register_forward_pre_hook(lambda module, inputs: features.update(shape=inputs[0][-1].shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert features["shape"][-2:] == (8, 8)  # 64 / 8: the last stages dilate instead of striding
    arch = mobilenet_v2_arch()
    assert count_task("deeplabv3", arch, output_stride=8).madds > count_task("deeplabv3", arch).madds
    with pytest.raises(ValueError, match="--output-stride 8: the ssdlite model takes none"):
        count_task("ssdlite", arch, output_stride=8)


def test_the_adaptation_section_chooses_the_remapping_rules(tiny, tmp_path, monkeypatch):
    """Table 7's variants reach the remapping of the found network (``adaptation.remap_*``)."""
    import fna_ext.engine.finetune as finetune_module

    data, _, seed_path = tiny
    calls = []
    real = finetune_module.remap_network
    monkeypatch.setattr(finetune_module, "remap_network",
                        lambda seed, target, *rules: calls.append(rules) or real(seed, target, *rules))
    task = get_task("segmentation")
    config = resolve(task.finetune_preset("deeplabv3", synthetic=True), None,
                     [f"data.root={data}", *TINY, "train.epochs=1", "adaptation.remap_width=l1",
                      "adaptation.remap_kernel=dilate"])
    finetune(task, config, Arch.parse(str(mobilenet_v2_arch(0.35)).replace("k3_e6", "k5_e3")), tmp_path / "l1",
             seed_weights=seed_path)
    assert calls == [("l1", "dilate", "diagonal")]
    with pytest.raises(ValueError, match="adaptation.remap_width must be one of"):
        task.resolve_config(task.finetune_preset("deeplabv3", synthetic=True), None, ["adaptation.remap_width=biggest"])
