"""The CPU benchmarks' own logic on tiny inputs: bench_mbconv's profile of the fused op and its
floor, bench_host_overhead's op counts and bench_loader_gap's cycles and argument checks (the figures
themselves are in RESULTS.md), and bench_host_gemm's products."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_mbconv  # noqa: E402

from fna_ext import _extension  # noqa: E402


@pytest.mark.skipif(not _extension.has_kernel("sampled_mbconv_forward", "cpu"), reason="the extension is not loaded")
def test_the_profile_names_the_fused_ops_and_the_gemms():
    shape = bench_mbconv.Shape("tiny", 2, 8, 6, 3, 6)
    rows = bench_mbconv.profile_fused(shape, "cpu", torch.float32, iterations=2, top=50)
    ops = {row["op"] for row in rows}
    assert "aten::mm" in ops and "fna_ext::mbconv::depthwise_backward" in ops
    assert all(row["ms"] > 0 and 0 < row["share"] <= 1 and row["calls"] >= 1 for row in rows)
    assert [row["ms"] for row in rows] == sorted((row["ms"] for row in rows), reverse=True)


FLOOR_SHAPES = [bench_mbconv.Shape("plain", 2, 8, 6, 3, 6), bench_mbconv.Shape("stride 2", 2, 8, 7, 5, 6, stride=2),
                bench_mbconv.Shape("SE", 2, 8, 6, 3, 6, activation="hardswish", se_channels=4),
                bench_mbconv.Shape("dilated", 2, 8, 9, 5, 6, dilation=2)]


@pytest.mark.parametrize("shape", FLOOR_SHAPES, ids=lambda s: s.name)
def test_the_floors_gemms_are_torchs_flop_count_less_the_depthwise_conv(shape):
    x, weights, grad = bench_mbconv.make_inputs(shape, "cpu", torch.float32)
    eager = bench_mbconv.versions(shape, x, weights, grad, backward=False, with_compile=False)["eager"]
    with FlopCounterMode(display=False) as counter:
        eager()
    rows_out = bench_mbconv.pixels(shape)[1]
    depthwise = 2 * rows_out * shape.expansion * shape.c * shape.kernel ** 2  # one MAC a tap a pixel a channel
    assert bench_mbconv.gemm_flops(shape, "forward") == counter.get_total_flops() - depthwise
    # backward: each GEMM's input gradient and weight gradient, each as large as the GEMM
    assert bench_mbconv.gemm_flops(shape, "forward+backward") == 3 * bench_mbconv.gemm_flops(shape, "forward")


def test_the_floors_traffic_is_the_depthwise_convs_tensors():
    plain, strided = FLOOR_SHAPES[0], FLOOR_SHAPES[1]
    hidden = 2 * 6 * 6 * 48 * 4  # N H W E float32 bytes: the conv's input and output at stride 1
    assert bench_mbconv.depthwise_bytes(plain, "forward", 4) == 2 * hidden
    assert bench_mbconv.depthwise_bytes(plain, "forward+backward", 4) == 5 * hidden
    hidden_in, hidden_out = 2 * 7 * 7 * 48 * 4, 2 * 4 * 4 * 48 * 4  # 7x7 in, 4x4 out
    assert bench_mbconv.depthwise_bytes(strided, "forward", 4) == hidden_in + hidden_out
    assert bench_mbconv.depthwise_bytes(strided, "forward+backward", 4) == 3 * hidden_in + 2 * hidden_out
    flops, traffic = bench_mbconv.gemm_flops(plain, "forward"), bench_mbconv.depthwise_bytes(plain, "forward", 4)
    assert bench_mbconv.floor_ms(plain, "forward", 4, 1e9, 2e9) == pytest.approx(1e3 * (flops / 1e9 + traffic / 2e9))


@pytest.mark.skipif(not _extension.has_kernel("sampled_mbconv_forward", "cpu"), reason="the extension is not loaded")
def test_a_run_reports_the_floor_beside_the_times():
    args = argparse.Namespace(device="cpu", dtype="float32", repeats=1, no_compile=True, json=True, floor=True)
    result = bench_mbconv.run(args, [FLOOR_SHAPES[0]], modes=("forward",), copy_numel=1 << 20)
    assert result["gemm_flops_per_s"] > 0 and result["floor_copy_bandwidth_bytes_per_s"] > 0
    (row,) = result["rows"]
    assert row["floor_ms"] == pytest.approx(bench_mbconv.floor_ms(
        FLOOR_SHAPES[0], "forward", 4, result["gemm_flops_per_s"], result["floor_copy_bandwidth_bytes_per_s"]))
    args.floor = False
    assert "floor_ms" not in bench_mbconv.run(args, [FLOOR_SHAPES[0]], modes=("forward",))["rows"][0]


def test_the_cpu_runs_restart_with_the_allocator_held_steady(tmp_path):
    from timing import STEADY_MALLOC

    def env(**kw):
        return bench_mbconv.environment(argparse.Namespace(**{"cpu_isa": None, "device": "cpu",
                                                              "adaptive_malloc": False, **kw}))
    assert env() == STEADY_MALLOC
    assert env(cpu_isa="avx2") == {**bench_mbconv.isa_env("avx2"), **STEADY_MALLOC}
    assert env(adaptive_malloc=True) == {} and env(device="cuda", cpu_isa="avx2") == bench_mbconv.isa_env("avx2")
    script = tmp_path / "restart.py"  # the restarted process sees the variables, and runs once more only
    script.write_text(f"import os, sys\nsys.path.insert(0, {str(REPO / 'benchmarks')!r})\nimport timing\n"
                      "print('start', flush=True)\ntiming.restart_with(timing.STEADY_MALLOC)\n"
                      "print(os.environ['MALLOC_MMAP_MAX_'], os.environ['MALLOC_TRIM_THRESHOLD_'])\n")
    clean = {k: v for k, v in os.environ.items() if k not in STEADY_MALLOC}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=clean, check=True).stdout
    assert out.split("\n") == ["start", "start", f"0 {1 << 40}", ""]


def test_each_instruction_set_compiles_into_an_inductor_cache_of_its_own(monkeypatch):
    # inductor's cache key leaves ATEN_CPU_CAPABILITY out: an AVX2 run's graphs served to an
    # AVX-512 run corrupted its heap (timing.isa_env)
    from timing import ISA_ENV, isa_env
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    dirs = {isa: isa_env(isa)["TORCHINDUCTOR_CACHE_DIR"] for isa in ISA_ENV}
    assert len(set(dirs.values())) == len(ISA_ENV)
    for isa, cache in dirs.items():
        assert isa_env(isa) == {**ISA_ENV[isa], "TORCHINDUCTOR_CACHE_DIR": cache}
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", cache)  # as restart_with leaves it: no second restart
        assert isa_env(isa)["TORCHINDUCTOR_CACHE_DIR"] == cache
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/mine")  # a user's own cache keeps its place
    assert isa_env("avx2")["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/mine-cpu-isa-avx2"


def test_the_search_step_times_with_a_steady_allocator_and_measures_memory_without(monkeypatch):
    import bench_search_step
    from timing import STEADY_MALLOC, isa_env

    def env(**kw):
        return bench_search_step.environment(argparse.Namespace(
            **{"device": "cpu", "adaptive_malloc": False, "peak_memory_of": None, "cpu_isa": None, **kw}))
    assert env() == STEADY_MALLOC and env(device="cuda") == {} and env(adaptive_malloc=True) == {}
    assert env(cpu_isa="avx2") == {**isa_env("avx2"), **STEADY_MALLOC}
    assert env(peak_memory_of=["alpha step", "fused"]) == {}
    assert env(peak_memory_of=["alpha step", "fused"], cpu_isa="avx2") == {}  # inherited from the parent
    seen = []

    def fake_run(command, env, **kw):
        seen.append(env)
        return subprocess.CompletedProcess(command, 0, stdout='{"peak MiB": 1.0}\n', stderr="")
    monkeypatch.setattr(bench_search_step.subprocess, "run", fake_run)
    for k, v in STEADY_MALLOC.items():
        monkeypatch.setenv(k, v)
    rows = bench_search_step.measure_memory("ssdlite", "cpu")
    assert len(rows) == len(bench_search_step.MEMORY_RUNS) and all(r["peak MiB"] == 1.0 for r in rows)
    assert all(not set(STEADY_MALLOC) & set(env) for env in seen)


def test_dispatched_counts_ops_that_touch_data_once_each():
    import bench_host_overhead

    a, b = torch.ones(4, 4), torch.ones(4, 4)

    def call():
        a.view(16).add_(1)  # a view (not counted), then one op
        torch.mm(a.t(), b)  # one op: the transpose is a view, and the op's inner ops are not counted
        torch.zeros(3)      # an allocation and a fill: one launch on a GPU

    counts = bench_host_overhead.op_counts(call)
    assert counts["dispatched"] == 3
    assert counts["aten_ops"] > counts["dispatched"]


@pytest.mark.skipif(not _extension.has_kernel("mixture_mbconv_forward", "cpu"), reason="the extension is not loaded")
def test_host_overhead_times_both_ops_fused_and_eager():
    import bench_host_overhead

    result = bench_host_overhead.measure("cpu", repeats=2)
    rows = {row["version"]: row for row in result["calls"]}
    sampled = {f"{name} {mode}" for name in ("fused", "eager") for mode in ("forward", "forward+backward")}
    assert set(rows) == sampled | {"mixture fused forward+backward", "mixture eager forward+backward"}
    assert all(row["us"] > 0 and 0 < row["dispatched"] < row["aten_ops"] for row in rows.values())
    # each version runs the op it names: the fused mixture is one op per layer, the eager one an op per candidate
    from torch.profiler import profile
    x, weights, bns, grad = bench_host_overhead.make_block("cpu")
    calls = bench_host_overhead.versions(x, weights, bns, grad)
    for name, op in (("mixture fused forward+backward", "fna_ext::mixture_mbconv_forward"),
                     ("fused forward+backward", "fna_ext::sampled_mbconv_forward")):
        with profile() as prof:
            calls[name]()
        assert op in {e.name for e in prof.events()}, name
        with profile() as prof:
            calls[name.replace("fused", "eager")]()
        assert op not in {e.name for e in prof.events()}, name


def test_loader_gap_cycles_in_memory_and_with_the_loader():
    pytest.importorskip("pycocotools", reason="the search reads its COCO-format data with pycocotools")
    import bench_loader_gap
    from gpu_bench import TINY_SEARCH_OVERRIDES

    for data in ("memory", "loader"):
        result = bench_loader_gap.cycles_of(data, "ssdlite", 1, TINY_SEARCH_OVERRIDES)
        assert result["data"] == data and result["images/s"] > 0
        # batches held in memory never touch a DataLoader; the tiny config loads in this process
        assert (result["wait ms per cycle"] == 0) == (data == "memory")


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "error: --rounds and --cycles must be at least 1"),
    (["--task", "nope"], "error: --task nope:"),
    (["--set", "train.batch_size=zero"], "error: "),
])
def test_loader_gap_refuses_bad_arguments_in_one_line(argv, message):
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_loader_gap.py"), *argv],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith(message) and run.stderr.count("\n") == 1, run.stderr


def test_host_gemm_compares_versions_that_compute_the_same_product():
    import bench_host_gemm

    shapes = [bench_mbconv.Shape("plain", 2, 8, 6, 3, 6), bench_mbconv.Shape("stride 2", 2, 8, 7, 5, 6, stride=2)]
    assert bench_host_gemm.products(shapes[1]) == [("ga2", 2 * 16, 8, 48), ("grad_x", 2 * 49, 48, 8)]
    for name, rows, k, n in bench_host_gemm.products(shapes[0]):
        for with_addend in (False, True):
            fns = bench_host_gemm.versions(rows, k, n, with_addend)
            first, second = (fn().clone() for fn in fns.values())
            torch.testing.assert_close(first, second)
    assert bench_host_gemm.weight_gradients(shapes[1]) == [("grad_wp", 2 * 16, 8, 48), ("grad_we", 2 * 49, 48, 8)]
    for name, rows, m, n in bench_host_gemm.weight_gradients(shapes[0]):
        fns = bench_host_gemm.reduction_versions(rows, m, n)
        assert list(fns) == ["short_rows", "long_rows"]
        first, second = (fn().clone() for fn in fns.values())
        assert first.shape == (m, n)
        torch.testing.assert_close(first, second)
    result = bench_host_gemm.run(repeats=1, shapes=shapes)
    products = [(row["shape"], row["product"], row.get("addend")) for row in result["rows"]]
    assert products == [(s.name, p, a) for s in shapes for p, a in (("ga2", False), ("grad_x", False), ("grad_x", True),
                                                                     ("grad_wp", None), ("grad_we", None))]
    assert all(len(row["ms"]) == 2 and all(ms > 0 for ms in row["ms"].values()) for row in result["rows"])
    row = {"shape": "s", "product": "ga2", "rows": 64, "k": 8, "n": 48, "addend": False,
           "ms": {"beta0": 2.0, "zero_beta1": 3.0}}
    line = bench_host_gemm.format_row(row)
    assert "64 x 8 -> 48" in line and "beta0    2.00 ms" in line and line.endswith("zero_beta1    3.00 ms  (1.50x)")
    row = {"shape": "s", "product": "grad_we", "rows": 98, "m": 48, "n": 8, "ms": {"short_rows": 4.0, "long_rows": 5.0}}
    line = bench_host_gemm.format_row(row)
    assert "48 x 8 over 98" in line and line.endswith("long_rows    5.00 ms  (1.25x)")


def test_host_gemm_refuses_a_bad_repeat_count_in_one_line():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_host_gemm.py"), "--repeats", "0"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr == "error: --repeats 0: give at least 1\n", run.stderr


def test_interleaved_medians_runs_the_untimed_step_before_every_call():
    from timing import interleaved_medians

    calls = []
    medians = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3,
                                  device="cpu", warmup=1, before_each=lambda: calls.append("-"))
    assert calls == ["a", "b"] + ["-", "a", "-", "b"] * 3
    assert set(medians) == {"a", "b"} and all(s >= 0 for s in medians.values())
