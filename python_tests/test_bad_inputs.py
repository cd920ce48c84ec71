"""Every bad input to every command line, as a table (issue 17's audit, kept): each case must end
with exit status 2 and exactly one stderr line that starts with ``error:`` and names the culprit,
with no traceback and no partial output. The commands run in-process (``cli.run(main, argv)``,
what ``python -m`` runs) so the table stays fast; a few cases also run as real processes."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from fna_ext import cli
from fna_ext.arch import mobilenet_v2_arch
from fna_ext.data.synthetic import generate_classification, generate_detection
from fna_ext.families.mbconv import build_network
from fna_ext.remap import save_weights

TINY_SEARCH = ["data.input_size=[64, 64]", "train.batch_size=4", "train.num_workers=0", "train.epochs=2",
               "search.alpha_start_epoch=1", "model.backbone_bn_eps=0.001"]
TINY_TRAIN = ["data.input_size=[64, 64]", "train.batch_size=4", "train.num_workers=0", "train.epochs=1",
              "model.backbone_bn_eps=0.001", "eval.batch_size=8"]
SMALL_ARCH = str(mobilenet_v2_arch(0.35))
PWNED = "fna_ext_pwned_marker"


class Evil:
    """A pickle that would create a marker file if it were ever unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good data and weights, and every kind of bad file the table hands the commands."""
    root = tmp_path_factory.mktemp("bad_inputs")
    f = {"root": root, "coco": generate_detection(root / "coco", images=16, size=64, seed=3),
         "classes": generate_classification(root / "classes", images=25, size=32, seed=3)}
    torch.manual_seed(0)
    f["seed"] = save_weights(root / "seed.pt", build_network(mobilenet_v2_arch(0.35), None))
    data = f["seed"].read_bytes()
    for name, content in (("truncated.pt", data[: len(data) // 2]), ("empty.pt", b""),
                          ("random.pt", os.urandom(4096)), ("text.jpg", b"not an image\n")):
        (root / name).write_bytes(content)
    f["truncated"], f["empty"], f["random"] = root / "truncated.pt", root / "empty.pt", root / "random.pt"
    f["marker"] = root / PWNED
    torch.save({"state_dict": Evil(f["marker"])}, root / "evil.pt")
    f["evil"] = root / "evil.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, root / "foreign.pt")
    f["foreign"] = root / "foreign.pt"
    torch.manual_seed(0)
    f["wide_seed"] = save_weights(root / "wide.pt", build_network(mobilenet_v2_arch(0.5), None))
    f["nope"] = root / "does_not_exist"
    f["a_file"] = root / "a_file.txt"
    f["a_file"].write_text("a file where a folder is expected\n")
    f["a_dir"] = root / "a_dir"
    f["a_dir"].mkdir()
    (root / "bad.yaml").write_text("train:\n  epochs: [1\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    f["no_val"] = _coco_without_val_boxes(root / "no_val", f["coco"])
    f["all_text"] = _coco_with_text_images(root / "all_text", f["coco"])
    return f


def _coco_without_val_boxes(out: Path, coco: Path) -> Path:
    """The tiny dataset with its validation annotations emptied."""
    import shutil

    shutil.copytree(coco, out)
    path = out / "annotations" / "instances_val2017.json"
    ann = json.loads(path.read_text())
    ann["annotations"] = []
    path.write_text(json.dumps(ann))
    return out


def _coco_with_text_images(out: Path, coco: Path) -> Path:
    """The tiny dataset with every training image replaced by text."""
    import shutil

    shutil.copytree(coco, out)
    for image in (out / "train2017").iterdir():
        image.write_text("not an image")
    return out


@dataclass
class Case:
    id: str
    command: str                          # the fna_ext.cli module (or synthetic, for fna_ext.data.synthetic)
    args: Callable[[dict], list[str]]     # argv, from the fixture's files and the case's out path
    names: str                            # what the one error line must contain
    out: bool = True                      # --out is a fresh path that must not exist afterwards
    setup: Callable[[dict], None] | None = field(default=None)


def search(*extra: str) -> Callable[[dict], list[str]]:
    return lambda f: ["--data", str(f["coco"]), "--seed-weights", str(f["seed"]), "--out", str(f["out"]),
                      *[a for s in TINY_SEARCH for a in ("--set", s)], *extra]


def train(*extra: str) -> Callable[[dict], list[str]]:
    return lambda f: ["--data", str(f["coco"]), "--seed-weights", str(f["seed"]), "--arch", SMALL_ARCH,
                      "--out", str(f["out"]), *[a for s in TINY_TRAIN for a in ("--set", s)], *extra]


def pretrain(*extra: str) -> Callable[[dict], list[str]]:
    return lambda f: ["--data", str(f["classes"]), "--out", str(f["out"] / "seed.pt"), "--epochs", "1",
                      "--batch-size", "10", "--width-mult", "0.35", "--image-size", "32", *extra]


def with_file(key: str, make: Callable[[dict], list[str]], *flag: str) -> Callable[[dict], list[str]]:
    """``make``'s argv with ``flag`` pointing at the fixture's file ``key``."""
    return lambda f: [*make(f), *flag, str(f[key])] if flag else make(f)


def replace(make: Callable[[dict], list[str]], flag: str, key: str) -> Callable[[dict], list[str]]:
    """``make``'s argv with ``flag``'s value replaced by the fixture's file ``key``."""
    def args(f):
        argv = make(f)
        argv[argv.index(flag) + 1] = str(f[key])
        return argv
    return args


