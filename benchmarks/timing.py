"""Interleaved timing shared by the benchmarks: every repeat runs each version once, in turn, so
slow drifts of the machine (clock, other load, memory state) hit all versions alike; the
median of the repeats is reported. On CUDA each call is timed with CUDA events on the current
stream (the GPU's own clock) after the queue has drained, so nothing earlier is counted."""

from __future__ import annotations

import getpass
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable

import torch


# glibc hands large freed blocks back to the OS and faults them in again at the next allocation,
# with thresholds it adapts as the process runs. Eager PyTorch allocates every intermediate, so on
# the CPU its time depends on that history: 37 to 88 ms from one process to the next at one block
# shape (benchmarks/RESULTS.md, session 18), where the fused ops reuse their host block cache.
# These keep freed memory mapped, for every version alike, so the kernels are what is compared.
STEADY_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


# What each of fna_ext's CPU copies means for ATen's kernels, oneDNN's and MKL's (their own
# variables): a benchmark's --cpu-isa restarts it with all four held to the same instruction set,
# so an AVX-512 machine times an AVX2 one (FNA_EXT_CPU_ISA alone would set fna_ext's AVX2 code
# against PyTorch's AVX-512 code). MKL's GEMMs, which eager PyTorch and fna_ext both call, ran
# AVX-512 under --cpu-isa avx2 before session 22: 329 GFLOP/s at 2048^3 on an Intel Xeon, 215
# with MKL_ENABLE_INSTRUCTIONS=AVX2.
ISA_ENV = {"avx512": {"FNA_EXT_CPU_ISA": "avx512", "ATEN_CPU_CAPABILITY": "avx512",
                      "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
           "avx2": {"FNA_EXT_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                    "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
           "baseline": {"FNA_EXT_CPU_ISA": "baseline", "ATEN_CPU_CAPABILITY": "default",
                        "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}}


def isa_env(isa: str) -> dict[str, str]:
    """ISA_ENV[isa], and an inductor cache of that instruction set's own. torch 2.14's FX graph
    cache leaves ATEN_CPU_CAPABILITY out of its key, so a graph compiled by an --cpu-isa avx2 run
    was served to a later run on AVX-512 (Xeon with AMX, 2026-12-06): bench_mbconv's
    torch.compile backward then corrupted the heap in 12 of 12 runs ("corrupted size vs.
    prev_size"), and in none with a cache of its own. Each instruction set asked for compiles
    into `<cache>-cpu-isa-<isa>`, beside the cache a plain run (or any other program) uses."""
    suffix = f"-cpu-isa-{isa}"
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current and current.endswith(suffix):  # already restarted with it
        return {**ISA_ENV[isa], "TORCHINDUCTOR_CACHE_DIR": current}
    return {**ISA_ENV[isa], "TORCHINDUCTOR_CACHE_DIR": (current or _default_inductor_cache()) + suffix}


def _default_inductor_cache() -> str:
    """Where inductor caches by default: `torchinductor_<user>` in the temporary directory."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (some containers)
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), "torchinductor_" + "".join(c if c.isalnum() else "_" for c in user))


def isa_record(device: str) -> dict[str, str | None]:
    """For a result's JSON: the copy of fna_ext's CPU kernels that ran (None on CUDA), and ATen's,
    oneDNN's and MKL's limits where a variable set them."""
    return {"cpu_isa": torch.ops.fna_ext.cpu_isa() if device == "cpu" else None,
            "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "mkl_enable_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS")}


def malloc_env(device: str, adaptive: bool) -> dict[str, str]:
    """The allocator variables a timing run restarts with: STEADY_MALLOC on the CPU, unless the
    run asks for glibc as it is (--adaptive-malloc); none on CUDA, whose allocator is torch's."""
    return dict(STEADY_MALLOC) if device == "cpu" and not adaptive else {}


def restart_with(env: dict[str, str]) -> None:
    """Runs this script's command line again with ``env`` added (variables the C library and the
    kernels read when they load), unless they are already set; returns only then."""
    if all(os.environ.get(k) == v for k, v in env.items()):
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(versions: dict[str, Callable[[], object]], repeats: int, device: str,
                        warmup: int = 2, before_each: Callable[[], object] | None = None) -> dict[str, float]:
    """Median seconds per call of each version; `before_each` (untimed) runs before every timed
    call, for example to push the operands out of the caches."""
    for fn in versions.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in versions}
    for _ in range(repeats):
        for name, fn in versions.items():
            if before_each is not None:
                before_each()
            times[name].append(seconds_of_one_call(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def seconds_of_one_call(fn: Callable[[], object], device: str) -> float:
    synchronize(device)
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds
    start_time = time.perf_counter()
    fn()
    return time.perf_counter() - start_time


def hardware(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"
