"""The sampled MBConv three ways, forward and forward+backward, at the shapes of the searches:

- fused: ``fna_ext.ops.sampled_mbconv`` on the C++/CUDA kernels (csrc/mbconv);
- eager: the pure-PyTorch reference with the same slicing (``sampled_mbconv_reference``);
- compile: ``torch.compile`` of the eager version.

Each row is the median of interleaved runs (benchmarks/timing.py), on channels-last
activations with a random upstream gradient, as in training. On CUDA a last row measures a
bandwidth-bound shape against the device-to-device copy bandwidth (measured once per run, in the
same process), counting the issue's minimum traffic of the fused design (29x the input forward,
55x backward, at e6 and stride 1). This implementation moves more than that (about 48x forward:
it reads h1 again for its statistics and materialises BN2's output for the GEMM), so the figure
is a lower bound of the bandwidth it uses.

    python benchmarks/bench_mbconv.py [--device cpu|cuda] [--dtype float32|bfloat16] [--json] [--profile]

``--profile`` prints, in place of the timings, the largest ops by self time inside the fused
forward+backward at each shape (torch.profiler): the GEMMs against the depthwise and BN passes.

On the CPU it prints which copy of the kernels ran (AVX-512, AVX2 or baseline x86-64).
``--cpu-isa avx2`` times an AVX2 machine on an AVX-512 one: it restarts the benchmark with
fna_ext's AVX2 copy (``FNA_EXT_CPU_ISA``) and with eager PyTorch, ``torch.compile`` and MKL's
GEMMs held to AVX2 too (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``,
``MKL_ENABLE_INSTRUCTIONS``); setting only ``FNA_EXT_CPU_ISA`` would compare fna_ext's AVX2 code
with PyTorch's AVX-512 code. ``torch.compile`` then caches into an inductor directory of that
instruction set's own (``timing.isa_env``): inductor's cache key leaves the capability out, and an
AVX-512 run served the AVX2 run's graphs corrupted its heap.

On the CPU it also restarts with glibc's allocator held steady (``MALLOC_MMAP_MAX_=0``,
``MALLOC_TRIM_THRESHOLD_``: freed memory stays mapped). Left adaptive, glibc unmaps large freed
blocks and faults them in again, so eager PyTorch, which allocates every intermediate, timed 37
to 88 ms at RetinaNet k3 from one process to the next; held steady, 37 to 45. The fused ops
reuse their own host block cache either way. ``--adaptive-malloc`` leaves glibc as it is.

Each row also gives a floor: the least time any implementation of the block could take on this
machine, from two rates measured in the same process: the block's six GEMMs (and its SE's) at the
rate of a large square GEMM, plus the depthwise conv's own traffic (its input and output forward;
its input, output gradient and input gradient backward) at the copy bandwidth. Everything else
(BN, activations, the SE's passes) is left out, so the true floor is higher. Against it, "2x
eager" reads as what is possible here: where twice as fast as eager is below the floor, no kernel
reaches it. ``--no-floor`` skips the two measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import (ISA_ENV, STEADY_MALLOC, hardware, interleaved_medians, isa_env, isa_record, malloc_env,  # noqa: E402
                    restart_with, synchronize)

from fna_ext import ops  # noqa: E402
from fna_ext.ops.sampled_mbconv import SqueezeExcite  # noqa: E402


@dataclass(frozen=True)
class Shape:
    name: str
    n: int
    c: int
    size: int
    kernel: int
    expansion: int
    stride: int = 1
    bandwidth_bound: bool = False  # its rows also report the fraction of the copy bandwidth
    dilation: int = 1  # DeepLab's output stride 16 turns a stage's stride into dilation
    activation: str = "relu6"  # the NAS seeds' blocks: hard-swish ...
    se_channels: int = 0  # ... and a squeeze-and-excitation of this many channels (hard-sigmoid gate)


SHAPES = [
    Shape("SSDLite 20x20 C=64 k7 e6", 16, 64, 20, 7, 6),
    Shape("SSDLite 80x80 C=24 k5 e3", 16, 24, 80, 5, 3),
    Shape("RetinaNet 40x40 C=32 k3 e6", 16, 32, 40, 3, 6),
    Shape("RetinaNet 40x40 C=32 k7 e6 s2", 16, 32, 40, 7, 6, stride=2),
    # the segmentation search: MobileNetV2's 160-channel stage at output stride 16 of a 513 crop
    Shape("DeepLab 33x33 C=160 k5 e6 dilation 2", 8, 160, 33, 5, 6, dilation=2),
    # a NAS seed: MobileNetV3-Large's 112 -> 160 block (672 hidden, SE of 168) at SSDLite's 1/16
    Shape("MobileNetV3 20x20 C=112 k5 e6 SE hswish", 16, 112, 20, 5, 6, activation="hardswish",
          se_channels=168),
]
BANDWIDTH_SHAPE = Shape("bandwidth 56x56 C=24 k7 e6", 256, 24, 56, 7, 6, bandwidth_bound=True)
MODES = ("forward", "forward+backward")
COPY_NUMEL = 1 << 28  # 1 GiB of float32: far beyond any cache
MIN_TRAFFIC = {"forward": 29, "forward+backward": 29 + 55}  # units of the input's size
FLOOR_COPY_NUMEL = {"cpu": 1 << 25, "cuda": COPY_NUMEL}  # 128 MiB: four times a server's L3
FLOOR_GEMM_SIZE = {"cpu": 2048, "cuda": 8192}  # large enough for the BLAS's best rate


def make_inputs(shape: Shape, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(device=device, dtype=dtype)

    e_max = 6 * shape.c
    x = randn(shape.n, shape.c, shape.size, shape.size).to(memory_format=torch.channels_last).requires_grad_()
    weights = [randn(e_max, shape.c, 1, 1, scale=shape.c ** -0.5).requires_grad_(),
               randn(e_max, 1, 7, 7, scale=0.2).requires_grad_(),
               randn(shape.c, e_max, 1, 1, scale=e_max ** -0.5).requires_grad_()]
    out = (shape.size - 1) // shape.stride + 1
    grad = randn(shape.n, shape.c, out, out).to(memory_format=torch.channels_last)
    return x, weights, grad


def block_kwargs(shape: Shape, device, dtype: torch.dtype) -> dict:
    """The op's keyword arguments at ``shape``: kernel, width, stride, and the dilation, activation
    and SE (its weights drawn here, max-size as a super network holds them) where it has them."""
    kwargs = dict(kernel_size=shape.kernel, expand_channels=shape.expansion * shape.c, stride=shape.stride)
    if shape.dilation != 1:
        kwargs["dilation"] = shape.dilation
    if shape.activation != "relu6":
        kwargs["activation"] = shape.activation
    if shape.se_channels:
        g = torch.Generator().manual_seed(1)
        e_max, s = 6 * shape.c, shape.se_channels

        def param(*size, scale):
            return (torch.randn(*size, generator=g) * scale).to(device=device, dtype=dtype).requires_grad_()
        kwargs["se"] = SqueezeExcite(param(s, e_max, 1, 1, scale=e_max ** -0.5), param(s, scale=0.1),
                                     param(e_max, s, 1, 1, scale=s ** -0.5), param(e_max, scale=0.1), channels=s,
                                     activation="relu", gate="hardsigmoid")
    return kwargs


def versions(shape: Shape, x, weights, grad, backward: bool, with_compile: bool) -> dict:
    kwargs = block_kwargs(shape, x.device, x.dtype)

    def fused():
        with ops.fused(True):
            return ops.sampled_mbconv(x, *weights, **kwargs)

    def eager():
        return ops.sampled_mbconv_reference(x, *weights, **kwargs)

    fns = {"fused": fused, "eager": eager}
    if with_compile:
        torch._dynamo.reset()  # each shape compiled for itself, as a search compiles each layer
        compiled = torch.compile(ops.sampled_mbconv_reference, dynamic=False)
        fns["compile"] = lambda: compiled(x, *weights, **kwargs)
    if not backward:
        return {name: (lambda fn=fn: _no_grad(fn)) for name, fn in fns.items()}
    return {name: (lambda fn=fn: fn().backward(grad)) for name, fn in fns.items()}


def _no_grad(fn):
    with torch.no_grad():
        return fn()


def check_parity(shape: Shape, x, weights, grad) -> float:
    """Largest difference between the fused and eager outputs, relative to the output's scale."""
    fns = versions(shape, x, weights, grad, backward=False, with_compile=False)
    a, b = fns["fused"]().float(), fns["eager"]().float()
    return ((a - b).abs().max() / b.abs().max()).item()


