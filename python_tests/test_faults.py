"""Reliability under faults, on tiny generated data: a SIGKILL at a seeded random step or in the
middle of a checkpoint write, then ``--resume``, ends bit for bit where an uninterrupted run ends
(weights, optimiser state, alphas, arch.json, the log) for ``python -m fna_ext.search``,
``fna_ext.train`` and ``fna_ext.pretrain``; a damaged checkpoint is one error line and exit 2;
two searches at once, and two first uses of the embedded seed at once, both succeed.

The faults are injected by fault_injection.py, which runs the real command line in a subprocess
through runpy after patching the Trainer or the checkpoint save to SIGKILL its own process.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from fna_ext import cli
from fna_ext.arch import mobilenet_v2_arch
from fna_ext.data.synthetic import generate_classification, generate_detection
from fna_ext.families.mbconv import build_network
from fna_ext.remap import save_weights

WRAPPER = Path(__file__).with_name("fault_injection.py")
TIMEOUT = 300
KILLED = -signal.SIGKILL
KILL_SEED = 20251202  # the seeded choice of the step each command is killed at
TORN_SAVE = 3  # the checkpoint save killed half-written: the second one is the good one to resume


# --------------------------------------------------------------------------- the three commands

def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@dataclass(frozen=True)
class Command:
    """One command line on the tiny data, and where its outputs go."""
    module: str
    steps: int  # training iterations of the whole run
    iters_per_epoch: int
    checkpoint_every: int
    arguments: Callable[[dict, Path], list[str]]  # (inputs, out folder) -> argv
    run_dir: str  # the Trainer's folder (checkpoint.pt and the log), relative to the out folder
    log: str
    finals: tuple[str, ...]  # torch files the finished run writes (compared bit for bit)
    jsons: tuple[str, ...] = ()  # JSON files the finished run writes (compared exactly)

    def saves(self) -> list[int]:
        """The iterations after which the Trainer writes a checkpoint."""
        return [i for i in range(1, self.steps + 1)
                if i % self.iters_per_epoch == 0 or i % self.checkpoint_every == 0]

    def checkpoint(self, out: Path) -> Path:
        return out / self.run_dir / "checkpoint.pt"


# The search: 19 training images, split 10 (weights) / 9 (alpha); batch 2 gives 5 weight steps
# per epoch, 10 in all, with an alpha step every second weight step of epoch 2.
SEARCH_SETS = _sets("data.input_size=[64, 64]", "train.batch_size=2", "train.num_workers=0", "train.epochs=2",
                    "train.schedule.warmup_iters=2", "search.alpha_start_epoch=1",
                    "search.weight_steps_per_alpha_step=2", "search.alpha_log_every=1",
                    "train.checkpoint_every=3", "train.log_every=1", "model.backbone_bn_eps=0.001")
# Training a small fixed architecture from random initialisation (its 6 stages cannot take the
# 7-stage seed): 19 training images at batch 4, 4 steps per epoch, evaluated at the end.
SMALL_ARCH = "[[16, 8], ['k3_e1'], 1]|[[8, 16], ['k3_e3'], 2]|[[16, 24], ['k3_e3'], 2]|" \
             "[[24, 32], ['k3_e3'], 2]|[[32, 48], ['k3_e6'], 2]|[[48, 64], ['k3_e3'], 1]"
TRAIN_SETS = _sets("data.input_size=[64, 64]", "train.batch_size=4", "train.num_workers=0", "train.epochs=2",
                   "train.checkpoint_every=3", "train.log_every=1", "train.schedule.warmup_iters=2",
                   "eval.batch_size=8", "model.backbone_bn_eps=0.001")
# Pretraining a width-0.35 MobileNetV2 at 32 px: 20 training images at batch 5, 4 steps per epoch.
PRETRAIN_SETS = _sets("train.checkpoint_every=3", "train.log_every=1")

COMMANDS = {
    "search": Command(
        "fna_ext.search", steps=10, iters_per_epoch=5, checkpoint_every=3,
        arguments=lambda i, out: ["--data", str(i["coco"]), "--seed-weights", str(i["seed"]), "--out", str(out),
                                  *SEARCH_SETS],
        run_dir=".", log="search_log.jsonl", finals=("checkpoint.pt",), jsons=("arch.json",)),
    "train": Command(
        "fna_ext.train", steps=8, iters_per_epoch=4, checkpoint_every=3,
        arguments=lambda i, out: ["--data", str(i["coco"]), "--arch", SMALL_ARCH, "--out", str(out), *TRAIN_SETS],
        run_dir=".", log="metrics.jsonl", finals=("checkpoint.pt", "model_final.pt"), jsons=("metrics.json",)),
    "pretrain": Command(
        "fna_ext.pretrain", steps=8, iters_per_epoch=4, checkpoint_every=3,
        arguments=lambda i, out: ["--data", str(i["classification"]), "--out", str(out / "seed.pt"), "--epochs", "2",
                                  "--batch-size", "5", "--width-mult", "0.35", "--image-size", "32", *PRETRAIN_SETS],
        run_dir="seed_run", log="seed_run/metrics.jsonl", finals=("seed_run/checkpoint.pt", "seed.pt")),
}


def _kill_step(name: str, index: int) -> int:
    """A seeded random step to kill ``name`` in: one with a checkpoint behind it (else there is
    nothing to resume) and at least one logged step since that checkpoint (which the resumed run
    must drop from the log and train again)."""
    command = COMMANDS[name]
    saves = command.saves()
    candidates = [k for k in range(saves[0], command.steps) if max(s for s in saves if s <= k) < k]
    return random.Random(KILL_SEED + index).choice(candidates)


KILL_STEPS = {name: _kill_step(name, index) for index, name in enumerate(COMMANDS)}


# --------------------------------------------------------------------------- running them

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    coco = generate_detection(root / "coco", images=24, size=64, seed=5)
    classification = generate_classification(root / "classification", images=25, size=32)
    torch.manual_seed(0)
    save_weights(root / "seed.pt", build_network(mobilenet_v2_arch(0.35), None))
    cache = root / "cache"  # nothing reaches ~/.cache/fna_ext
    cache.mkdir()
    return {"coco": coco, "classification": classification, "seed": root / "seed.pt", "cache": cache}


def _argv(name: str, inputs: dict, out: Path, fault: dict | None, resume: bool) -> list[str]:
    command = COMMANDS[name]
    args = [*command.arguments(inputs, out), *(["--resume"] if resume else [])]
    if fault is None:
        return [sys.executable, "-m", command.module, *args]
    return [sys.executable, str(WRAPPER), json.dumps(fault), command.module, *args]


def _env(inputs: dict, **extra: str) -> dict:
    """One thread per process: on these tiny tensors a second thread only spins (10 search steps
    took 18 s of CPU with 2 threads on a loaded 2-core machine, 0.8 s with 1), and the two
    concurrent runs below would fight over the cores. The runs compared share the setting."""
    return {**os.environ, "FNA_EXT_CACHE": str(inputs["cache"]), "OMP_NUM_THREADS": "1", **extra}


def run(name: str, inputs: dict, out: Path, *, fault: dict | None = None, resume: bool = False):
    return subprocess.run(_argv(name, inputs, out, fault, resume), capture_output=True, text=True,
                          timeout=TIMEOUT, env=_env(inputs))


def _finished(result) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def concurrent_searches(inputs, tmp_path_factory):
    """Two searches of the same config started together into two folders (also the reference
    runs the resumed searches are compared with)."""
    outs = [tmp_path_factory.mktemp("search_a"), tmp_path_factory.mktemp("search_b")]
    results = run_together([_argv("search", inputs, out, None, False) for out in outs], _env(inputs))
    return outs, results


def run_together(commands: list[list[str]], env: dict) -> list[subprocess.CompletedProcess]:
    """Starts every command at once and waits for all of them (killing any still running if one
    times out)."""
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for command in commands]
    try:
        results = []
        for process in processes:
            stdout, stderr = process.communicate(timeout=TIMEOUT)
            results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def reference_search(concurrent_searches):
    outs, results = concurrent_searches
    _finished(results[0])
    return outs[0]


def _reference(name, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"reference_{name}")
    _finished(run(name, inputs, out))
    return out


@pytest.fixture(scope="module")
def reference_train(inputs, tmp_path_factory):
    return _reference("train", inputs, tmp_path_factory)


@pytest.fixture(scope="module")
def reference_pretrain(inputs, tmp_path_factory):
    return _reference("pretrain", inputs, tmp_path_factory)


# --------------------------------------------------------------------------- comparing runs

TIMING = re.compile(r"sec|second|time|elapsed")  # log fields that measure time, not the run


def assert_identical(a, b, where: str) -> None:
    """``a`` and ``b`` equal bit for bit: tensors by torch.equal (and dtype and shape), floats
    exactly, containers item by item."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# The states of Python's and NumPy's global RNGs in a checkpoint: nothing seeds them (each
