"""Training a fixed architecture end to end on a tiny generated COCO-format dataset."""

import json
import subprocess
import sys

import pytest
import torch

from fna_ext.data.synthetic import generate_detection
from fna_ext.data.coco_eval import STAT_NAMES

SMALL_ARCH = "[[16, 8], ['k3_e1'], 1]|[[8, 16], ['k3_e3'], 2]|[[16, 24], ['k3_e3'], 2]|" \
             "[[24, 32], ['k3_e3'], 2]|[[32, 48], ['k3_e6'], 2]|[[48, 64], ['k3_e3'], 1]"


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    return generate_detection(tmp_path_factory.mktemp("data") / "coco", images=20, size=64, seed=3)


def run_train(*args):
    return subprocess.run([sys.executable, "-m", "fna_ext.train", *args], capture_output=True, text=True,
                          timeout=300)


TINY_SETTINGS = ["--set", "data.input_size=[64, 64]", "--set", "train.batch_size=4",
                 "--set", "train.num_workers=0", "--set", "train.checkpoint_every=2",
                 "--set", "train.schedule.warmup_iters=2", "--set", "eval.batch_size=8",
                 "--set", "model.backbone_bn_eps=0.001"]


def test_train_cli_writes_weights_metrics_and_log(tiny_coco, tmp_path):
    out = tmp_path / "run"
    result = run_train("--data", str(tiny_coco), "--arch", SMALL_ARCH, "--out", str(out), "--epochs", "1",
                       *TINY_SETTINGS)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == list(STAT_NAMES)
    assert all(-1.0 <= v <= 1.0 for v in metrics.values())
    payload = torch.load(out / "model_final.pt", weights_only=True)
    assert payload["format"] == "fna_ext.detector" and payload["detector"] == "ssdlite"
    assert payload["class_names"] == ["circle", "square", "triangle", "ring", "cross"]
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["eval"] == metrics
    assert "AP50" in result.stdout and "weights:" in result.stdout
    # the published COCO settings are the base when --data is given
    assert "lr: 0.2" in (out / "config.yaml").read_text()

    # a second, resumed run continues from the checkpoint to a second epoch
    result = run_train("--data", str(tiny_coco), "--arch", SMALL_ARCH, "--out", str(out), "--epochs", "2",
                       "--resume", *TINY_SETTINGS)
    assert result.returncode == 0, result.stderr
    iterations = [r["iter"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                  if "eval" not in r]
    assert iterations == sorted(iterations) and iterations[-1] == 2 * 4  # 16 training images / 4

    # a resume with another learning rate or another architecture would continue as a mixture of
    # two runs: it stops before touching the folder, naming what changed
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for changed, named in ((["--set", "train.optimizer.lr=0.3"], "train.optimizer.lr: 0.2 -> 0.3"),
                           (["--arch", SMALL_ARCH.replace("k3_e6", "k5_e6")], "arch: the checkpoint's differs")):
        argv = ["--data", str(tiny_coco), "--arch", SMALL_ARCH, "--out", str(out), "--epochs", "3", "--resume",
                *TINY_SETTINGS, *changed]
        result = run_train(*argv)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("error: --resume:") and named in result.stderr, result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # the same arch from a search's arch.json, with its record, is the same run
    from fna_ext.arch import Arch

    searched = Arch.parse(SMALL_ARCH).with_meta(search={"alpha": [[0.1, 0.9]]}).save(tmp_path / "arch.json")
    result = run_train("--data", str(tiny_coco), "--arch", str(searched), "--out", str(out), "--epochs", "2",
                       "--resume", *TINY_SETTINGS)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args, message", [
    (["--set", "train.optimizer.momentun=0.9"], "unknown config key 'train.optimizer.momentun'"),
    (["--set", "train.batch_size=64"], "fewer than one batch"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--arch", "[[32, 16], ['k4_e6'], 1]"], "stage 0"),
    (["--resume"], "no checkpoint"),
    (["--init", "remap"], "--init remap needs --seed-weights"),
    (["--bn-recalibrate", "-1"], "--bn-recalibrate must be"),
])
def test_train_cli_bad_input_exits_2_with_one_line(tiny_coco, tmp_path, args, message):
    result = run_train("--data", str(tiny_coco), "--arch", SMALL_ARCH, "--out", str(tmp_path / "o"),
                       *TINY_SETTINGS, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_train_cli_missing_data_exits_2(tmp_path):
    result = run_train("--data", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "nowhere" in result.stderr and "Traceback" not in result.stderr
