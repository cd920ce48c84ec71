"""Images per second of whole super-network search steps, with the fused sampled MBConv and with
the pure-PyTorch reference, on the embedded default's search (synthetic COCO, SSDLite on the
MobileNetV2 super network, 160x160, batch 16):

- a weight step: one sampled path, forward and backward through the task's model, optimizer step;
- an alpha step: every candidate of every layer (the softmax(alpha) mixture), backward to alpha;
- the search's cycle: ``weight_steps_per_alpha_step`` weight steps and one alpha step.

Steps of the two versions alternate (benchmarks/timing.py); medians are reported. By default each
step loads its batch as the search does (DataLoader workers decoding and augmenting JPEGs, on the
same cores); ``--in-memory`` times the steps on batches loaded beforehand (HELD_BATCHES of them,
served round and round), which is the part the fused op changes.

    python benchmarks/bench_search_step.py [--device cpu|cuda] [--task coco|cityscapes] [--model M] [--repeats 7]
        [--in-memory] [--set KEY=VALUE ...] [--cpu-isa avx512|avx2|baseline] [--json]

``--cpu-isa avx2`` times an AVX2 machine on an AVX-512 one, as bench_mbconv.py's does (fna_ext,
ATen and oneDNN held to AVX2 together); the JSON records the copy that ran.

On the CPU it restarts itself with glibc's allocator held steady, as bench_mbconv.py does
(``--adaptive-malloc`` opts out); the peak-memory children run with glibc as it is.

``--set`` overrides the search config as the search CLI's does (``train.batch_size=2``,
``data.input_size=[64,64]``): benchmarks/gpu_check.py's dry run times tiny steps with it.

It then reports the peak memory of one weight step and one alpha step, fused and reference, each
in a fresh process on batches held in memory, after one warm-up step: on the CPU the peak
resident size during the step (Linux's VmHWM, reset as the step starts), with the host block
cache at its default and off (``FNA_EXT_HOST_CACHE_MB=0``); on CUDA
``torch.cuda.max_memory_allocated``. ``--no-memory`` skips it. ``--loader`` also times the
data loader alone, in images/s with 0, 1 and 2 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import (ISA_ENV, STEADY_MALLOC, hardware, interleaved_medians, isa_env, isa_record, malloc_env,  # noqa: E402
                    restart_with)

from fna_ext import mobilenet_v2, ops  # noqa: E402
from fna_ext.nas.search import ArchitectureSearch  # noqa: E402
from fna_ext.tasks import get_task, resolve as resolve_model  # noqa: E402


def search_config(model: str, overrides: list[str] = ()) -> dict:
    """The embedded default's search config of ``model`` (a model or task name: ssdlite,
    deeplabv3, ...) with ``overrides`` (KEY=VALUE), checked by the task's rules as the CLI checks
    it; ValueError names a bad one."""
    task, model = resolve_model(model)
    return task.resolve_config(task.search_preset(model, synthetic=True), None, list(overrides))


def build_search(model: str, device: str, out_dir: str, overrides: list[str] = ()) -> ArchitectureSearch:
    """The embedded default's search of ``model`` (search_config)."""
    config = search_config(model, overrides)
    torch.manual_seed(0)
    seed = mobilenet_v2(num_classes=None)  # the timing does not depend on pretrained weights
    return ArchitectureSearch(config, seed, out_dir, device=device)


# Batches --in-memory holds: 24 of 16 images, about 120 MB at 160x160. Four batches (as before
# 2026-12-02) repeat the same 64 images, whose boxes make a step 13% cheaper than the data's
# average, which made the loader look that much worse.
HELD_BATCHES = 24


def keep_in_memory(loader, batches: int = HELD_BATCHES) -> None:
    """Serves ``loader``'s first few batches round and round, so a step does no data loading."""
    held = [loader.batch(i) for i in range(min(batches, loader.per_epoch))]
    loader.batch = lambda step: held[step % len(held)]


def weight_steps_in_memory(search: ArchitectureSearch, batches: int = HELD_BATCHES):
    """A weight step over the weight split's first few batches, round and round."""
    loader = iter(search.trainer.loader)
    held = [next(loader) for _ in range(min(batches, search.steps_per_epoch))]
    calls = [0]

    def step():
        calls[0] += 1
        return search.weight_step(held[calls[0] % len(held)])
    return step


def warm_every_candidate(search: ArchitectureSearch, steps) -> None:
    """Runs each of ``steps`` once per candidate index, every layer on that candidate (or its
    last), before anything is timed. cuDNN and oneDNN build a plan the first time they meet a
    convolution's shape; a weight step trains a newly drawn path, so a short benchmark of them
    would time mostly that first use, which a long search pays once per shape. (On the H200 the
    reference's weight step took 2511 ms against its alpha step's 205 ms, with no warm-up.)"""
    counts = [len(a) for a in search.alphas.alphas]
    try:
        for index in range(max(counts)):
            search.alphas.sample = lambda generator, uniform, i=index: [min(i, n - 1) for n in counts]
            for step in steps:
                step()
    finally:
        del search.alphas.sample  # back to ArchParameters.sample


