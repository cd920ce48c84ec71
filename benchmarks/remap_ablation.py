"""The paper's Tables 5 and 7 on a synthetic task: does parameter remapping matter, where, and
which remapping?

Table 5 (``--table 5``), the pipelines with equal budgets, each over several run seeds:
- Remap    -> ArchAdapt -> Remap    -> ParamAdapt  (FNA)
- RandInit -> ArchAdapt -> Remap    -> ParamAdapt
- Remap    -> ArchAdapt -> RandInit -> ParamAdapt
- RandInit -> ArchAdapt -> RandInit -> ParamAdapt
- with ``--retrain``: Remap -> ArchAdapt -> Retrain -> ParamAdapt, where the found architecture
  is pretrained from scratch with the project's own seed recipe (``fna_ext.pretrain``, standing
  in for the paper's ImageNet pretraining) and fine-tuned from those weights.

Table 7 (``--table 7``), the remapping rules against FNA's (Eq. 2 width, Eq. 3 kernel), each
used for both remappings (into the super network and into the found architecture):
Width-BN, Width-Std, Width-L1 (Algorithm 1 with |gamma|, the filters' std or their L1 norm as
the reference) and Kernel-Dilate (Eq. 6).

A search is shared by every row that starts it the same way (same seed, init and remapping), and
the phases of one ``--work`` folder are shared by both tables: Table 7's FNA row is Table 5's
first.

    python benchmarks/remap_ablation.py --task cityscapes --table 5 --retrain [--seeds 0 1]
        [--search-epochs 3] [--train-epochs 8]
    python benchmarks/remap_ablation.py --task cityscapes --table 7
    python benchmarks/remap_ablation.py --task coco --seed-arch resnet18 --table groups \
        --arch "[[64, 64], ['basic_k3', 'basic_k3'], 1]|[[64, 128], ['basic_k3_g2', ...], 2]|..."

``--arch`` fixes the target architecture instead of searching it (every row then differs only
in how the target starts), which isolates a remapping rule from the search's noise. With the
project's own seed (whose file keeps its classifier and names its classification set), each row
also reports the seed's top-1 kept: the remapped target, with the seed's classifier, on the
seed's own validation images before any fine-tuning (how much of the seed's function the rule
carries over; RandInit rows report chance).

writes ``benchmarks/results/remap_ablation_{task}.json`` (Table 5), ``remap_variants_{task}.json``
(Table 7) or ``remap_groups_{task}.json`` (``_{seed arch}`` added with ``--seed-arch``): one object per row with the mean, spread and per-seed values of the task's two
headline metrics (detection AP and AP50, segmentation mIoU and pixel accuracy) and the MAdds,
and the same as markdown (``.md``). Finished phases are kept in ``--work`` and reused when the
command is run again, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fna_ext.arch import Arch  # noqa: E402
from fna_ext.atomic import atomic_write_text  # noqa: E402
from fna_ext.cli.count import count_task  # noqa: E402
from fna_ext.data.classification import EvalTransform, ImageFolderDataset  # noqa: E402
from fna_ext.data.synthetic import default_dataset  # noqa: E402
from fna_ext.families import get_family  # noqa: E402
from fna_ext.pretrain.core import top1_accuracy  # noqa: E402
from fna_ext.remap import remap_network  # noqa: E402
from fna_ext.engine.checkpoint import changed_settings  # noqa: E402
from fna_ext.engine.finetune import finetune  # noqa: E402
from fna_ext.nas.search import search  # noqa: E402
from fna_ext.pipeline import AdaptOptions, device_description, pipeline_configs  # noqa: E402
from fna_ext.pretrain import pretrain_seed, seed_weights_path  # noqa: E402
from fna_ext.remap import load_seed_network  # noqa: E402
from fna_ext.tasks import get_task  # noqa: E402

NAMES = {"remap": "Remap", "random": "RandInit", "retrain": "Retrain"}


@dataclass(frozen=True)
class Row:
    """One pipeline: how the super network starts, how the found network starts (``retrain``:
    pretrained from scratch first) and the remapping rules of both remappings."""

    search_init: str = "remap"
    train_init: str = "remap"
    width: str = "first"
    kernel: str = "center"
    groups: str = "diagonal"
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or (f"{NAMES[self.search_init]} -> ArchAdapt -> {NAMES[self.train_init]} -> ParamAdapt")

    @property
    def search_key(self) -> str:
        """The folder of this row's search (rows that search alike share it)."""
        rules = (self.width, self.kernel) + ((self.groups,) if self.groups != "diagonal" else ())
        return f"search_{self.search_init}" + ("" if rules == ("first", "center") else "_" + "_".join(rules))