def resume_from(key: str, make: Callable[[dict], list[str]], checkpoint: str = "checkpoint.pt"):
    """A --resume whose checkpoint is the fixture's file ``key``."""
    def setup(f):
        target = f["out"] / checkpoint
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f[key].read_bytes())
    return dict(args=lambda f: [*make(f), "--resume"], setup=setup, out=False)


CASES = [
    # settings: type, range, choice, unknown key, cross checks; --set, --config and shortcuts
    Case("search-lambda-abc", "search", search("--set", "search.lambda=abc"), "search.lambda"),
    Case("search-batch-abc", "search", search("--set", "train.batch_size=abc"), "train.batch_size"),
    Case("search-lr-abc", "search", search("--set", "train.optimizer.lr=abc"), "train.optimizer.lr"),
    Case("search-input-size-big", "search", search("--set", "data.input_size=big"), "data.input_size"),
    Case("search-epochs-0", "search", search("--set", "train.epochs=0"), "train.epochs"),
    Case("search-epochs--2", "search", search("--set", "train.epochs=-2"), "train.epochs"),
    Case("search-epochs-flag-0", "search", search("--epochs", "0"), "--epochs"),
    Case("search-alpha-never-steps", "search", search("--set", "search.alpha_start_epoch=2"),
         "search.alpha_start_epoch"),
    Case("search-strategy", "search", search("--set", "search.strategy=grid"), "search.strategy"),
    Case("search-model-by-set", "search", search("--set", "model.name=retinanet"), "--model"),
    Case("search-unknown-key", "search", search("--set", "search.lamda=0.1"), "search.lamda"),
    Case("search-setting-given-a-mapping", "search", search("--set", "train.epochs={a: 1}"), "train.epochs"),
    Case("search-set-no-equals", "search", search("--set", "train.epochs"), "key=value"),
    Case("search-milestones-order", "train", train("--set", "train.schedule.name=step", "--set",
                                                   "train.schedule.milestones=[3, 1]"), "train.schedule"),
    Case("train-optimizer-name", "train", train("--set", "train.optimizer.name=lamb"), "train.optimizer.name"),
    Case("train-momentum-range", "train", train("--set", "train.optimizer.momentum=1.5"),
         "train.optimizer.momentum"),
    Case("train-epochs-0", "train", train("--set", "train.epochs=0"), "train.epochs"),
    Case("train-bn-recalibrate", "train", train("--bn-recalibrate", "-1"), "--bn-recalibrate"),
    Case("config-missing", "search", lambda f: [*search()(f), "--config", str(f["root"] / "nope.yaml")],
         "nope.yaml"),
    Case("config-invalid-yaml", "search", lambda f: [*search()(f), "--config", str(f["root"] / "bad.yaml")],
         "not valid YAML"),
    Case("config-a-folder", "search", lambda f: [*search()(f), "--config", str(f["a_dir"])], "a_dir"),
    Case("config-a-list", "search", lambda f: [*search()(f), "--config", str(f["root"] / "list.yaml")],
         "mapping"),
    Case("pretrain-crop-scale", "pretrain", pretrain("--set", "data.crop_scale=[0.9, 0.1]"), "data.crop_scale"),
    Case("pretrain-epochs-0", "pretrain", lambda f: [*pretrain()(f), "--epochs", "0"], "epochs"),
    Case("pretrain-lr-abc", "pretrain", pretrain("--set", "train.optimizer.lr=abc"), "train.optimizer.lr"),
    # data
    Case("search-no-data-root", "search", replace(search(), "--data", "nope"), "does_not_exist"),
    Case("search-data-without-coco", "search", replace(search(), "--data", "a_dir"), "annotation file"),
    Case("train-no-val-boxes", "train", replace(train(), "--data", "no_val"), "validation annotations"),
    Case("train-no-readable-image", "train", replace(train(), "--data", "all_text"), "none of the"),
    Case("pretrain-no-class-folders", "pretrain", replace(pretrain(), "--data", "a_dir"), "a_dir"),
    Case("search-data-without-seed", "search", lambda f: ["--data", str(f["coco"]), "--out", str(f["out"])],
         "--seed-weights"),
    Case("search-cuda-without-gpu", "search", search("--device", "cuda"), "--device cuda"),
    # weights handed in
    Case("seed-missing", "search", replace(search(), "--seed-weights", "nope"), "does_not_exist"),
    Case("seed-truncated", "search", replace(search(), "--seed-weights", "truncated"), "truncated"),
    Case("seed-empty", "search", replace(search(), "--seed-weights", "empty"), "empty"),
    Case("seed-random-bytes", "search", replace(search(), "--seed-weights", "random"), "random.pt"),
    Case("seed-evil-pickle", "search", replace(search(), "--seed-weights", "evil"), "pickled Python objects"),
    Case("seed-foreign-layout", "search", replace(search(), "--seed-weights", "foreign"), "layout"),
    Case("seed-wrong-widths", "search", replace(search("--seed-arch", SMALL_ARCH), "--seed-weights", "wide_seed"),
         "shape mismatches"),
    # a ResNet seed takes RetinaNet, whose data has no input_size: none of TINY_SEARCH's overrides
    Case("resnet-seed-evil", "search", lambda f: ["--data", str(f["coco"]), "--seed-weights", str(f["evil"]),
                                                  "--seed-arch", "resnet18", "--out", str(f["out"])],
         "pickled Python objects"),
    Case("train-evil-seed", "train", replace(train(), "--seed-weights", "evil"), "pickled Python objects"),
    Case("remap-evil-seed", "remap", lambda f: ["--seed", str(f["evil"]), "--arch", SMALL_ARCH,
                                                "--out", str(f["out"] / "w.pt")], "pickled Python objects"),
    Case("remap-truncated-seed", "remap", lambda f: ["--seed", str(f["truncated"]), "--arch", SMALL_ARCH,
                                                     "--out", str(f["out"] / "w.pt")], "truncated"),
    # architectures
    Case("train-arch-k9", "train", lambda f: [*train()(f), "--arch", "[[32, 16], ['k9_e6'], 1]"], "k9_e6"),
    Case("remap-arch-k9", "remap", lambda f: ["--seed", str(f["seed"]), "--arch", "[[32, 16], ['k9_e6'], 1]",
                                              "--out", str(f["out"] / "w.pt")], "k9_e6"),
    Case("count-arch-k9", "count", lambda f: ["--arch", "[[32, 16], ['k9_e6'], 1]"], "k9_e6", out=False),
    Case("count-arch-garbage", "count", lambda f: ["--arch", "[[32, 16], ['k3_e6'], 1"], "stage 0", out=False),
    Case("train-arch-missing-file", "train", replace(train(), "--arch", "nope"), "does_not_exist"),
    Case("count-output-stride-4", "count", lambda f: ["--task", "deeplabv3", "--output-stride", "4"],
         "--output-stride 4", out=False),
    Case("count-output-stride-detector", "count", lambda f: ["--task", "ssdlite", "--output-stride", "8"],
         "--output-stride 8", out=False),
    Case("pretrain-arch-and-width", "pretrain", pretrain("--arch", "mobilenet_v2"), "--width-mult"),
    Case("pretrain-arch-k9", "pretrain", lambda f: ["--data", str(f["classes"]), "--out", str(f["out"] / "seed.pt"),
                                                    "--arch", "[[32, 16], ['k9_e6'], 1]"], "k9_e6"),
    # output paths
    Case("search-out-a-file", "search", replace(search(), "--out", "a_file"), "--out", out=False),
    Case("train-out-a-file", "train", replace(train(), "--out", "a_file"), "--out", out=False),
    Case("search-out-under-a-file", "search",
         lambda f: [*search()(f), "--out", str(f["a_file"] / "sub")], "--out", out=False),
    Case("search-out-unwritable", "search", lambda f: [*search()(f), "--out", "/proc/fna_ext_out"], "--out",
         out=False),
    Case("remap-out-a-folder", "remap", lambda f: ["--seed", str(f["seed"]), "--arch", SMALL_ARCH,
                                                   "--out", str(f["a_dir"])], "--out", out=False),
    Case("remap-out-a-file-exists", "remap", lambda f: ["--seed", str(f["seed"]), "--arch", "[[32, 16], ['k3_e6'], 1]",
                                                        "--out", str(f["a_file"] / "w.pt")], "--out", out=False),
    Case("evaluate-out-a-folder", "evaluate", lambda f: ["--checkpoint", str(f["seed"]), "--out", str(f["a_dir"])],
         "--out", out=False),
    Case("export-out-a-folder", "export", lambda f: ["--checkpoint", str(f["seed"]), "--format", "torchscript",
                                                     "--out", str(f["a_dir"])], "--out", out=False),
    Case("synthetic-out-under-a-file", "synthetic", lambda f: ["--out", str(f["a_file"] / "sub")], "--out",
         out=False),
    Case("synthetic-out-unwritable", "synthetic", lambda f: ["--out", "/proc/fna_ext_data"], "--out", out=False),
    Case("pretrain-out-a-folder", "pretrain", lambda f: [*pretrain()(f), "--out", str(f["a_dir"])], "--out",
         out=False),
    # model files and checkpoints
    Case("evaluate-missing", "evaluate", lambda f: ["--checkpoint", str(f["root"] / "nope.pt")], "nope.pt",
         out=False),
    Case("evaluate-truncated", "evaluate", lambda f: ["--checkpoint", str(f["truncated"])], "truncated", out=False),
    Case("evaluate-evil", "evaluate", lambda f: ["--checkpoint", str(f["evil"])], "pickled Python objects",
         out=False),
    Case("evaluate-not-a-model", "evaluate", lambda f: ["--checkpoint", str(f["seed"])], "not a trained model",
         out=False),
    Case("evaluate-batch-size-0", "evaluate", lambda f: ["--checkpoint", str(f["seed"]), "--batch-size", "0"],
         "--batch-size", out=False),
    Case("export-evil", "export", lambda f: ["--checkpoint", str(f["evil"]), "--format", "torchscript",
                                             "--out", str(f["root"] / "m.pt")], "pickled Python objects", out=False),
    Case("search-resume-without-checkpoint", "search", search("--resume"), "--resume"),
    Case("search-resume-truncated", "search", **resume_from("truncated", search()), names="truncated"),
    Case("search-resume-evil", "search", **resume_from("evil", search()), names="pickled Python objects"),
    Case("search-resume-not-a-checkpoint", "search", **resume_from("seed", search()), names="not an fna_ext checkpoint"),
    Case("train-resume-evil", "train", **resume_from("evil", train()), names="pickled Python objects"),
    Case("train-resume-random", "train", **resume_from("random", train()), names="checkpoint"),
    Case("pretrain-resume-truncated", "pretrain", **resume_from("truncated", pretrain(), "seed_run/checkpoint.pt"),
         names="truncated"),
    Case("pretrain-resume-evil", "pretrain", **resume_from("evil", pretrain(), "seed_run/checkpoint.pt"),
         names="pickled Python objects"),
    # the command lines themselves
    Case("search-unknown-flag", "search", search("--bogus"), "--bogus"),
    Case("search-task", "search", search("--task", "tetris"), "--task"),
    Case("train-epochs-not-int", "train", train("--epochs", "abc"), "--epochs"),
    Case("remap-required", "remap", lambda f: [], "--seed", out=False),
    Case("export-format", "export", lambda f: ["--checkpoint", str(f["seed"]), "--format", "zip"], "--format",
         out=False),
    Case("count-input-size", "count", lambda f: ["--input-size", "0", "10"], "input_size", out=False),
]