def with_fused(enabled: bool, step):
    def run():
        with ops.fused(enabled):
            step()
    return run


def measure(model: str, device: str, repeats: int, in_memory: bool, overrides: list[str] = (),
            warmup: int = 2) -> dict:
    """Median images/s of weight steps, alpha steps and the search cycle, fused and reference."""
    with tempfile.TemporaryDirectory() as out_dir:
        search = build_search(model, device, out_dir, overrides)
        weight_step = search.weight_step
        if in_memory:
            weight_step = weight_steps_in_memory(search)
            keep_in_memory(search.arch_data)
        weight_batch, alpha_batch = search.trainer.batch_size, search.arch_data.batch_size
        ratio = int(search.config["search"]["weight_steps_per_alpha_step"])
        seconds = {}
        # the versions alternate, and each pair of calls trains the same random path: the medians
        # are over the same paths for both
        calls = [0]

        def paired_path_generator():
            calls[0] += 1
            return torch.Generator().manual_seed((calls[0] - 1) // 2)
        search._path_generator = paired_path_generator
        for kind, step in (("weight step", weight_step), ("alpha step", search.alpha_step)):
            fns = {"fused": with_fused(True, step), "reference": with_fused(False, step)}
            if kind == "weight step":
                warm_every_candidate(search, fns.values())
            seconds[kind] = interleaved_medians(fns, repeats, device, warmup)
    rows = {}
    for version in ("fused", "reference"):
        cycle = ratio * seconds["weight step"][version] + seconds["alpha step"][version]
        rows[version] = {"weight step images/s": weight_batch / seconds["weight step"][version],
                         "alpha step images/s": alpha_batch / seconds["alpha step"][version],
                         "search cycle images/s": (ratio * weight_batch + alpha_batch) / cycle,
                         "weight step ms": 1e3 * seconds["weight step"][version],
                         "alpha step ms": 1e3 * seconds["alpha step"][version]}
    speedup = {k: rows["fused"][k] / rows["reference"][k] for k in rows["fused"] if k.endswith("images/s")}
    return {"date": date.today().isoformat(), "device": device, "hardware": hardware(device),
            "task": search.task.name, "model": search.model_name,
            "data": "in memory" if in_memory else "DataLoader",
            **isa_record(device), "torch": torch.__version__, "malloc": {k: os.environ.get(k) for k in STEADY_MALLOC},
            "weight_steps_per_alpha_step": ratio, "overrides": list(overrides),
            "batch": {"weight": weight_batch, "alpha": alpha_batch}, "rows": rows, "speedup": speedup}


def measure_loader(model: str, overrides: list[str] = (), workers=(0, 1, 2), batches: int = 12) -> list[dict]:
    """Images/s of the search's weight-split loader alone (decode, augment, collate), with each
    worker count: what the loader can feed a step, against the step's own images/s."""
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        search = build_search(model, "cpu", out_dir, overrides)
        dataset, collate = search.trainer.loader.dataset, search.trainer.loader.collate_fn
        batch = search.trainer.batch_size
        for count in workers:
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=search.trainer.loader.batch_sampler,
                                                 collate_fn=collate, num_workers=count)
            iterator = iter(loader)
            next(iterator)  # workers started and warm
            started = time.perf_counter()
            done = 0
            for _ in range(batches):
                try:
                    next(iterator)
                except StopIteration:
                    iterator = iter(loader)
                    next(iterator)
                done += batch
            rows.append({"workers": count, "images/s": done / (time.perf_counter() - started)})
    return rows


MEMORY_RUNS = [(kind, version, cache) for kind in ("weight step", "alpha step") for version in ("fused", "reference")
               for cache in ("default", "off")]