TABLE5 = [Row(), Row("random", "remap"), Row("remap", "random"), Row("random", "random")]
RETRAIN = Row("remap", "retrain")
TABLE7 = [Row(width="bn", label="Width-BN"), Row(width="std", label="Width-Std"),
          Row(width="l1", label="Width-L1"), Row(kernel="dilate", label="Kernel-Dilate"), Row(label="FNA")]
# issue 20: a grouped conv takes a dense seed conv's block-diagonal or its first channels (ResNet seeds)
GROUPS = [Row(label="Groups: block-diagonal"), Row(groups="first", label="Groups: first channels"),
          Row(train_init="random", label="Groups: block-diagonal, RandInit before ParamAdapt")]
TABLES = {"5": TABLE5, "7": TABLE7, "groups": GROUPS}


def headline_metrics(task) -> list[str]:
    """The task's primary metric and the next one it reports (AP and AP50, mIoU and pixel accuracy)."""
    return [task.primary_metric, next(m for m in task.metric_names if m != task.primary_metric)]


def options_for(row: Row, seed: int, args) -> AdaptOptions:
    return AdaptOptions(
        task=args.task, model=args.model, data=args.data, seed_weights=args.seed_weights, seed_arch=args.seed_arch,
        seed=seed,
        device=args.device, search_init=row.search_init, train_init="random" if row.train_init == "random" else "remap",
        search_overrides=[*args.search_set,
                          *([f"train.epochs={args.search_epochs}"] if args.search_epochs is not None else []),
                          f"search.remap_width={row.width}", f"search.remap_kernel={row.kernel}",
                          f"search.remap_groups={row.groups}"],
        train_overrides=[*args.train_set, f"train.epochs={args.train_epochs}",
                         f"adaptation.remap_width={row.width}", f"adaptation.remap_kernel={row.kernel}",
                         f"adaptation.remap_groups={row.groups}"])


def searched_arch(options: AdaptOptions, seed_network, out: Path, fixed: Arch | None = None) -> tuple[Arch, dict]:
    """The derived architecture of this search, searched once and reused (``fixed``: that one,
    not searched)."""
    if fixed is not None:
        task = get_task(options.task)
        model = task.model_name(options.model, fixed)
        report = count_task(model, fixed, task.input_size(pipeline_configs(options)[0]))
        params, madds = report.grouped()["backbone"]
        return fixed, {"params": params, "madds": madds}
    search_config, _ = pipeline_configs(options)
    if (out / "arch.json").exists():
        check_same_settings(out, search_config, SEARCH_SECTIONS)
        arch = Arch.load(out / "arch.json")
        return arch, arch.meta["search"]["adapted"]
    found = search(search_config, seed_network, out, device=options.device)
    return found.arch, found.record["adapted"]


def retrained_weights(arch: Arch, seed: int, out: Path, args) -> Path:
    """The found architecture pretrained from scratch with the project's seed recipe."""
    path = out / "weights.pt"
    if not path.exists():
        result = pretrain_seed(path, arch=arch, seed=seed, epochs=args.pretrain_epochs, device=args.device)
        print(f"  retrained {arch}: val top-1 {result.accuracy:.3f} ({result.seconds:.0f} s)", flush=True)
    return path


def check_same_settings(out: Path, config: dict, sections: tuple[str, ...]) -> None:
    """A finished phase in ``out`` is reused only when it ran with these settings: a rerun with
    other epochs or another lambda must not report the old run as its own."""
    stored = (yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else None) or {}
    changed = [f"{name} not recorded" for name in sections if name not in stored]
    changed += changed_settings({name: stored.get(name) for name in sections},
                                {name: config.get(name) for name in sections}, may_change=frozenset())
    if changed:
        raise ValueError(f"{out} holds a finished run with other settings than this command's "
                         f"({'; '.join(changed)}); remove that folder or pass another --work")


# the sections that decide a phase's result (besides the architecture a fine-tuning trains)
SEARCH_SECTIONS = ("task", "model", "data", "search", "train")
FINETUNE_SECTIONS = ("task", "model", "data", "train", "adaptation", "eval")
ARCH_RECORD = "arch.txt"  # the architecture a fine-tuning folder trained