def _run(command: str, argv: list[str], capsys) -> tuple[int, str]:
    module = "fna_ext.data.synthetic" if command == "synthetic" else f"fna_ext.cli.{command}"
    main = importlib.import_module(module).main
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.run(main, argv)
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_error_line_and_exit_2(case, files, tmp_path, capsys, recwarn):
    f = {**files, "out": tmp_path / "out"}
    if case.setup:
        case.setup(f)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, err = _run(case.command, case.args(f), capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.names in lines[0], lines[0]
    assert "Traceback" not in err and "weights_only=False" not in err
    # nothing half-written: no new --out, and a resumed folder as it was
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not files["marker"].exists(), "a pickle in a file handed to fna_ext was executed"


def test_a_wrong_shape_key_is_a_mismatch_and_not_also_unexpected(files, tmp_path, capsys):
    code, err = _run("remap", ["--seed", str(files["wide_seed"]), "--seed-arch", SMALL_ARCH, "--arch", SMALL_ARCH,
                               "--out", str(tmp_path / "w.pt")], capsys)
    assert code == 2 and "shape mismatches" in err and "unexpected keys" not in err, err


def test_a_run_with_one_corrupt_image_skips_it_and_finishes(files, tmp_path, capsys):
    import shutil

    data = tmp_path / "coco"
    shutil.copytree(files["coco"], data)
    victim = sorted((data / "train2017").iterdir())[0]
    victim.write_text("not an image")
    with pytest.warns(UserWarning, match=victim.name):
        code, _ = _run("train", replace(train(), "--data", "data")({**files, "data": data, "out": tmp_path / "t"}),
                       capsys)
    assert code == 0 and (tmp_path / "t" / "model_final.pt").is_file()


@pytest.mark.parametrize("command, make", [("search", search), ("train", train), ("pretrain", pretrain)])
def test_a_diverging_run_exits_2_naming_the_last_good_checkpoint(command, make, files, tmp_path, capsys):
    # weights past float32's range: the loss is inf or nan at the next step
    lr = "train.optimizer.lr=1e38"
    argv = make("--set", lr, "--set", "train.checkpoint_every=1", "--set", "train.schedule.warmup_iters=0")
    code, err = _run(command, argv({**files, "out": tmp_path / "o"}), capsys)
    errors = [line for line in err.strip().splitlines() if "error" in line.lower()]
    assert code == 2 and len(errors) == 1 and errors[0].startswith(("error: the loss became", "error: the optimizer's update overflowed")), err
    assert err.strip().splitlines()[-1] == errors[0]  # progress lines may come first
    assert "checkpoint" in errors[0] and "Traceback" not in err  # the last good one, or that none was written


def _module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)