# process starts from OS entropy) and nothing draws from them outside SeededItems, which seeds
# and restores them around every sample; they differ between any two runs, uninterrupted or not,
# and no result depends on them. torch's RNG state, which is seeded, is compared.
UNSEEDED_RNG = ("python", "python_pos", "numpy", "numpy_pos")


def load_run_file(path: Path):
    payload = torch.load(path, weights_only=True)
    if isinstance(payload, dict) and isinstance(payload.get("rng"), dict):
        payload["rng"] = {k: v for k, v in payload["rng"].items() if k not in UNSEEDED_RNG}
        assert "torch" in payload["rng"]
    return payload


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _untimed(record: dict) -> dict:
    return {k: (_untimed(v) if isinstance(v, dict) else v) for k, v in record.items() if not TIMING.search(k)}


def assert_log_is_the_uninterrupted_one(name: str, reference: Path, out: Path) -> None:
    """Each step logged once, in order, and every record equal to the uninterrupted run's but
    for the timing fields."""
    command = COMMANDS[name]
    records = read_log(out / command.log)
    steps = [r["iter"] for r in records if "eval" not in r]
    assert steps == list(range(1, command.steps + 1)), f"logged steps {steps}"
    evals = [r["iter"] for r in records if "eval" in r]
    assert len(evals) == len(set(evals)), f"evaluations logged twice: {evals}"
    expected = [_untimed(r) for r in read_log(reference / command.log)]
    assert [_untimed(r) for r in records] == expected


