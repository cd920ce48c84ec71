"""Figures: each writes a valid PNG atomically, and bad input fails with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fna_ext.arch import Arch, mobilenet_v2_arch
from fna_ext.plots import plot_alphas, plot_arch, plot_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

ADAPTED = Arch.parse(
    "[[32, 16], ['k3_e1'], 1]|[[16, 24], ['k5_e3', 'k3_e3', 'skip', 'skip'], 2]|"
    "[[24, 32], ['k7_e6', 'k5_e3', 'k3_e6', 'k5_e6'], 2]|"
    "[[32, 64], ['k7_e6', 'skip', 'k3_e3', 'k7_e3'], 2]|[[64, 96], ['k5_e6', 'skip'], 1]|"
    "[[96, 160], ['k7_e6', 'k5_e6', 'k3_e6', 'k3_e6'], 2]|[[160, 320], ['k3_e6'], 1]")


def assert_png(path: Path, min_size=(200, 100)) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_size[0] and image.height >= min_size[1]
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


@pytest.mark.parametrize("arch", [mobilenet_v2_arch(), ADAPTED], ids=["mobilenet_v2", "adapted"])
def test_plot_arch_writes_png(tmp_path, arch):
    out = plot_arch(arch, tmp_path / "arch.png", title=str(arch)[:40])
    assert out == tmp_path / "arch.png"
    assert_png(out)


def test_plot_arch_with_seed_draws_two_rows(tmp_path):
    single = plot_arch(ADAPTED, tmp_path / "single.png")
    both = plot_arch(ADAPTED, tmp_path / "both.png", seed_arch=mobilenet_v2_arch(),
                     title="seed vs adapted")
    assert_png(both)
    with Image.open(single) as a, Image.open(both) as b:
        assert b.height > a.height


def test_plot_arch_overwrites_existing_file(tmp_path):
    target = tmp_path / "arch.png"
    target.write_bytes(b"old")
    plot_arch(mobilenet_v2_arch(), target)
    assert_png(target)


LAYERS = ["s1_l0", "s1_l1", "s2_l1"]
CANDIDATES = [["k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6"],
              ["k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6", "skip"],
              ["k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6", "skip"]]


def uniform_probs(sharpen: float = 0.0) -> list[list[float]]:
    """Uniform probabilities, ``sharpen`` of the mass moved onto each layer's first candidate."""
    probs = []
    for names in CANDIDATES:
        n = len(names)
        probs.append([(1 - sharpen) / n + (sharpen if j == 0 else 0.0) for j in range(n)])
    return probs


def test_plot_alphas_writes_png(tmp_path):
    history = [(0, uniform_probs()), (100, uniform_probs(0.3)), (200, uniform_probs(0.6))]
    out = plot_alphas(history, LAYERS, CANDIDATES, tmp_path / "alphas.png", title="alphas")
    assert_png(out)


def test_plot_alphas_single_entry(tmp_path):
    assert_png(plot_alphas([(5, uniform_probs())], LAYERS, CANDIDATES, tmp_path / "one.png"))


def test_plot_alphas_empty_history_raises(tmp_path):
    with pytest.raises(ValueError, match="empty history"):
        plot_alphas([], LAYERS, CANDIDATES, tmp_path / "none.png")
    assert not list(tmp_path.iterdir())


def test_plot_alphas_mismatched_candidates_raise(tmp_path):
    bad = uniform_probs()
    bad[1] = bad[1][:-1]
    with pytest.raises(ValueError, match="s1_l1"):
        plot_alphas([(0, bad)], LAYERS, CANDIDATES, tmp_path / "bad.png")
    assert not list(tmp_path.iterdir())


def training_records(with_eval: bool) -> list[dict]:
    records = [{"iter": i, "epoch": 1, "loss": 3.0 / (1 + i / 50)} for i in range(0, 500, 20)]
    if with_eval:
        records += [{"iter": i, "epoch": 1, "eval": {"AP": 0.1 + i / 5000, "AP50": 0.2 + i / 3000}}
                    for i in (100, 300, 480)]
    return records


@pytest.mark.parametrize("with_eval", [True, False], ids=["eval", "no_eval"])
def test_plot_training_curves(tmp_path, with_eval):
    out = plot_training_curves(training_records(with_eval), tmp_path / "curves.png", title="run")
    assert_png(out)


def test_plot_training_curves_without_records(tmp_path):
    assert_png(plot_training_curves([], tmp_path / "empty.png"))


def test_plots_leave_no_pyplot_figures(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_arch(mobilenet_v2_arch(), tmp_path / "arch.png")
    plot_alphas([(0, uniform_probs())], LAYERS, CANDIDATES, tmp_path / "alphas.png")
    plot_training_curves(training_records(True), tmp_path / "curves.png")
    assert plt.get_fignums() == before


def test_layer_decision_names_the_winner_runner_up_and_margin():
    from fna_ext.nas.report import decisions_markdown, layer_decision

    decision = layer_decision(["k3_e3", "k5_e6", "skip"], [0.2, 0.7, 0.1])
    assert decision["winner"] == "k5_e6" and decision["runner_up"] == "k3_e3"
    assert decision["margin"] == 0.5 and decision["decided"] and decision["uniform"] == round(1 / 3, 6)
    undecided = layer_decision(["k3_e3", "k5_e6", "skip"], [0.35, 0.5 - 1e-3, 0.15 + 1e-3])
    assert not undecided["decided"] and undecided["winner"] == "k5_e6"
    lines = decisions_markdown([{"layer": "s1_l0", **decision}, {"layer": "s1_l1", **undecided}])
    assert lines[0].startswith("1 of 2 searched layers are decided")
    assert "| s1_l0 | k5_e6 | 0.700 | k3_e3 | 0.200 | 0.500 | 0.333 | yes |" in lines