def fine_tuned_metrics(options: AdaptOptions, arch: Arch, weights: Path, out: Path, seed_arch=None) -> dict:
    """The metrics of ``arch`` fine-tuned into ``out``; a finished run there is reused when it
    was trained with the same settings (another ``--train-epochs`` is another run)."""
    _, train_config = pipeline_configs(options)
    if (out / "metrics.json").exists():
        check_same_settings(out, train_config, FINETUNE_SECTIONS)
        trained = (out / ARCH_RECORD).read_text().strip() if (out / ARCH_RECORD).is_file() else None
        if trained != str(arch):
            raise ValueError(f"{out} holds a fine-tuning of another architecture (or of one not recorded) than "
                             f"{arch}; remove that folder or pass another --work")
        return json.loads((out / "metrics.json").read_text())
    metrics = finetune(get_task(options.task), train_config, arch, out, seed_weights=weights,
                       seed_arch=seed_arch,  # None for a retrained file, which embeds its arch
                       init=options.train_init, device=options.device).metrics
    atomic_write_text(out / ARCH_RECORD, f"{arch}\n")
    return metrics


def kept_top1(seed_path: Path, arch: Arch, row: Row) -> float | None:
    """The seed's top-1 on its own classification validation set once remapped into ``arch``
    by ``row``'s rules, with the seed's classifier, before any training (None when the seed file
    has no classifier or names no synthetic classification set)."""
    payload = torch.load(seed_path, map_location="cpu", weights_only=True)
    meta = payload.get("metadata", {}) if isinstance(payload, dict) else {}
    classes, dataset = meta.get("class_names"), str(meta.get("dataset", ""))
    if not classes or not dataset.startswith("synthetic shapes (classification-"):
        return None
    if row.train_init == "random":
        return 1 / len(classes)
    family = get_family(arch.family)
    seed = family.build_network(Arch.from_dict(payload["arch"]), num_classes=len(classes))
    family.load_seed_weights(seed, seed_path)
    target = remap_network(seed.eval(), family.build_network(arch, num_classes=len(classes)),
                           row.width, row.kernel, row.groups)
    _, images, size, data_seed, _ = dataset[dataset.index("(") + 1:-1].split("-")  # kind-images-size-seed-version
    root = default_dataset("classification", images=int(images), size=int(size), seed=int(data_seed))
    val = ImageFolderDataset(root, "val",
                             EvalTransform(int(meta.get("image_size", 48))))
    return top1_accuracy(target, val)