def assert_same_as_uninterrupted(name: str, reference: Path, out: Path) -> None:
    command = COMMANDS[name]
    for file in command.finals:
        assert_identical(load_run_file(reference / file), load_run_file(out / file), file)
    for file in command.jsons:
        assert json.loads((out / file).read_text()) == json.loads((reference / file).read_text()), file
    if name == "search":  # said outright, though the comparisons above include them
        ours, theirs = (torch.load(o / "checkpoint.pt", weights_only=True)["components"]
                        for o in (out, reference))
        assert_identical(ours["alphas"], theirs["alphas"], "alphas")
        assert_identical(ours["model"], theirs["model"], "weights")
        arch, expected = (json.loads((o / "arch.json").read_text()) for o in (out, reference))
        assert arch["net_config"] == expected["net_config"] and arch["stages"] == expected["stages"]
    assert_log_is_the_uninterrupted_one(name, reference, out)
    assert _temporaries(command.checkpoint(out)) == []


def _iteration(checkpoint: Path) -> int:
    return torch.load(checkpoint, weights_only=True)["components"]["progress"]["iteration"]


def _temporaries(checkpoint: Path) -> list[str]:
    return sorted(p.name for p in checkpoint.parent.glob(f".{checkpoint.name}.*.tmp"))


# --------------------------------------------------------------------------- 1. SIGKILL, then --resume

@pytest.mark.parametrize("name", list(COMMANDS))
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(name, inputs, request, tmp_path):
    command, step = COMMANDS[name], KILL_STEPS[name]
    reference = request.getfixturevalue(f"reference_{name}")
    out = tmp_path / "run"
    killed = run(name, inputs, out, fault={"kill_at_step": step})
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    # it died in step `step`: the checkpoint is the last one before it, the log runs to it
    last_save = max(s for s in command.saves() if s <= step)
    assert _iteration(command.checkpoint(out)) == last_save
    assert [r["iter"] for r in read_log(out / command.log) if "eval" not in r][-1] == step > last_save

    _finished(run(name, inputs, out, resume=True))
    assert_same_as_uninterrupted(name, reference, out)


# --------------------------------------------------------------------------- 2. SIGKILL inside a checkpoint write

@pytest.mark.parametrize("name", list(COMMANDS))
def test_sigkill_during_a_checkpoint_write_resumes_from_the_previous_one(name, inputs, request, tmp_path):
    command = COMMANDS[name]
    reference = request.getfixturevalue(f"reference_{name}")
    out = tmp_path / "run"
    killed = run(name, inputs, out, fault={"torn_checkpoint": TORN_SAVE})
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    checkpoint = command.checkpoint(out)
    previous, torn = command.saves()[TORN_SAVE - 2], command.saves()[TORN_SAVE - 1]
    # the rename never happened: checkpoint.pt is still the previous, whole one, and the half
    # written temporary file lies beside it
    assert _iteration(checkpoint) == previous
    leftovers = _temporaries(checkpoint)
    assert len(leftovers) == 1 and (checkpoint.parent / leftovers[0]).stat().st_size > 0
    assert [r["iter"] for r in read_log(out / command.log) if "eval" not in r][-1] == torn

    _finished(run(name, inputs, out, resume=True))
    assert_same_as_uninterrupted(name, reference, out)  # which also finds no temporary file left


# --------------------------------------------------------------------------- a SIGKILL while evaluating

