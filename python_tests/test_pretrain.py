"""The project's own seed: a tiny pretraining run, its weights file, resume, the cached default
and the command line's errors."""

import json
from pathlib import Path
import subprocess
import sys
import threading
import time

import pytest
import torch

from fna_ext import cli, load_seed_weights, mobilenet_v2
from fna_ext.cli import pretrain as pretrain_cli
from fna_ext.pretrain import core as pretrain
from fna_ext.data.synthetic import generate_classification
from fna_ext.arch import Arch, mobilenet_v2_arch
from fna_ext.families.mbconv import build_network
from fna_ext.families.resnet import resnet18
from fna_ext.remap import save_weights


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One epoch of a width-0.35 MobileNetV2 at 32 px on 25 images (20 train, 5 val)."""
    folder = tmp_path_factory.mktemp("pretrain")
    root = generate_classification(folder / "data", images=25, size=32)
    result = pretrain.pretrain_seed(folder / "seed.pt", data_root=root, epochs=1, batch_size=10,
                                    width_mult=0.35, image_size=32)
    return root, result


def test_tiny_run_writes_loadable_weights(tiny_run):
    _, result = tiny_run
    assert isinstance(result.accuracy, float) and 0.0 <= result.accuracy <= 1.0
    payload = torch.load(result.path, map_location="cpu", weights_only=True)
    assert payload["format"] == "fna_ext.weights"
    assert payload["metadata"]["val_top1"] == result.accuracy
    assert payload["metadata"]["image_size"] == 32 and payload["metadata"]["epochs"] == 1
    assert len(payload["metadata"]["class_names"]) == 5
    assert payload["arch"]["net_config"] == str(mobilenet_v2(width_mult=0.35).arch)
    # As a detection backbone (no classifier), and as the 5-class classifier it was trained as.
    report = load_seed_weights(mobilenet_v2(num_classes=None, width_mult=0.35), result.path)
    assert report.layout == "fna_ext" and report.ignored == ["classifier.weight", "classifier.bias"]
    load_seed_weights(mobilenet_v2(num_classes=5, width_mult=0.35), result.path)
    load_seed_weights(mobilenet_v2(width_mult=0.35), result.path, skip_classifier=True)


def test_run_folder_sits_beside_the_weights_and_resume_continues(tiny_run):
    root, result = tiny_run
    run_dir = pretrain.run_dir_for(result.path)
    assert run_dir == result.path.parent / "seed_run"
    assert (run_dir / "checkpoint.pt").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["eval"]["top1"] == result.accuracy
    # The run had finished: resuming trains nothing and measures the same weights again.
    resumed = pretrain.pretrain_seed(result.path, data_root=root, epochs=1, batch_size=10,
                                     width_mult=0.35, image_size=32, resume=True)
    assert resumed.accuracy == result.accuracy and resumed.history == []


def test_an_arch_is_pretrained_in_place_of_mobilenet_v2(tiny_run, tmp_path):
    """Table 5's Retrain row: a searched architecture pretrained with the same recipe."""
    root, _ = tiny_run
    arch = Arch.parse(str(mobilenet_v2_arch(0.35)).replace("k3_e6", "k5_e3"))
    result = pretrain.pretrain_seed(tmp_path / "found.pt", data_root=root, epochs=1, batch_size=10, image_size=32,
                                    arch=arch)
    payload = torch.load(result.path, map_location="cpu", weights_only=True)
    assert payload["arch"]["net_config"] == str(arch)
    load_seed_weights(build_network(arch, 5), result.path)  # the 5-class classifier it was trained as


def _fake_builder(calls: list):
    def build(path, name="mobilenet_v2"):
        calls.append(path)
        save_weights(path, mobilenet_v2(num_classes=5, width_mult=0.35), metadata={"fake": True})
    return build


def test_default_seed_is_built_once_then_reused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FNA_EXT_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(pretrain, "build_default_seed", _fake_builder(calls))
    path = pretrain.default_seed_weights()
    assert path == tmp_path / "seeds" / "mobilenet_v2-synthetic-v1.pt" and path.is_file()
    assert "pretraining the embedded mobilenet_v2 seed once" in capsys.readouterr().err
    assert pretrain.default_seed_weights() == path
    assert len(calls) == 1 and capsys.readouterr().err == ""
    assert _leftovers(path) == []
    load_seed_weights(mobilenet_v2(num_classes=None, width_mult=0.35), path)


