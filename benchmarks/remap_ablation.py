"""The paper's Table 5 on the synthetic task: does parameter remapping matter, and where?

Four pipelines with equal budgets, each over several run seeds:
- Remap    -> ArchAdapt -> Remap    -> ParamAdapt  (FNA)
- RandInit -> ArchAdapt -> Remap    -> ParamAdapt
- Remap    -> ArchAdapt -> RandInit -> ParamAdapt
- RandInit -> ArchAdapt -> RandInit -> ParamAdapt
The search of a run seed is shared by the two rows that start it the same way (the same search
config gives the same architecture), so a seed costs two searches and four fine-tunings.

    python benchmarks/remap_ablation.py [--seeds 0 1 2] [--search-epochs 3] [--train-epochs 6]

writes ``benchmarks/results/remap_ablation.json`` (one object per row: name, mean and per-seed
AP and AP50, MAdds) and ``remap_ablation.md``. Finished phases are kept in ``--work`` and reused
when the command is run again, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fna_ext.pipeline import AdaptOptions, device_description, pipeline_configs  # noqa: E402
from fna_ext.arch import Arch  # noqa: E402
from fna_ext.nas.search import search  # noqa: E402
from fna_ext.atomic import atomic_write_text  # noqa: E402
from fna_ext.remap import load_seed_network  # noqa: E402
from fna_ext.engine.finetune import finetune  # noqa: E402
from fna_ext.pretrain import seed_weights_path  # noqa: E402
from fna_ext.tasks import get_task  # noqa: E402

ROWS = [("remap", "remap"), ("random", "remap"), ("remap", "random"), ("random", "random")]
NAMES = {"remap": "Remap", "random": "RandInit"}


def row_name(search_init: str, train_init: str) -> str:
    return f"{NAMES[search_init]} -> ArchAdapt -> {NAMES[train_init]} -> ParamAdapt"


def searched_arch(options: AdaptOptions, seed_network, work: Path) -> tuple[Arch, dict]:
    """The derived architecture of this (seed, search init), searched once and reused."""
    out = work / f"seed{options.seed}" / f"search_{options.search_init}"
    if (out / "arch.json").exists():
        arch = Arch.load(out / "arch.json")
        return arch, arch.meta["search"]["adapted"]
    search_config, _ = pipeline_configs(options)
    found = search(search_config, seed_network, out, device=options.device)
    return found.arch, found.record["adapted"]


def fine_tuned_metrics(options: AdaptOptions, arch: Arch, seed_path: Path, work: Path) -> dict:
    out = work / f"seed{options.seed}" / f"train_{options.search_init}_{options.train_init}"
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    _, train_config = pipeline_configs(options)
    return finetune(get_task(options.task), train_config, arch, out, seed_weights=seed_path,
                    init=options.train_init, device=options.device).metrics


def run(args) -> list[dict]:
    work = Path(args.work)
    rows = {row: {"name": row_name(*row), "search_init": row[0], "train_init": row[1], "per_seed": []}
            for row in ROWS}
    for seed in args.seeds:
        base = dict(data=args.data, seed_weights=args.seed_weights, seed=seed, device=args.device,
                    search_overrides=[*args.search_set, f"train.epochs={args.search_epochs}"],
                    train_overrides=[*args.train_set, f"train.epochs={args.train_epochs}"])
        seed_path = seed_weights_path(args.seed_weights, args.data)
        seed_network = load_seed_network(seed_path)
        for search_init, train_init in ROWS:
            options = AdaptOptions(**base, search_init=search_init, train_init=train_init)
            started = time.perf_counter()
            arch, cost = searched_arch(options, seed_network, work)
            metrics = fine_tuned_metrics(options, arch, seed_path, work)
            rows[(search_init, train_init)]["per_seed"].append(
                {"seed": seed, "AP": metrics["AP"], "AP50": metrics["AP50"], "madds": cost["madds"],
                 "params": cost["params"], "arch": str(arch)})
            print(f"seed {seed} | {row_name(search_init, train_init)}: AP {metrics['AP']:.3f} "
                  f"AP50 {metrics['AP50']:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return [_with_means(row) for row in rows.values()]


def _with_means(row: dict) -> dict:
    per_seed = row["per_seed"]
    for key in ("AP", "AP50", "madds"):
        values = [r[key] for r in per_seed]
        row[f"mean_{key}"] = statistics.fmean(values)
        row[f"std_{key}"] = statistics.pstdev(values) if len(values) > 1 else 0.0
    return row


def markdown(rows: list[dict], args) -> str:
    lines = ["| pipeline | AP (mean ± std) | AP50 (mean ± std) | MAdds (mean) | per-seed AP50 |",
             "| --- | ---: | ---: | ---: | --- |"]
    for row in rows:
        per_seed = ", ".join(f"{r['AP50']:.3f}" for r in row["per_seed"])
        lines.append(f"| {row['name']} | {row['mean_AP']:.3f} ± {row['std_AP']:.3f} | "
                     f"{row['mean_AP50']:.3f} ± {row['std_AP50']:.3f} | {row['mean_madds'] / 1e6:.1f}M | {per_seed} |")
    lines += ["", f"Seeds {args.seeds}; search {args.search_epochs} epochs, fine-tuning {args.train_epochs} "
              f"epochs per row; data: {args.data or 'the embedded synthetic default'}; "
              f"{device_description(args.device)}; command: `{shlex.join(['python', 'benchmarks/remap_ablation.py', *args.argv])}`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--search-epochs", type=int, default=3)
    parser.add_argument("--train-epochs", type=int, default=6)
    parser.add_argument("--data", help="COCO-format root (default: the embedded synthetic dataset)")
    parser.add_argument("--seed-weights", help="seed weights (default: the embedded default's seed)")
    parser.add_argument("--search-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a search setting for every row (repeatable)")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a fine-tuning setting for every row (repeatable)")
    parser.add_argument("--work", default=str(REPO / "runs" / "remap_ablation"),
                        help="folder for each phase's outputs, reused when run again")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    rows = run(args)
    results = Path(args.results)
    record = {"rows": rows, "seeds": args.seeds, "search_epochs": args.search_epochs,
              "train_epochs": args.train_epochs, "data": args.data or "embedded synthetic default",
              "device": device_description(args.device), "date": time.strftime("%Y-%m-%d"),
              "seconds": round(time.perf_counter() - started, 1)}
    atomic_write_text(results / "remap_ablation.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(results / "remap_ablation.md", markdown(rows, args))
    print(markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