def test_as_real_processes_errors_are_one_line_and_entry_points_do_not_warn(files, tmp_path):
    result = _module("fna_ext.remap")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: python -m fna_ext.remap:") and "usage:" not in result.stderr
    assert "usage:" in _module("fna_ext.remap", "--help").stdout
    evil = _module("fna_ext.remap", "--seed", str(files["evil"]), "--arch", SMALL_ARCH, "--out", str(tmp_path / "w"))
    assert evil.returncode == 2 and evil.stderr.count("\n") == 1 and "Traceback" not in evil.stderr
    assert not files["marker"].exists()
    made = _module("fna_ext.data.synthetic", "--out", str(tmp_path / "syn"), "--images", "2", "--size", "32")
    assert made.returncode == 0 and made.stderr == "", made.stderr


def test_a_commands_warning_is_one_line_without_the_source():
    # in a real process: pytest records warnings in-process, which would hide the printing
    message = "3 of 10 images are missing from img/ (e.g. img/a.jpg); they are skipped"
    script = ("import warnings\nfrom fna_ext import cli\n"
              f"cli.run(lambda argv: warnings.warn({message!r}), [])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == f"warning: {message}\n", done.stderr


def test_a_warning_while_a_command_imports_fna_ext_is_one_line_too():
    # `python -m fna_ext.X` imports the package (whose extension checks may warn) before the
    # command's cli.run; a library import elsewhere keeps Python's own format
    message = "fna_ext: the compiled extension was built against torch 0.0"
    script = ("import sys, warnings\n{argv}import fna_ext\n"
              f"warnings.warn({message!r}, RuntimeWarning)")
    # what `python -m fna_ext.search` shows while it locates the module
    as_command = script.format(argv="sys.argv[:] = ['-m']; sys.orig_argv[:] = [sys.executable, '-m', "
                                    "'fna_ext.search']\n")
    done = subprocess.run([sys.executable, "-c", as_command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == f"warning: {message}\n", done.stderr
    done = subprocess.run([sys.executable, "-c", script.format(argv="")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "RuntimeWarning: " + message in done.stderr, done.stderr