def peak_memory_of_one_step(model: str, device: str, kind: str, version: str, overrides: list[str]) -> dict:
    """In this (fresh) process: MiB at the peak of one ``kind`` step, after one warm-up step."""
    with tempfile.TemporaryDirectory() as out_dir:
        search = build_search(model, device, out_dir, overrides)
        keep_in_memory(search.arch_data)
        step = weight_steps_in_memory(search) if kind == "weight step" else search.alpha_step
        run = with_fused(version == "fused", step)
        run()  # the warm-up fills the host cache (and CUDA's) as a running search has it
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            run()
            torch.cuda.synchronize()
            return {"peak MiB": torch.cuda.max_memory_allocated() / 2 ** 20}
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current resident size
            f.write("5")
        before = _status_mib("VmRSS")
        run()
        peak = _status_mib("VmHWM")
        return {"peak MiB": peak, "above the resident size before the step MiB": peak - before}


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def measure_memory(model: str, device: str, overrides: list[str] = (), task: str = "coco") -> list[dict]:
    """Each of MEMORY_RUNS in a fresh process (a process's peak never goes down)."""
    rows = []
    for kind, version, cache in MEMORY_RUNS:
        if device == "cuda" and cache == "off":
            continue  # the host cache holds CPU memory only
        # glibc's allocator as a user's process has it: held steady (see main), freed blocks stay
        # resident and the peak of one step would count what earlier steps freed
        env = {k: v for k, v in os.environ.items() if k not in STEADY_MALLOC}
        if cache == "off":
            env["FNA_EXT_HOST_CACHE_MB"] = "0"
        command = [sys.executable, __file__, "--device", device, "--task", task, "--model", model,
                   "--peak-memory-of", kind, version, *[a for o in overrides for a in ("--set", o)]]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
        if result.returncode != 0:
            raise RuntimeError(f"{kind} {version}: {result.stderr.strip()[-2000:]}")
        rows.append({"step": kind, "version": version, "host cache": cache,
                     **json.loads(result.stdout.strip().splitlines()[-1])})
    return rows


def format_memory(rows: list[dict]) -> str:
    lines = ["peak memory of one step (fresh process each):"]
    for row in rows:
        above = row.get("above the resident size before the step MiB")
        own = f" ({above:.0f} MiB above the resident size before it)" if above is not None else ""
        lines.append(f"  {row['step']:<12} {row['version']:<10} host cache {row['host cache']:<8} "
                     f"{row['peak MiB']:8.0f} MiB{own}")
    for kind in ("weight step", "alpha step"):
        for cache in ("default", "off"):
            pair = {r["version"]: r["peak MiB"] for r in rows if r["step"] == kind and r["host cache"] == cache}
            if len(pair) == 2:
                lines.append(f"  {kind}, host cache {cache}: fused peak is {pair['fused'] / pair['reference']:.2f}x "
                             "the reference's")
    return "\n".join(lines)


def check_search_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks ``--task``, ``--model`` and ``--set`` before any work (one ``error:`` line and exit 2
    for a bad one, as the search CLI) and fills in the task's default model."""
    try:
        task = get_task(args.task)
    except (KeyError, ValueError) as err:
        parser.exit(2, f"error: --task {args.task}: {err.args[0] if err.args else err}\n")
    if args.model and args.model not in task.models:
        parser.exit(2, f"error: --model {args.model} is not a model of the {task.name} task "
                       f"({', '.join(task.models)})\n")
    args.model = args.model or task.default_model
    try:
        search_config(args.model, args.set)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")


def environment(args) -> dict[str, str]:
    """What the run restarts with: the instruction set asked for (timing.isa_env) and
    timing.malloc_env; nothing for a peak-memory child, which measure_memory starts with its
    parent's instruction set and glibc as it is."""
    if args.peak_memory_of:
        return {}
    return {**(isa_env(args.cpu_isa) if args.cpu_isa else {}), **malloc_env(args.device, args.adaptive_malloc)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--task", default="coco", help="a registered task (coco, cityscapes, ...)")
    parser.add_argument("--model", "--detector", help="one of the task's models (default: its default model)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--in-memory", action="store_true",
                        help="time the steps on batches loaded beforehand (no DataLoader in the loop)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the search config (repeatable)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--loader", action="store_true",
                        help="also time the data loader alone (images/s with 0, 1 and 2 workers)")
    parser.add_argument("--cpu-isa", choices=sorted(ISA_ENV),
                        help="hold fna_ext, ATen and oneDNN to this instruction set, as bench_mbconv.py's does")
    parser.add_argument("--peak-memory-of", nargs=2, metavar=("KIND", "VERSION"), help=argparse.SUPPRESS)
    parser.add_argument("--adaptive-malloc", action="store_true",
                        help="time with glibc's allocator adaptive (see timing.STEADY_MALLOC): the reference's "
                             "time then varies from run to run")
    args = parser.parse_args()
    check_search_arguments(parser, args)
    restart_with(environment(args))
    if args.peak_memory_of:  # one measurement of measure_memory, in this fresh process
        print(json.dumps(peak_memory_of_one_step(args.model, args.device, *args.peak_memory_of, args.set)))
        return
    result = measure(args.model, args.device, args.repeats, args.in_memory, args.set)
    if args.loader:
        result["loader"] = measure_loader(args.model, args.set)
    if not args.no_memory:
        result["memory"] = measure_memory(args.model, args.device, args.set, args.task)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for version, row in result["rows"].items():
        print(f"{version:<10} " + "  ".join(f"{k} {v:.1f}" for k, v in row.items()))
    print("speedup    " + "  ".join(f"{k} {v:.2f}x" for k, v in result["speedup"].items()))
    for row in result.get("loader", []):
        print(f"loader alone, {row['workers']} workers: {row['images/s']:.1f} images/s")
    if "memory" in result:
        print(format_memory(result["memory"]))


if __name__ == "__main__":
    main()
