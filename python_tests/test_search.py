"""The search loop on a tiny generated dataset: outputs, exact resume, random strategy, CLI."""

import json
import re
import subprocess
import sys

import pytest
import torch

from fna_ext.arch import Arch, mobilenet_v2_arch
from fna_ext.nas.search import search
from fna_ext.data.synthetic import generate_detection
from fna_ext.families.mbconv import build_network
from fna_ext.tasks import get_task
from fna_ext.tasks.detection.presets import search_preset
from fna_ext.remap import save_weights

TINY = ["data.input_size=[64, 64]", "train.batch_size=4", "train.num_workers=0", "train.epochs=2",
        "train.schedule.warmup_iters=2", "search.alpha_start_epoch=1", "search.weight_steps_per_alpha_step=2",
        "search.alpha_log_every=1", "train.checkpoint_every=3", "model.backbone_bn_eps=0.001"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    data = generate_detection(root / "coco", images=24, size=64, seed=5)
    torch.manual_seed(0)
    seed = build_network(mobilenet_v2_arch(0.35), None)
    save_weights(root / "seed.pt", seed)
    return data, seed, root / "seed.pt"


def _config(data, *extra):
    # the task's resolve_config: every rule the CLI applies (search.fused=true is a choice, not a string)
    return get_task("coco").resolve_config(search_preset("ssdlite", synthetic=False), None,
                                           [f"data.root={data}", *TINY, *extra])


def test_search_writes_arch_json_and_plots(tiny, tmp_path):
    data, seed, _ = tiny
    result = search(_config(data), seed, tmp_path)
    arch = Arch.load(tmp_path / "arch.json")
    assert arch == result.arch and len(arch.stages) == 7
    record = json.loads((tmp_path / "arch.json").read_text())["search"]
    assert record["strategy"] == "diff" and len(record["layers"]) == 21
    probabilities = record["layers"][0]["probabilities"]
    assert abs(sum(probabilities.values()) - 1) < 1e-4
    assert record["layers"][0]["op"] == max(probabilities, key=probabilities.get)
    assert record["adapted"]["madds"] > 0 and record["expected_cost"] > 0
    for png in ("arch.png", "alphas.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result.phase_seconds) >= {"data", "remap", "cost table", "search", "derive"}
    # how decided each layer's choice is: in the record and in summary.md
    first = record["layers"][0]
    assert first["winner"] == first["op"] and first["winner_probability"] == max(probabilities.values())
    assert first["margin"] == pytest.approx(first["winner_probability"] - first["runner_up_probability"], abs=2e-6)
    assert record["decided_layers"] == sum(layer["winner_probability"] >= 0.5 for layer in record["layers"])
    summary = (tmp_path / "summary.md").read_text()
    assert f"{record['decided_layers']} of 21 searched layers are decided" in summary
    assert len(re.findall(r"\n\| s\d+_l\d+ \|", summary)) == 21  # one row per searched layer


def test_resumed_search_ends_with_the_same_architecture_and_alphas(tiny, tmp_path):
    data, seed, _ = tiny
    straight = search(_config(data), seed, tmp_path / "a")
    assert search(_config(data), seed, tmp_path / "b", stop_at=3) is None  # interrupted after step 3 of 4
    resumed = search(_config(data), seed, tmp_path / "b", resume=True)
    assert resumed.ops == straight.ops
    a = json.loads((tmp_path / "a" / "arch.json").read_text())["search"]["layers"]
    b = json.loads((tmp_path / "b" / "arch.json").read_text())["search"]["layers"]
    assert [layer["alpha"] for layer in a] == [layer["alpha"] for layer in b]


def test_recomputing_the_depthwise_outputs_changes_no_alpha(tiny, tmp_path):
    """search.recompute (the default) only moves memory: the same alphas to the bit without it."""
    data, seed, _ = tiny
    alphas = []
    for recompute in ("true", "false"):
        search(_config(data, f"search.recompute={recompute}"), seed, tmp_path / recompute)
        layers = json.loads((tmp_path / recompute / "arch.json").read_text())["search"]["layers"]
        alphas.append([layer["alpha"] for layer in layers])
    assert alphas[0] == alphas[1]


def test_random_strategy_scores_candidates(tiny, tmp_path):
    data, seed, _ = tiny
    result = search(_config(data, "search.strategy=random", "search.random_candidates=3"), seed, tmp_path)
    scored = result.record["random_candidates"]
    assert len(scored) == 3
    best = min(scored, key=lambda c: c["score"])
    assert result.ops == best["ops"]


def test_independent_weights_search_runs(tiny, tmp_path):
    data, seed, _ = tiny
    result = search(_config(data, "search.weight_sharing=independent", "train.epochs=1",
                            "search.alpha_start_epoch=0"), seed, tmp_path)
    assert result.record["weight_sharing"] == "independent"


def run_search(*args):
    return subprocess.run([sys.executable, "-m", "fna_ext.search", *args], capture_output=True, text=True,
                          timeout=300)


def test_search_cli_prints_the_summary_and_next_command(tiny, tmp_path):
    data, _, seed_path = tiny
    sets = [arg for item in TINY for arg in ("--set", item)]
    result = run_search("--data", str(data), "--seed-weights", str(seed_path), "--out", str(tmp_path / "s"),
                        "--epochs", "1", *sets, "--set", "search.alpha_start_epoch=0")
    assert result.returncode == 0, result.stderr
    for text in ("derived architecture", "seed", "adapted", "decided layers", "time per phase",
                 "python -m fna_ext.train"):
        assert text in result.stdout


@pytest.mark.parametrize("args, message", [
    ([], "--seed-weights is required with --data"),
    (["--seed-weights", "missing.pt"], "missing.pt"),
    (["--seed-weights", "SEED", "--set", "search.lamda=1"], "unknown config key 'search.lamda'"),
    (["--seed-weights", "SEED", "--resume"], "no checkpoint"),
    (["--seed-weights", "SEED", "--set", "search.fused=maybe"], "search.fused must be one of auto, true, false"),
])
def test_search_cli_bad_input_exits_2(tiny, tmp_path, args, message):
    data, _, seed_path = tiny
    args = [str(seed_path) if a == "SEED" else a for a in args]
    result = run_search("--data", str(data), "--out", str(tmp_path / "o"), *args,
                        *[arg for item in TINY for arg in ("--set", item)])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("weight_paths", ["alpha", "uniform"])
def test_weight_paths_follow_alpha_or_stay_uniform_once_alpha_starts(tiny, tmp_path, weight_paths):
    from fna_ext.nas.search import ArchitectureSearch

    data, seed, _ = tiny
    runner = ArchitectureSearch(_config(data, f"search.weight_paths={weight_paths}"), seed, tmp_path)
    with torch.no_grad():
        for alpha in runner.alphas.alphas:  # alpha all but certain of each layer's first candidate
            alpha.zero_()[0] = 20.0
    started = runner.steps_per_epoch  # alpha_start_epoch=1
    firsts = [runner.sample_path(step)[0] == runner.layers[0].spec.candidates[0] for step in range(started, started + 40)]
    before = {runner.sample_path(step)[0] for step in range(started)}
    assert len(before) > 1  # uniform before alpha starts, either way
    if weight_paths == "alpha":
        assert all(firsts)
    else:  # 40 uniform draws of 7 candidates: the first candidate about 6 times, never all 40
        assert 1 <= sum(firsts) <= 20


def test_fused_setting_takes_auto_true_false_and_refuses_the_rest():
    from fna_ext.ops import FUSED_BY_DEFAULT, fused_setting

    for value, expected in (("auto", "cpu" in FUSED_BY_DEFAULT), ("AUTO", "cpu" in FUSED_BY_DEFAULT),
                            (True, True), (False, False), ("true", True), ("False", False)):
        assert fused_setting(value, "cpu") is expected
    assert fused_setting("auto", "cuda") is ("cuda" in FUSED_BY_DEFAULT)
    for bad in ("yes", 1, None, "maybe"):
        with pytest.raises(ValueError, match="search.fused must be auto, true or false"):
            fused_setting(bad, "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("fused", ["auto", "true"])  # auto: eager on a GPU; true: the CUDA kernels
def test_a_search_on_cuda_runs_and_draws_the_cpu_paths(tiny, tmp_path, fused):
    """The whole search loop on the GPU (weight and alpha steps, derivation): paths are drawn on
    the CPU, so a seed trains the same paths on either device."""
    from fna_ext.nas.search import ArchitectureSearch

    pytest.importorskip("pycocotools", reason="the search reads its COCO-format data with pycocotools")
    data, seed, _ = tiny
    result = search(_config(data, f"search.fused={fused}"), seed, tmp_path / "cuda", device="cuda")
    assert Arch.load(tmp_path / "cuda" / "arch.json") == result.arch
    paths = [ArchitectureSearch(_config(data), seed, tmp_path / f"paths_{device}", device=device).sample_path(0)
             for device in ("cpu", "cuda")]
    assert paths[0] == paths[1]