def copy_bandwidth(device: str, numel: int = COPY_NUMEL) -> float:
    """Bytes per second of a device-to-device copy (read plus write) of ``numel`` float32 values."""
    src = torch.empty(numel, device=device)
    dst = torch.empty_like(src)
    seconds = interleaved_medians({"copy": lambda: dst.copy_(src)}, 10, device)["copy"]
    return 2 * src.numel() * src.element_size() / seconds


def gemm_rate(device: str, dtype: torch.dtype, size: int) -> float:
    """FLOP/s of a square size^3 GEMM: the best rate this device's BLAS reaches here."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    out = torch.empty_like(a)
    seconds = interleaved_medians({"gemm": lambda: torch.mm(a, b, out=out)}, 5, device)["gemm"]
    return 2 * size ** 3 / seconds


def pixels(shape: Shape) -> tuple[int, int]:
    """Rows (pixels of the batch) into the depthwise conv and out of it."""
    out = (shape.size - 1) // shape.stride + 1
    return shape.n * shape.size ** 2, shape.n * out ** 2


def gemm_flops(shape: Shape, mode: str) -> int:
    """FLOPs of the block's GEMMs: the expansion and the projection (and the SE's two per image),
    once forward; forward+backward adds the input and the weight gradient of each."""
    rows_in, rows_out = pixels(shape)
    e = shape.expansion * shape.c
    once = 2 * rows_in * shape.c * e + 2 * rows_out * e * shape.c + 2 * 2 * shape.n * e * shape.se_channels
    return once if mode == "forward" else 3 * once


def depthwise_bytes(shape: Shape, mode: str, element_size: int) -> int:
    """The depthwise conv's least traffic: read its input and write its output; backward, read its
    input and output gradient and write its input gradient."""
    rows_in, rows_out = pixels(shape)
    hidden_in, hidden_out = (rows * shape.expansion * shape.c * element_size for rows in (rows_in, rows_out))
    forward = hidden_in + hidden_out
    return forward if mode == "forward" else forward + 2 * hidden_in + hidden_out


def floor_ms(shape: Shape, mode: str, element_size: int, flops_per_s: float, bytes_per_s: float) -> float:
    """The least time of the block on a machine of these two rates (see the module's text)."""
    return 1e3 * (gemm_flops(shape, mode) / flops_per_s + depthwise_bytes(shape, mode, element_size) / bytes_per_s)


def run(args, shapes: list[Shape] | None = None, modes=MODES, copy_numel: int = COPY_NUMEL) -> dict:
    """The rows of ``shapes`` (default: SHAPES, plus BANDWIDTH_SHAPE on CUDA) in ``modes``."""
    if args.device == "cpu":
        # compile in this process: inductor's background compile workers would share the cores
        # with the timed runs (on CUDA the timed work is on the GPU and they only save time)
        torch._inductor.config.compile_threads = 1
    dtype = getattr(torch, args.dtype)
    if shapes is None:
        shapes = SHAPES + ([BANDWIDTH_SHAPE] if args.device == "cuda" else [])
    with_floor = getattr(args, "floor", False)  # the command line's default; other callers ask
    copy_bytes_per_s = (copy_bandwidth(args.device, copy_numel) if any(s.bandwidth_bound for s in shapes)
                        else None)
    gemm_flops_per_s = floor_bytes_per_s = None
    if with_floor:
        gemm_flops_per_s = gemm_rate(args.device, dtype, FLOOR_GEMM_SIZE[args.device])
        floor_numel = min(copy_numel, FLOOR_COPY_NUMEL[args.device])
        floor_bytes_per_s = copy_bytes_per_s or copy_bandwidth(args.device, floor_numel)
    isa = torch.ops.fna_ext.cpu_isa() if args.device == "cpu" else None
    if isa is not None:  # FNA_EXT_CPU_ISA=avx2 (or baseline) times a lower copy on the same machine
        print(f"CPU kernels: {isa} (--cpu-isa avx512|avx2|baseline chooses, for PyTorch too)",
              file=sys.stderr if args.json else sys.stdout, flush=True)
    rows = []
    for shape in shapes:
        x, weights, grad = make_inputs(shape, args.device, dtype)
        assert ops.takes_fused_path(x, shape.kernel), "no fused kernel for this device and dtype"
        parity = check_parity(shape, x, weights, grad)
        for mode in modes:
            fns = versions(shape, x, weights, grad, mode != "forward", not args.no_compile)
            ms = {k: v * 1e3 for k, v in interleaved_medians(fns, args.repeats, args.device).items()}
            row = {"shape": asdict(shape), "mode": mode, "ms": ms, "parity": parity,
                   "speedup_vs_eager": ms["eager"] / ms["fused"]}
            if "compile" in ms:
                row["speedup_vs_compile"] = ms["compile"] / ms["fused"]
            if with_floor:
                row["floor_ms"] = floor_ms(shape, mode, x.element_size(), gemm_flops_per_s, floor_bytes_per_s)
            if shape.bandwidth_bound:
                bytes_moved = MIN_TRAFFIC[mode] * x.numel() * x.element_size()
                row["fraction_of_copy_bandwidth"] = bytes_moved / (ms["fused"] / 1e3) / copy_bytes_per_s
            rows.append(row)
            print(format_row(row), file=sys.stderr if args.json else sys.stdout, flush=True)
        del x, weights, grad
        synchronize(args.device)
    return {"date": date.today().isoformat(), "device": args.device, "hardware": hardware(args.device),
            **isa_record(args.device), "malloc": {k: os.environ.get(k) for k in STEADY_MALLOC}, "dtype": args.dtype,
            "torch": torch.__version__, "repeats": args.repeats,
            "copy_bandwidth_bytes_per_s": copy_bytes_per_s, "gemm_flops_per_s": gemm_flops_per_s,
            "floor_copy_bandwidth_bytes_per_s": floor_bytes_per_s, "rows": rows}


def profiled(step, device: str, iterations: int, warmup: int = 1):
    """torch.profiler's per-op averages over ``iterations`` calls of ``step`` (after ``warmup``),
    with the device's kernels on CUDA (benchmarks/gpu_bench.py's profile part uses it too)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(iterations):
            step()
        synchronize(device)
    return prof.key_averages()


def profile_fused(shape: Shape, device: str, dtype: torch.dtype, iterations: int = 10, top: int = 8) -> list[dict]:
    """Where the fused op's forward+backward time goes at ``shape``: the ``top`` ops by self
    time (CPU, or the device's on CUDA), in ms per call of the block."""
    x, weights, grad = make_inputs(shape, device, dtype)
    fused = versions(shape, x, weights, grad, backward=True, with_compile=False)["fused"]
    field = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    times = [(event.key, getattr(event, field) / iterations / 1e3, event.count // iterations)
             for event in profiled(fused, device, iterations, warmup=3)]
    total = sum(ms for _, ms, _ in times)
    times.sort(key=lambda t: -t[1])
    return [{"op": op, "ms": ms, "calls": calls, "share": ms / total} for op, ms, calls in times[:top] if ms > 0]


def format_row(row: dict) -> str:
    ms = row["ms"]
    width = max(len(s.name) for s in SHAPES + [BANDWIDTH_SHAPE])
    cells = [f"{row['shape']['name']:<{width}} {row['mode']:<17}", f"fused {ms['fused']:8.2f} ms",
             f"eager {ms['eager']:8.2f} ms ({row['speedup_vs_eager']:.2f}x)"]
    if "compile" in ms:
        cells.append(f"compile {ms['compile']:8.2f} ms ({row['speedup_vs_compile']:.2f}x)")
    if "floor_ms" in row:
        cells.append(f"floor {row['floor_ms']:7.2f} ms (2x eager: {ms['eager'] / 2:.2f})")
    if "fraction_of_copy_bandwidth" in row:
        cells.append(f"{100 * row['fraction_of_copy_bandwidth']:.0f}% of copy bandwidth")
    return "  ".join(cells)


def environment(args) -> dict[str, str]:
    """What the run needs set before the libraries load: the instruction set asked for, and on the
    CPU glibc's allocator held steady (timing.STEADY_MALLOC) unless --adaptive-malloc."""
    return {**(isa_env(args.cpu_isa) if args.cpu_isa else {}), **malloc_env(args.device, args.adaptive_malloc)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile version")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--cpu-isa", choices=sorted(ISA_ENV),
                        help="hold fna_ext, ATen and oneDNN to this instruction set (see above)")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the floor (a large GEMM's rate and the copy bandwidth, measured once)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing, print where the fused forward+backward's time goes at each shape "
                             "(torch.profiler, the largest ops by self time)")
    parser.add_argument("--adaptive-malloc", action="store_true",
                        help="leave glibc's allocator adaptive (see above): eager's time then varies from run to run")
    args = parser.parse_args()
    restart_with(environment(args))
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    if args.profile:
        profiles = {}
        for shape in SHAPES:
            profiles[shape.name] = profile_fused(shape, args.device, getattr(torch, args.dtype))
            if not args.json:
                print(shape.name)
                for row in profiles[shape.name]:
                    print(f"  {row['op']:<45} {row['ms']:8.2f} ms  {100 * row['share']:5.1f}%  ({row['calls']} calls)")
        if args.json:
            print(json.dumps(profiles, indent=1))
        return
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
