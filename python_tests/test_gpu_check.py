"""benchmarks/gpu_check.py: its dry run end to end (every stage on the CPU with tiny shapes, as a
subprocess), and the orchestration on stand-in stages: limits, failures, targets, the summary."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402

STAGES = ["build", "info", "pytest", "parity", "memcheck", "bench", "summary"]
MBCONV_OPS = {"sampled_mbconv", "depthwise_project", "mbconv_mixture", "depthwise_project_mixture"}


@pytest.mark.slow
def test_dry_run_runs_every_stage_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[gpu_check] 1/6 build: started" in run.stdout and "[gpu_check] PASSED" in run.stdout
    results = json.loads((out / "results.json").read_text())
    assert list(results["stages"]) == STAGES
    for name, stage in results["stages"].items():
        assert stage["status"] in ("passed", "skipped"), (name, stage)
    assert results["passed"] and results["dry_run"]

    cases = results["stages"]["parity"]["result"]["cases"]
    assert not [c for c in cases if c["status"] == "failed"]
    passed = [c for c in cases if c["status"] == "passed"]
    assert {c["op"] for c in passed} >= MBCONV_OPS | {"remap_copy", "nms", "batched_nms"}
    for case in passed:
        if "fraction_of_tolerance" in case:  # a real comparison, inside its tolerance
            assert 0 <= case["fraction_of_tolerance"] <= 1 and "max_abs_err" in case and "tolerance" in case
    assert all(c.get("reason") for c in cases if c["status"] == "skipped")  # every skip says why

    memcheck = results["stages"]["memcheck"]
    assert memcheck["detail"] == "skipped: no GPU" and memcheck["command"][1:3] == ["--tool", "memcheck"]
    bench = results["stages"]["bench"]["result"]["parts"]
    assert bench["mbconv float32"]["rows"] and bench["bandwidth float32"]["rows"][0]["fraction_of_copy_bandwidth"] > 0
    assert all(row["floor_ms"] > 0 for row in bench["mbconv float32"]["rows"])
    assert bench["mbconv float32"]["gemm_flops_per_s"] > 0
    assert {t["status"] for t in results["targets"]} <= {"met", "missed", "not measured"}

    summary = (out / "summary.md").read_text()
    assert "| check | result | figures |" in summary and "| floor ms |" in summary and "Floor: the block's" in summary
    for title in gpu_check.STAGE_TITLES.values():
        assert f"| {title} |" in summary
    assert "target: search cycle >= 2x the reference" in summary and "## Parity cases" in summary
    # the profile names the fused op's own steps (their RECORD_FUNCTION names) among its top rows
    profiled = bench["profile"]["shapes"]
    assert len(profiled) == 2 and all(p["rows"] for p in profiled.values())
    assert any(r["name"].startswith("fna_ext::") for p in profiled.values() for r in p["rows"])
    assert "## Where the fused op's time goes" in summary
    host = {row["version"]: row for row in bench["host overhead"]["calls"]}
    assert set(host) == {f"{v} {m}" for v in ("fused", "eager") for m in ("forward", "forward+backward")} | {
        f"mixture {v} forward+backward" for v in ("fused", "eager")}
    assert all(row["us"] > 0 and row["aten_ops"] > row["dispatched"] > 0 for row in host.values())
    assert "## The host's share" in summary
    assert (out / "pytest_cuda.xml").exists()


# ---- the orchestration, on stand-in stages -----------------------------------------------------

def _stand_in_stages(monkeypatch, **stages):
    """Every stage passes instantly except the ones given."""
    fake = {name: (lambda ctx, limit: {"status": "passed", "detail": "stand-in"}) for name in gpu_check.STAGES}
    fake.update(stages)
    monkeypatch.setattr(gpu_check, "STAGES", fake)


def test_a_failing_stage_fails_the_run_and_the_others_still_run(monkeypatch, tmp_path, capsys):
    def broken(ctx, limit):
        raise RuntimeError("a bug in the checking")
    _stand_in_stages(monkeypatch, info=lambda ctx, limit: {"status": "failed", "detail": "no cuda kernel for nms"},
                     parity=broken)
    assert gpu_check.main(["--out", str(tmp_path)]) == 1
    results = json.loads((tmp_path / "results.json").read_text())
    statuses = {name: stage["status"] for name, stage in results["stages"].items()}
    assert statuses == {"build": "passed", "info": "failed", "pytest": "passed", "parity": "failed",
                        "memcheck": "passed", "bench": "passed", "summary": "passed"}
    assert "RuntimeError: a bug in the checking" in results["stages"]["parity"]["detail"]
    assert "**FAILED** (exit status 1)" in (tmp_path / "summary.md").read_text()
    assert "[gpu_check] 4/6 parity: failed" in capsys.readouterr().out


def test_results_are_written_after_each_stage(monkeypatch, tmp_path):
    seen = []

    def bench(ctx, limit):  # the last stage sees the file the ones before it left
        seen.append(list(json.loads((tmp_path / "results.json").read_text())["stages"]))
        return {"status": "passed"}
    _stand_in_stages(monkeypatch, bench=bench)
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    assert seen == [["build", "info", "pytest", "parity", "memcheck"]]


def test_stages_that_need_the_extension_are_skipped_without_it(monkeypatch, tmp_path):
    _stand_in_stages(monkeypatch, info=lambda ctx, limit: {"status": "failed", "info": {"extension_loaded": False}})
    gpu_check.main(["--out", str(tmp_path)])
    stages = json.loads((tmp_path / "results.json").read_text())["stages"]
    assert all(stages[name]["status"] == "skipped" for name in gpu_check.NEEDS_EXTENSION)


def test_unused_time_passes_to_the_next_stage(monkeypatch, tmp_path):
    limits = {}

    def recording(name):
        def stage(ctx, limit):
            limits[name] = limit
            return {"status": "passed"}
        return stage
    _stand_in_stages(monkeypatch, **{name: recording(name) for name in gpu_check.STAGES})
    gpu_check.main(["--out", str(tmp_path)])
    shares = gpu_check.GPU_SHARES
    assert sum(shares.values()) < 8 * 60
    assert limits["build"] == pytest.approx(shares["build"], abs=5)
    assert limits["bench"] == pytest.approx(sum(shares.values()), abs=10)  # every stage before it took ~0 s


def test_a_command_past_its_limit_is_killed_with_its_children(tmp_path):
    ctx = gpu_check.Context(out=tmp_path, dry_run=True)
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    run = ctx.run(["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], "hang.log", limit=1)
    assert run.timed_out and time.monotonic() - started < 10
    child = int(pid_file.read_text())
    for _ in range(50):  # the orphan is reaped by init shortly after the kill
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited
        return f.read().split()[2] != "Z"


# ---- parsing and targets ---------------------------------------------------------------------

def test_junit_counts(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite name="pytest" tests="9" failures="1" errors="2" skipped="3"/></testsuites>')
    assert gpu_check.junit_counts(xml) == {"tests": 9, "failures": 1, "errors": 2, "skipped": 3, "passed": 3}
    assert gpu_check.junit_counts(tmp_path / "missing.xml") is None


def test_memcheck_summary(tmp_path):
    log = tmp_path / "m.log"
    log.write_text("========= Invalid __global__ read of size 4\n========= ERROR SUMMARY: 3 errors\n")
    assert gpu_check.memcheck_summary(log) == 3
    log.write_text("========= ERROR SUMMARY: 0 errors\n")
    assert gpu_check.memcheck_summary(log) == 0
    log.write_text("Traceback ...\n")
    assert gpu_check.memcheck_summary(log) is None


def _row(name, mode, **figures):
    return {"shape": {"name": name}, "mode": mode, **figures}


def test_targets_take_the_worst_shape():
    parts = {
        "mbconv float32": {"status": "passed", "rows": [
            _row("a", "forward+backward", speedup_vs_eager=4.0, speedup_vs_compile=2.0),
            _row("b", "forward+backward", speedup_vs_eager=2.5, speedup_vs_compile=1.6)]},
        "mbconv bfloat16": {"status": "failed", "error": "RuntimeError: boom"},
        "bandwidth float32": {"status": "passed", "rows": [
            _row("bw", "forward", fraction_of_copy_bandwidth=0.7),
            _row("bw", "forward+backward", fraction_of_copy_bandwidth=0.65)]},
        "search step": {"status": "skipped", "reason": "bench_search_step needs pycocotools, which is not installed"},
    }
    results = {"stages": {"bench": {"result": {"compile": True, "parts": parts}}}}
    targets = {t["target"]: t for t in gpu_check.evaluate_targets(results)}
    eager = targets["fused >= 3x eager, fwd+bwd, search shapes, float32"]
    assert eager["status"] == "missed" and eager["measured"] == 2.5 and eager["worst_case"].startswith("b")
    assert targets["fused >= 1.5x torch.compile, fwd+bwd, search shapes, float32"]["status"] == "met"
    assert targets[">= 60% of copy bandwidth at N=256 56x56 C=24 k7 e6, float32"]["status"] == "met"
    bf16 = targets["fused >= 3x eager, fwd+bwd, search shapes, bfloat16"]
    assert bf16["status"] == "not measured" and "boom" in bf16["figure"]
    assert "not measured: the benchmark did not get to it" == \
        targets[">= 60% of copy bandwidth at N=256 56x56 C=24 k7 e6, bfloat16"]["figure"]
    step = targets["search cycle >= 2x the reference (in memory)"]
    assert step["status"] == "not measured" and "pycocotools" in step["figure"]


def test_only_test_files_with_cuda_tests_are_collected():
    files = {p.name for p in gpu_check.cuda_test_files()}
    assert {"test_fused_mbconv.py", "test_mbconv_mixture.py", "test_nms.py"} <= files
    assert "test_gpu_check.py" not in files and "test_eval_coco.py" not in files


def test_the_search_step_benchmark_warms_every_candidate_first(tmp_path):
    """bench_search_step times weight steps only after one step per candidate index, every layer
    on it: cuDNN's and oneDNN's first use of a shape is not what a long search pays per step."""
    pytest.importorskip("pycocotools", reason="the search reads its COCO-format data with pycocotools")
    import bench_search_step
    from gpu_bench import TINY_SEARCH_OVERRIDES

    search = bench_search_step.build_search("ssdlite", "cpu", str(tmp_path), TINY_SEARCH_OVERRIDES)
    layers = list(search.layers)
    seen = [set() for _ in layers]
    steps = []

    def step():  # what a weight step does with the path, without the training
        for names, op in zip(seen, search.sample_path(len(steps))):
            names.add(op)
        steps.append(None)

    bench_search_step.warm_every_candidate(search, [step, step])
    assert all(names == set(layer.spec.candidates) for names, layer in zip(seen, layers))
    assert len(steps) == 2 * max(len(layer.spec.candidates) for layer in layers)
    assert "sample" not in vars(search.alphas)  # sampling is the search's own again
    assert len(search.sample_path(0)) == len(layers)


@pytest.mark.parametrize("argv, message", [
    (["--stages", "info,bench", "--bench-parts", "Profile"], "error: --bench-parts 'Profile': Profile is not a part"),
    (["--stages", "info", "--bench-parts", "profile"], "error: --bench-parts without the bench stage"),
    (["--stages", "biuld"], "error: --stages 'biuld': biuld is not a stage"),
])
def test_bad_stages_and_bench_parts_are_refused_before_any_stage(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--dry-run", "--out", str(tmp_path / "check"), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "check").exists()  # nothing ran, nothing written


def test_bench_parts_of_several_words_are_accepted():
    """Part names hold spaces ("mbconv float32"): gpu_bench.py --list-parts gives one a line."""
    import argparse

    parser = argparse.ArgumentParser()
    gpu_check.check_bench_parts(parser, "mbconv float32, host overhead,search step", bench_selected=True)
    assert gpu_check.chosen_names(parser, "--x", "a b, c", ["a b", "c"], "thing") == ["a b", "c"]
