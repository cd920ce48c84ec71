"""The benchmarks of benchmarks/gpu_check.py, in one process and in order of what the targets need:

1. bench_mbconv at its search shapes, forward+backward, fused vs eager vs torch.compile, per dtype;
2. the copy bandwidth of the device and the fused op at the bandwidth-bound shape (forward and
   forward+backward), as a fraction of it, per dtype;
3. a profile of the fused op (torch.profiler, float32, forward+backward) at the bandwidth shape and
   the first search shape: the ops and kernels that take its time, and how many kernels it launches,
   so that a GPU session that finds a target missed also finds where the time went;
4. the fused op with each set of CUDA depthwise kernels (FNA_EXT_CUDA_DEPTHWISE: the tiled ones,
   the default since 2026-12-04, written without a GPU, and the simple ones they replace):
   forward and forward+backward times, and how far apart the output and gradients are;
5. bench_search_step in memory: whole search cycles, fused vs reference.

Every part is measured by the benchmark's own functions (interleaved medians, CUDA events on
CUDA). The JSON is rewritten after each part, so a run killed at its time limit keeps the parts it
finished. ``--tiny`` is the CPU dry run: 2 images at about a tenth of the size, one repeat, no
torch.compile (it would compile for longer than everything else takes), float32 only (the CPU
kernels have no 16-bit versions) and a search step on 2 images of 64x64.

    python benchmarks/gpu_bench.py [--device cuda|cpu] [--tiny] [--repeats N] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# the checkout's fna_ext (with the _C built in place next to it), not an installed copy
sys.path[:0] = [str(HERE), str(HERE.parent)]
import bench_mbconv  # noqa: E402
from gpu_parity import tiny, write_json  # noqa: E402
from gpu_check import chosen_names  # noqa: E402  (the check's own option rule; gpu_check needs only the stdlib)

DTYPES = ("float32", "bfloat16")
TINY_COPY_NUMEL = 1 << 20
TINY_SEARCH_OVERRIDES = ["train.batch_size=2", "search.alpha_batch_size=2", "data.input_size=[64,64]",
                         "train.num_workers=0"]


def mbconv_args(device: str, dtype: str, repeats: int, with_compile: bool, floor: bool = False) -> argparse.Namespace:
    """bench_mbconv's command line, as its run() reads it."""
    return argparse.Namespace(device=device, dtype=dtype, repeats=repeats, no_compile=not with_compile, json=False,
                              floor=floor)


def search_shapes_part(device: str, dtype: str, repeats: int, tiny_run: bool) -> dict:
    shapes = [tiny(s) for s in bench_mbconv.SHAPES] if tiny_run else bench_mbconv.SHAPES
    # the targets are forward+backward; compiling the forward alone too would double the compile time.
    # The floor (a large GEMM's rate, the copy bandwidth) says what 3x eager asks of this device.
    return bench_mbconv.run(mbconv_args(device, dtype, repeats, with_compile=not tiny_run, floor=True), shapes,
                            modes=("forward+backward",),
                            copy_numel=TINY_COPY_NUMEL if tiny_run else bench_mbconv.COPY_NUMEL)


def bandwidth_part(device: str, dtype: str, repeats: int, tiny_run: bool) -> dict:
    shape = tiny(bench_mbconv.BANDWIDTH_SHAPE) if tiny_run else bench_mbconv.BANDWIDTH_SHAPE
    # compile plays no part in the bandwidth figure
    return bench_mbconv.run(mbconv_args(device, dtype, repeats, with_compile=False), [shape],
                            copy_numel=TINY_COPY_NUMEL if tiny_run else bench_mbconv.COPY_NUMEL)


PROFILE_ITERATIONS = 3
PROFILE_ROWS = 15


def _profile_row(event, iterations: int) -> dict:
    return {"name": event.key, "calls_per_iteration": event.count / iterations,
            "self_device_ms_per_iteration": getattr(event, "self_device_time_total", 0.0) / 1e3 / iterations,
            "self_cpu_ms_per_iteration": event.self_cpu_time_total / 1e3 / iterations}


def _counts(events) -> dict:
    """Per iteration: kernels launched and time on the device (CUDA), and ATen ops called (each a
    kernel launch on a GPU unless it only makes a view or an empty tensor)."""
    from torch.autograd import DeviceType

    on_device = [e for e in events if e.device_type == DeviceType.CUDA]
    on_host = [e for e in events if e.device_type == DeviceType.CPU]
    return {"kernels_per_iteration": sum(e.count for e in on_device) / PROFILE_ITERATIONS,
            "host_ms_per_iteration": sum(e.self_cpu_time_total for e in on_host) / 1e3 / PROFILE_ITERATIONS,
            "device_ms_per_iteration": sum(e.self_device_time_total for e in on_device) / 1e3 / PROFILE_ITERATIONS,
            "aten_ops_per_iteration": sum(e.count for e in events if e.key.startswith("aten::")) / PROFILE_ITERATIONS}


