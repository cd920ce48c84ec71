"""``python -m fna_ext.count``: Params and MAdds of a network for a task, under FNA's counting
convention (see :mod:`fna_ext.cost`), with a per-layer breakdown."""

from __future__ import annotations

import argparse
import json

from . import cli
from .arch import Arch
from .cost import CostReport, count
from .models import build_network

TASKS = ("classification",)


def count_task(task: str, arch: Arch, input_size: tuple[int, int], num_classes: int = 1000) -> CostReport:
    """The cost report of ``arch`` built for ``task`` at ``input_size`` (H, W)."""
    if task not in TASKS:
        raise ValueError(f"--task {task!r} is not supported; choose one of {list(TASKS)}")
    if num_classes < 1:
        raise ValueError(f"--num-classes must be positive, got {num_classes}")
    return count(build_network(arch, num_classes), input_size)


def format_report(report: CostReport, title: str) -> str:
    rows = [(name, p, a) for name, (p, a) in report.grouped().items()]
    width = max(len(r[0]) for r in rows + [("total", 0, 0)])
    lines = [title, f"{'module':<{width}}  {'params':>12}  {'MAdds':>15}"]
    lines += [f"{name:<{width}}  {p:>12,}  {a:>15,}" for name, p, a in rows]
    lines.append(f"{'total':<{width}}  {report.params:>12,}  {report.madds:>15,}")
    lines.append(f"params {cli.human(report.params)}, MAdds {cli.human(report.madds)} "
                 f"at {report.input_size[0]}x{report.input_size[1]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fna_ext.count", description=__doc__)
    parser.add_argument("--task", default="classification", choices=TASKS)
    parser.add_argument("--arch", default="mobilenet_v2",
                        help="a name (mobilenet_v2), an arch file (JSON or net_config), or inline "
                             "net_config text (default: mobilenet_v2)")
    parser.add_argument("--input-size", nargs=2, type=int, default=[224, 224], metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    arch = Arch.from_arg(args.arch)
    report = count_task(args.task, arch, tuple(args.input_size), args.num_classes)
    if args.json:
        print(json.dumps({"task": args.task, "arch": str(arch), **report.to_dict()}))
    else:
        print(format_report(report, f"{args.task}: {arch}"))
    return 0


if __name__ == "__main__":
    cli.run(main)
