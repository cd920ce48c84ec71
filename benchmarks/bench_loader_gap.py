"""How much the data loader costs a search: the embedded default's fused search cycle
(``weight_steps_per_alpha_step`` weight steps and one alpha step) with its DataLoaders in the
loop, against the same cycle on batches held in memory.

Each measurement runs in a fresh process (workers, caches and the allocator start the same way),
and the two kinds alternate, round after round, so that a VM whose speed drifts by 10-20% over
minutes slows both alike. Per round it prints images/s, and for the loader the time the main
process spent waiting for batches; then the medians and the gap (the issue's target: the loader
cycle within 10% of the in-memory one).

    python benchmarks/bench_loader_gap.py [--rounds 4] [--cycles 12] [--task coco] [--set KEY=VALUE ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import torch.utils.data.dataloader as dataloader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search_step import (build_search, check_search_arguments, keep_in_memory,  # noqa: E402
                               weight_steps_in_memory)
from timing import hardware  # noqa: E402

WARMUP_CYCLES = 3


def cycles_of(data: str, model: str, cycles: int, overrides: list[str] = ()) -> dict:
    """Images/s of ``cycles`` search cycles (after WARMUP_CYCLES) in this process, and the seconds
    per cycle spent waiting on a DataLoader."""
    waited = [0.0]
    next_batch = dataloader._BaseDataLoaderIter.__next__

    def timed_next(self):
        start = time.perf_counter()
        try:
            return next_batch(self)
        finally:
            waited[0] += time.perf_counter() - start
    dataloader._BaseDataLoaderIter.__next__ = timed_next
    try:
        return _timed_cycles(data, model, cycles, overrides, waited)
    finally:
        dataloader._BaseDataLoaderIter.__next__ = next_batch


def _timed_cycles(data: str, model: str, cycles: int, overrides, waited: list) -> dict:
    with tempfile.TemporaryDirectory() as out_dir:
        search = build_search(model, "cpu", out_dir, overrides)
        weight_step = search.weight_step
        if data == "memory":
            weight_step = weight_steps_in_memory(search)
            keep_in_memory(search.arch_data)
        ratio = int(search.config["search"]["weight_steps_per_alpha_step"])
        images = ratio * search.trainer.batch_size + search.arch_data.batch_size

        def cycle():
            for _ in range(ratio):
                weight_step()
            search.alpha_step()
        for _ in range(WARMUP_CYCLES):
            cycle()
        waited[0] = 0.0
        start = time.perf_counter()
        for _ in range(cycles):
            cycle()
        seconds = time.perf_counter() - start
    return {"data": data, "images/s": images * cycles / seconds, "wait ms per cycle": 1e3 * waited[0] / cycles}


class MeasurementFailed(Exception):
    """A fresh process's measurement exited with an error (its last line of stderr)."""


def measure(task: str, model: str, rounds: int, cycles: int, overrides: list[str] = ()) -> dict:
    runs = []
    settings = [arg for override in overrides for arg in ("--set", override)]
    for round_ in range(rounds):
        for data in ("memory", "loader"):
            child = subprocess.run([sys.executable, __file__, "--task", task, "--model", model, "--cycles", str(cycles),
                                    "--cycles-of", data, *settings], capture_output=True, text=True)
            if child.returncode != 0:
                last = (child.stderr.strip().splitlines() or ["no output"])[-1]
                raise MeasurementFailed(f"round {round_ + 1}, {data}: {last}")
            runs.append({"round": round_, **json.loads(child.stdout.strip().splitlines()[-1])})
            print(f"round {round_ + 1}: {data:<6} {runs[-1]['images/s']:.1f} images/s, waiting for batches "
                  f"{runs[-1]['wait ms per cycle']:.0f} ms per cycle", file=sys.stderr)
    median = {data: statistics.median(r["images/s"] for r in runs if r["data"] == data)
              for data in ("memory", "loader")}
    return {"date": date.today().isoformat(), "hardware": hardware("cpu"), "torch": torch.__version__,
            "task": task, "model": model, "overrides": list(overrides), "cycles": cycles, "warmup_cycles": WARMUP_CYCLES, "runs": runs,
            "median images/s": median, "loader behind memory": 1 - median["loader"] / median["memory"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="coco", help="a registered task (coco, cityscapes, ...)")
    parser.add_argument("--model", help="one of the task's models (default: its default model)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=12)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the search config (repeatable), as the search CLI's --set")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cycles-of", choices=["memory", "loader"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1 or args.cycles < 1:
        parser.exit(2, "error: --rounds and --cycles must be at least 1\n")
    check_search_arguments(parser, args)
    if args.cycles_of:  # one measurement, in this fresh process
        print(json.dumps(cycles_of(args.cycles_of, args.model, args.cycles, args.set)))
        return
    try:
        result = measure(args.task, args.model, args.rounds, args.cycles, args.set)
    except MeasurementFailed as err:
        parser.exit(1, f"error: a measurement failed: {err}\n")
    if args.json:
        print(json.dumps(result, indent=1))
        return
    median = result["median images/s"]
    print(f"median: in memory {median['memory']:.1f} images/s, loader {median['loader']:.1f} images/s: "
          f"the loader cycle is {100 * result['loader behind memory']:.1f}% behind")


if __name__ == "__main__":
    main()