def profile_shape(shape, device: str) -> dict:
    """torch.profiler over PROFILE_ITERATIONS forward+backward passes (after one warm-up): the
    fused op's top rows, and the counts of both versions."""
    x, weights, grad = bench_mbconv.make_inputs(shape, device, torch.float32)
    steps = bench_mbconv.versions(shape, x, weights, grad, backward=True, with_compile=False)
    fused, eager = (bench_mbconv.profiled(steps[name], device, PROFILE_ITERATIONS) for name in ("fused", "eager"))
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    top = sorted(fused, key=lambda e: getattr(e, key, 0.0), reverse=True)[:PROFILE_ROWS]
    counts = {"fused": _counts(fused), "eager": _counts(eager)}
    print(f"-- {shape.name}: top {PROFILE_ROWS} by {key}, {PROFILE_ITERATIONS} iterations; per iteration "
          + "; ".join(f"{name}: {c['kernels_per_iteration']:.0f} kernels, {c['aten_ops_per_iteration']:.0f} ATen ops"
                      for name, c in counts.items()), flush=True)
    print(fused.table(sort_by=key, row_limit=PROFILE_ROWS), flush=True)
    record = {"iterations": PROFILE_ITERATIONS, "sorted_by": key, **counts["fused"], "eager": counts["eager"],
              "rows": [_profile_row(e, PROFILE_ITERATIONS) for e in top]}
    if device == "cuda":
        # At the search shapes a GPU waits on the host (the first run: 0.56 ms on the device in a
        # 2.6 ms step), so where the host's time goes is the other half of the picture.
        host = sorted(fused, key=lambda e: e.self_cpu_time_total, reverse=True)[:PROFILE_ROWS]
        print(f"-- {shape.name}: top {PROFILE_ROWS} by self_cpu_time_total", flush=True)
        print(fused.table(sort_by="self_cpu_time_total", row_limit=PROFILE_ROWS), flush=True)
        record["host_rows"] = [_profile_row(e, PROFILE_ITERATIONS) for e in host]
    return record


def profile_part(device: str, tiny_run: bool) -> dict:
    shapes = [bench_mbconv.BANDWIDTH_SHAPE, bench_mbconv.SHAPES[0]]
    return {"shapes": {s.name: profile_shape(s, device) for s in (map(tiny, shapes) if tiny_run else shapes)}}


def host_overhead_part(device: str, tiny_run: bool) -> dict:
    """bench_host_overhead: a block too small for its kernels to matter, fused and eager."""
    import bench_host_overhead

    return bench_host_overhead.measure(device, repeats=5 if tiny_run else 100)


DEPTHWISE_ENV = "FNA_EXT_CUDA_DEPTHWISE"
DEPTHWISE_VARIANTS = ("simple", "tiled")


def _relative_difference(a: list, b: list) -> float:
    return max(((x.float() - y.float()).abs().max() / y.float().abs().max().clamp_min(1e-30)).item()
               for x, y in zip(a, b))


def depthwise_variants_part(device: str, repeats: int) -> dict:
    """The fused op with each CUDA depthwise kernel, forward and forward+backward: interleaved
    times, and how far apart the output and the gradients of x and the weights are."""
    if device != "cuda":
        return {"status": "skipped", "reason": "the depthwise kernel variants are CUDA's"}
    from fna_ext import ops
    from timing import interleaved_medians

    rows = []
    previous = os.environ.get(DEPTHWISE_ENV)
    try:
        for shape in (bench_mbconv.BANDWIDTH_SHAPE, bench_mbconv.SHAPES[0], bench_mbconv.SHAPES[3]):
            x, weights, grad = bench_mbconv.make_inputs(shape, device, torch.float32)
            kwargs = bench_mbconv.block_kwargs(shape, device, torch.float32)

            def results(variant):
                os.environ[DEPTHWISE_ENV] = variant  # read by every launch
                with ops.fused(True):
                    y = ops.sampled_mbconv(x, *weights, **kwargs)
                return [y, *torch.autograd.grad(y, [x, *weights], grad)]

            found = {v: results(v) for v in DEPTHWISE_VARIANTS}
            difference = _relative_difference(found["tiled"], found["simple"])
            del found
            for mode in ("forward", "forward+backward"):
                steps = bench_mbconv.versions(shape, x, weights, grad, backward=mode != "forward", with_compile=False)

                def run(variant, step=steps["fused"]):
                    os.environ[DEPTHWISE_ENV] = variant
                    return step()

                ms = {v: t * 1e3 for v, t in interleaved_medians({v: (lambda v=v: run(v)) for v in DEPTHWISE_VARIANTS},
                                                                repeats, device).items()}
                rows.append({"shape": shape.name, "mode": mode, "ms": ms, "tiled_speedup": ms["simple"] / ms["tiled"],
                             "max_relative_difference": difference})
                print(f"{shape.name:<30} {mode:<17} simple {ms['simple']:8.3f} ms  tiled {ms['tiled']:8.3f} ms  "
                      f"({ms['simple'] / ms['tiled']:.2f}x); output and gradients {difference:.1e} apart", flush=True)
            x.grad = None
            for w in weights:
                w.grad = None
    finally:
        if previous is None:
            os.environ.pop(DEPTHWISE_ENV, None)
        else:
            os.environ[DEPTHWISE_ENV] = previous
    return {"variants": rows}


