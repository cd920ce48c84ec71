"""Interleaved timing shared by the benchmarks: every repeat runs each version once, in turn, so
slow drifts of the machine (clock, other load, memory state) hit all versions alike; the
median of the repeats is reported. On CUDA each call is timed with CUDA events on the current
stream (the GPU's own clock) after the queue has drained, so nothing earlier is counted."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import torch


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(versions: dict[str, Callable[[], object]], repeats: int, device: str,
                        warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each version."""
    for fn in versions.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in versions}
    for _ in range(repeats):
        for name, fn in versions.items():
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