def run(args) -> list[dict]:
    task = get_task(args.task)
    metrics = headline_metrics(task)
    # a fixed target's runs must not meet searched ones: its folder names the arch's hash
    suffix = ("_" + args.seed_arch if args.seed_arch else "") + (
        "_arch" + hashlib.sha1(args.arch.encode()).hexdigest()[:8] if args.arch else "")
    work = Path(args.work or REPO / "runs" / f"remap_ablation_{task.name}{suffix}")
    table = TABLES[args.table] + ([RETRAIN] if args.retrain else [])
    rows = {row: {"name": row.name, "search_init": row.search_init, "train_init": row.train_init,
                  "width": row.width, "kernel": row.kernel, "groups": row.groups, "per_seed": []} for row in table}
    seed_path = seed_weights_path(args.seed_weights, args.data, args.seed_arch)
    seed_network = load_seed_network(seed_path, args.seed_arch)
    fixed = Arch.from_arg(args.arch) if args.arch else None
    if fixed is not None and fixed.family != seed_network.arch.family:
        raise SystemExit(f"error: --arch is a {fixed.family} architecture and the seed a {seed_network.arch.family} one")
    kept = {row: kept_top1(seed_path, fixed, row) for row in table} if fixed is not None else {}
    for seed in args.seeds:
        for row in table:
            options = options_for(row, seed, args)
            folder = work / f"seed{seed}"
            started = time.perf_counter()
            arch, cost = searched_arch(options, seed_network, folder / row.search_key, fixed)
            weights = (retrained_weights(arch, seed, folder / f"retrain_{row.search_key}", args)
                       if row.train_init == "retrain" else seed_path)
            result = fine_tuned_metrics(options, arch, weights,
                                        folder / f"train_{row.search_key}_{row.train_init}",
                                        None if row.train_init == "retrain" else args.seed_arch)
            rows[row]["per_seed"].append({"seed": seed, **{m: result[m] for m in metrics},
                                          "madds": cost["madds"], "params": cost["params"], "arch": str(arch)})
            print(f"seed {seed} | {row.name}: " + " ".join(f"{m} {result[m]:.3f}" for m in metrics)
                  + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    for row, value in kept.items():
        rows[row]["seed_top1_kept"] = value
    return [_with_means(row, [*metrics, "madds"]) for row in rows.values()]


def _with_means(row: dict, keys: list[str]) -> dict:
    per_seed = row["per_seed"]
    for key in keys:
        values = [r[key] for r in per_seed]
        row[f"mean_{key}"] = statistics.fmean(values)
        row[f"std_{key}"] = statistics.pstdev(values) if len(values) > 1 else 0.0
    return row


def markdown(rows: list[dict], metrics: list[str], args) -> str:
    first, second = metrics
    kept = any(row.get("seed_top1_kept") is not None for row in rows)
    lines = [f"| pipeline | {first} (mean ± std) | {second} (mean ± std) | MAdds (mean) | per-seed {first} |"
             + (" seed top-1 kept |" if kept else ""),
             "| --- | ---: | ---: | ---: | --- |" + (" ---: |" if kept else "")]
    for row in rows:
        per_seed = ", ".join(f"{r[first]:.3f}" for r in row["per_seed"])
        lines.append(f"| {row['name']} | {row[f'mean_{first}']:.3f} ± {row[f'std_{first}']:.3f} | "
                     f"{row[f'mean_{second}']:.3f} ± {row[f'std_{second}']:.3f} | "
                     f"{row['mean_madds'] / 1e6:.1f}M | {per_seed} |"
                     + (f" {row['seed_top1_kept']:.3f} |" if kept else ""))
    epochs = f"{args.search_epochs} epochs" if args.search_epochs else "the task's schedule"
    search = f"the fixed architecture {args.arch} (no search)" if args.arch else f"search {epochs}"
    lines += ["", f"Task {args.task}; seeds {args.seeds}; {search}, fine-tuning "
              f"{args.train_epochs} epochs per row; data: {args.data or 'the embedded synthetic default'}; "
              f"{device_description(args.device)}; command: "
              f"`{shlex.join(['python', 'benchmarks/remap_ablation.py', *args.argv])}`."]
    return "\n".join(lines) + "\n"


def add_run_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The data, seed, override, output and device arguments of the pipeline benchmarks."""
    parser.add_argument("--data", help="dataset root (default: the embedded synthetic dataset)")
    parser.add_argument("--seed-weights", help="seed weights (default: the embedded default's seed)")
    parser.add_argument("--search-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a search setting for every run (repeatable)")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a fine-tuning setting for every run (repeatable)")
    parser.add_argument("--work", help="folder for each phase's outputs, reused when run again "
                                       f"(default: runs/{name}_TASK)")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="coco", help="the task (coco, cityscapes, ...; default coco)")
    parser.add_argument("--model", help="the task's model (default: its default)")
    parser.add_argument("--table", choices=list(TABLES), default="5",
                        help="5: where remapping matters; 7: which remapping; groups: how grouped convs take a "
                             "dense seed's weights (a ResNet seed; default 5)")
    parser.add_argument("--seed-arch", help="the seed's named arch without --seed-weights (the project's own "
                                            "seed, e.g. resnet18), or the arch of a --seed-weights file")
    parser.add_argument("--arch", help="fine-tune this target architecture (a name, file or net_config text) "
                                       "instead of searching one")
    parser.add_argument("--retrain", action="store_true",
                        help="Table 5's fifth row: the found architecture pretrained from scratch, then fine-tuned")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--search-epochs", type=int, help="search epochs (default: the task's schedule)")
    parser.add_argument("--train-epochs", type=int, default=6)
    parser.add_argument("--pretrain-epochs", type=int, help="epochs of the Retrain row's pretraining "
                                                            "(default: the seed recipe's)")
    add_run_arguments(parser, "remap_ablation")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.retrain and args.table != "5":
        parser.error("--retrain adds a row to Table 5; use it with --table 5")
    task = get_task(args.task)
    args.task = task.name
    started = time.perf_counter()
    rows = run(args)
    metrics = headline_metrics(task)
    name = {"5": "remap_ablation", "7": "remap_variants", "groups": "remap_groups"}[args.table] + f"_{task.name}"
    if args.seed_arch:
        name += f"_{Path(args.seed_arch).stem}"
    results = Path(args.results)
    record = {"table": args.table, "task": task.name, "metrics": metrics, "rows": rows, "seeds": args.seeds,
              "search_epochs": args.search_epochs, "train_epochs": args.train_epochs,
              "data": args.data or "embedded synthetic default", "device": device_description(args.device),
              "date": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - started, 1)}
    atomic_write_text(results / f"{name}.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(results / f"{name}.md", markdown(rows, metrics, args))
    print(markdown(rows, metrics, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