def search_step_part(device: str, repeats: int, tiny_run: bool) -> dict:
    overrides = TINY_SEARCH_OVERRIDES if tiny_run else []
    try:
        import bench_search_step
        return bench_search_step.measure("ssdlite", device, repeats, in_memory=True, overrides=overrides,
                                         warmup=1 if tiny_run else 2)
    except ModuleNotFoundError as err:  # the data pipeline's dependencies (pycocotools, ...)
        return {"status": "skipped", "reason": f"bench_search_step needs {err.name}, which is not installed"}


def parts(device: str, repeats: int, tiny_run: bool) -> list[tuple[str, object]]:
    """(name, how to measure it, or why it is skipped) in the order they run."""
    found = []
    for dtype in DTYPES:
        if tiny_run and dtype != "float32":
            reason = f"no CPU kernel for {dtype} (the CPU MBConv kernels are float32 and float64)"
            found += [(f"mbconv {dtype}", reason), (f"bandwidth {dtype}", reason)]
            continue
        found.append((f"mbconv {dtype}", lambda d=dtype: search_shapes_part(device, d, repeats, tiny_run)))
        found.append((f"bandwidth {dtype}", lambda d=dtype: bandwidth_part(device, d, repeats, tiny_run)))
        if dtype == "float32":  # the most telling, right after the float32 figures (a stage cut
            # short at its time limit loses the parts after them)
            found.append(("profile", lambda: profile_part(device, tiny_run)))
            found.append(("host overhead", lambda: host_overhead_part(device, tiny_run)))
            found.append(("depthwise variants", lambda: depthwise_variants_part(device, repeats)))
            # a target of its own, before the 16-bit parts: the first GPU run's bench stage ran
            # to its limit just after it, and the search step now warms every candidate first
            found.append(("search step", lambda: search_step_part(device, max(1, repeats // 2), tiny_run)))
    return found


def measure_part(how) -> dict:
    if isinstance(how, str):
        return {"status": "skipped", "reason": how}
    try:
        result = how()
    except Exception as err:  # one broken benchmark must not cost the others
        traceback.print_exc()
        return {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    return result if "status" in result else {"status": "passed", **result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the CPU dry run's sizes (see above)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per figure (default 10, tiny 1)")
    parser.add_argument("--out", type=Path, help="write the parts as JSON here, after each part")
    parser.add_argument("--parts", help="comma-separated names of the parts to run (default: all)")
    parser.add_argument("--list-parts", action="store_true", help="print the parts' names, one a line, and exit")
    args = parser.parse_args(argv)
    if args.list_parts:  # the same names on every device and size
        print("\n".join(name for name, _ in parts("cpu", 1, tiny_run=False)))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "error: --device cuda: no CUDA device is visible; run with --device cpu\n")
    repeats = args.repeats or (1 if args.tiny else 10)
    result = {"device": args.device, "tiny": args.tiny, "repeats": repeats, "compile": not args.tiny,
              "finished": False, "parts": {}}
    chosen = parts(args.device, repeats, args.tiny)
    if args.parts is not None:
        wanted = chosen_names(parser, "--parts", args.parts, [name for name, _ in chosen], "part")
        chosen = [(name, how) for name, how in chosen if name in wanted]
    for name, how in chosen:
        print(f"== {name}", flush=True)
        result["parts"][name] = measure_part(how)
        if args.out:
            write_json(args.out, result)
    result["finished"] = True
    if args.out:
        write_json(args.out, result)
    return 1 if any(p["status"] == "failed" for p in result["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