def test_a_named_resnet_seed_is_built_under_its_own_name_and_other_archs_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FNA_EXT_CACHE", str(tmp_path))
    built = []
    monkeypatch.setattr(pretrain, "build_default_seed",
                        lambda path, name="mobilenet_v2": built.append(name) or save_weights(path, resnet18(5)))
    path = pretrain.seed_weights_path(None, None, "resnet18")
    assert path == tmp_path / "seeds" / "resnet18-synthetic-v1.pt" and built == ["resnet18"]
    with pytest.raises(ValueError, match="--seed-arch 'k3_e6': .* named arch"):
        pretrain.seed_weights_path(None, None, "k3_e6")
    assert pretrain.seed_weights_path("given.pt", None, "resnet18") == Path("given.pt")


def test_resnet_blocks_start_as_identities():
    """zero_init_residual covers ResNet's blocks: each one's last BN scale starts at zero."""
    net = pretrain.seed_network(5, 1.0, {"dropout": 0.0, "zero_init_residual": True}, Arch.parse("resnet18"))
    blocks = [block for stage in net.stages for block in stage]
    assert blocks and all(block.bn2.weight.abs().sum() == 0 for block in blocks)


def test_default_seed_keeps_the_file_another_process_published_first(tmp_path, monkeypatch):
    monkeypatch.setenv("FNA_EXT_CACHE", str(tmp_path))
    final = tmp_path / "seeds" / "mobilenet_v2-synthetic-v1.pt"

    def build_while_another_publishes(path, name="mobilenet_v2"):
        save_weights(path, mobilenet_v2(num_classes=5, width_mult=0.35), metadata={"who": "us"})
        save_weights(final, mobilenet_v2(num_classes=5, width_mult=0.35), metadata={"who": "them"})

    monkeypatch.setattr(pretrain, "build_default_seed", build_while_another_publishes)
    assert pretrain.default_seed_weights() == final
    assert torch.load(final, weights_only=True)["metadata"] == {"who": "them"}
    assert _leftovers(final) == []


def test_default_seed_waits_for_a_concurrent_build(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")
    monkeypatch.setenv("FNA_EXT_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(pretrain, "build_default_seed", _fake_builder(calls))
    final = tmp_path / "seeds" / "mobilenet_v2-synthetic-v1.pt"
    final.parent.mkdir(parents=True)
    with open(final.with_name(f".{final.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "another process" is building

        def finish_building():
            time.sleep(0.3)
            save_weights(final, mobilenet_v2(num_classes=5, width_mult=0.35))
            fcntl.flock(lock, fcntl.LOCK_UN)

        other = threading.Thread(target=finish_building)
        other.start()
        assert pretrain.default_seed_weights() == final
        other.join()
    assert calls == []


def _leftovers(published):
    """Files beside the published seed other than it and its lock file (private builds, runs)."""
    return sorted(p.name for p in published.parent.iterdir()
                  if p.name not in (published.name, f".{published.name}.lock"))


@pytest.mark.parametrize("args, message", [
    (["--width-mult", "0"], "--width-mult must be positive"),
    (["--image-size", "8"], "--image-size must be at least 32"),
    (["--arch", "mobilenet_v2", "--width-mult", "0.5"], "--width-mult scales MobileNetV2"),
    (["--epochs", "0"], "must be positive"),
    (["--set", "train.no_such_key=1"], "unknown config key 'train.no_such_key'"),
    (["--set", "train.optimizer.name=lbfgs"], "train.optimizer.name must be one of sgd, rmsprop, adam, adamw"),
    (["--data", "/no/such/folder"], "no 'train' folder"),
])
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setenv("FNA_EXT_CACHE", str(tmp_path / "cache"))
    if "--data" not in args:  # a real dataset, so only the bad argument can fail
        root = generate_classification(tmp_path / "data", images=25, size=32)
        args = ["--data", str(root), "--batch-size", "10", *args]
    with pytest.raises(SystemExit) as exit_info:
        cli.run(pretrain_cli.main, [*args, "--out", str(tmp_path / "seed.pt")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error:") and message in lines[-1]
    assert not (tmp_path / "seed.pt").exists()


def test_cli_module_reports_errors_as_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fna_ext.pretrain", "--out", str(tmp_path),
                             "--data", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --out {tmp_path} is a folder; give a file path such as {tmp_path / 'seed.pt'}"]