def test_sigkill_during_the_final_evaluation_then_resume_logs_the_evaluation(inputs, reference_train, tmp_path):
    out = tmp_path / "run"
    killed = run("train", inputs, out, fault={"kill_at_evaluation": True})
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    assert _iteration(out / "checkpoint.pt") == COMMANDS["train"].steps  # saved just before evaluating

    _finished(run("train", inputs, out, resume=True))
    assert_same_as_uninterrupted("train", reference_train, out)


# --------------------------------------------------------------------------- 3. a damaged checkpoint

def _damage(kind: str, good: bytes) -> bytes:
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "random bytes":
        return random.Random(7).randbytes(64 * 1024)
    return b""


def _corrupt_checkpoint(name: str, kind: str, inputs: dict, reference: Path, out: Path) -> Path:
    command = COMMANDS[name]
    checkpoint = command.checkpoint(out)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(_damage(kind, command.checkpoint(reference).read_bytes()))
    return checkpoint


def _assert_one_error_line(stderr: str, checkpoint: Path) -> None:
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(checkpoint) in errors[0], stderr
    assert stderr.strip().splitlines()[-1] == errors[0]


@pytest.mark.parametrize("kind", ["truncated", "random bytes", "empty"])
@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_damaged_checkpoint_is_one_error_line_and_exit_2(name, kind, inputs, request, tmp_path, capsys,
                                                           monkeypatch):
    """In this process through cli.run, as ``python -m`` runs it (the next test runs the
    module itself once per command)."""
    from importlib import import_module

    reference = request.getfixturevalue(f"reference_{name}")
    checkpoint = _corrupt_checkpoint(name, kind, inputs, reference, tmp_path / "run")
    monkeypatch.setenv("FNA_EXT_CACHE", str(inputs["cache"]))
    main = import_module(f"fna_ext.cli.{name}").main
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, [*COMMANDS[name].arguments(inputs, tmp_path / "run"), "--resume"])
    assert exit_info.value.code == 2
    _assert_one_error_line(capsys.readouterr().err, checkpoint)


@pytest.mark.parametrize("name, kind", [("search", "truncated"), ("train", "random bytes"), ("pretrain", "empty")])
def test_a_damaged_checkpoint_in_the_module_command_exits_2(name, kind, inputs, request, tmp_path):
    reference = request.getfixturevalue(f"reference_{name}")
    checkpoint = _corrupt_checkpoint(name, kind, inputs, reference, tmp_path / "run")
    result = run(name, inputs, tmp_path / "run", resume=True)
    assert result.returncode == 2, result.stderr[-3000:]
    _assert_one_error_line(result.stderr, checkpoint)


# --------------------------------------------------------------------------- 4. under load

def test_two_searches_at_once_both_finish_with_the_same_architecture(concurrent_searches):
    outs, results = concurrent_searches
    for result in results:
        _finished(result)
    a, b = (json.loads((out / "arch.json").read_text()) for out in outs)
    assert a["net_config"] == b["net_config"] and a["stages"] == b["stages"]
    assert a == b  # the search record too: alphas, probabilities, costs
    assert_identical(*(load_run_file(out / "checkpoint.pt") for out in outs), "checkpoint")


def test_two_first_uses_of_the_embedded_seed_at_once_pretrain_it_once(inputs, tmp_path):
    cache, barrier = tmp_path / "cache", tmp_path / "barrier"
    cache.mkdir()
    barrier.mkdir()
    marker = tmp_path / "builds.txt"
    fault = {"default_seed": {"data": str(inputs["classification"]), "marker": str(marker),
                              "barrier": str(barrier), "processes": 2}}
    env = _env(inputs, FNA_EXT_CACHE=str(cache))
    results = run_together([[sys.executable, str(WRAPPER), json.dumps(fault), "-"]] * 2, env)
    for result in results:
        _finished(result)
    paths = {json.loads(result.stdout.strip().splitlines()[-1])["path"] for result in results}
    published = cache / "seeds" / "mobilenet_v2-synthetic-v1.pt"
    assert paths == {str(published)}
    payload = torch.load(published, weights_only=True)
    assert payload["format"] == "fna_ext.weights" and payload["state_dict"]
    assert len(marker.read_text().splitlines()) == 1  # one pretraining; the other process waited
    leftovers = sorted(p.name for p in published.parent.iterdir()
                       if p.name not in (published.name, f".{published.name}.lock"))
    assert leftovers == []  # no private build file, no run folder


def test_an_atomic_write_has_the_permissions_a_plain_write_has(tmp_path):
    from fna_ext.atomic import atomic_write_text

    (tmp_path / "plain.txt").write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    modes = [stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("plain.txt", "atomic.txt")]
    assert modes[1] == modes[0], f"atomic write {oct(modes[1])}, plain write {oct(modes[0])}"
