"""``python -m fna_ext.count``: Params and MAdds of a network for a task, under FNA's counting
convention (see :mod:`fna_ext.cost`). Classification breaks down per layer; detectors break
down into backbone, neck and head, the split of the paper's Table 3."""

from __future__ import annotations

import json

from . import ArgumentParser, human, run
from ..arch import Arch
from ..cost import CostReport, count
from ..families import get_family
from ..tasks import build_model, model_names, resolve, task_names



def count_tasks() -> tuple[str, ...]:
    """classification, then every model and task of the registry (a task counts its default
    model), read when asked so that a task registered later is countable too."""
    return ("classification", *model_names(), *task_names())


def default_input_size(task: str) -> tuple[int, int]:
    if task == "classification":
        return (224, 224)
    owner, model = resolve(task)
    return owner.count_size(model)


def count_task(task: str, arch: Arch, input_size: tuple[int, int] | None = None,
               num_classes: int | None = None, output_stride: int | None = None) -> CostReport:
    """The cost report of ``arch`` built for ``task`` at ``input_size`` (H, W; default: the size
    of the paper's tables). ``num_classes`` counts foreground classes (default 1000 for
    classification, 80 for COCO); SSDLite adds background. ``output_stride`` (a model that
    dilates its later stages, such as DeepLab) defaults to the model's own."""
    if task not in count_tasks():
        raise ValueError(f"--task {task!r} is not supported; choose one of {list(count_tasks())}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"--num-classes must be positive, got {num_classes}")
    options = {}
    if output_stride is not None:
        strides = () if task == "classification" else resolve(task)[0].output_strides
        if output_stride not in strides:
            raise ValueError(f"--output-stride {output_stride}: the {task} model takes "
                             + (f"one of {list(strides)}" if strides else "none (it keeps its backbone's strides)"))
        options["output_stride"] = output_stride
    input_size = input_size or default_input_size(task)
    if task == "classification":
        return count(get_family(arch.family).build_network(arch, num_classes or 1000), input_size)
    return count(build_model(task, arch, num_classes, **options), input_size)


def _rows(report: CostReport, task: str) -> list[tuple[str, int, int]]:
    if task == "classification":
        return [(name, p, a) for name, (p, a) in report.grouped().items()]
    # Detectors: one row per backbone stage, then the neck and the head as wholes.
    def group(name: str) -> str:
        parts = name.split(".")
        if parts[0] != "backbone":
            return parts[0]
        return ".".join(parts[:3] if parts[1] == "stages" else parts[:2])
    return [(name, p, a) for name, (p, a) in report.grouped(group).items()]


def format_report(report: CostReport, title: str, task: str = "classification") -> str:
    rows = _rows(report, task)
    width = max(len(r[0]) for r in rows + [("total", 0, 0)])
    lines = [title, f"{'module':<{width}}  {'params':>12}  {'MAdds':>15}"]
    lines += [f"{name:<{width}}  {p:>12,}  {a:>15,}" for name, p, a in rows]
    if task != "classification":
        lines.append("-" * (width + 31))
        for part, (p, a) in report.grouped().items():
            lines.append(f"{part:<{width}}  {p:>12,}  {a:>15,}   {human(p)} / {human(a)}")
    lines.append(f"{'total':<{width}}  {report.params:>12,}  {report.madds:>15,}")
    lines.append(f"params {human(report.params)}, MAdds {human(report.madds)} "
                 f"at {report.input_size[0]}x{report.input_size[1]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m fna_ext.count", description=__doc__)
    parser.add_argument("--task", default="classification", choices=count_tasks())
    parser.add_argument("--arch", default="mobilenet_v2",
                        help="a name (mobilenet_v2), an arch file (JSON or net_config), or inline "
                             "net_config text (default: mobilenet_v2)")
    parser.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                        help="default: 224 224 (classification), 320 320 (ssdlite), 800 1088 (retinanet)")
    parser.add_argument("--num-classes", type=int,
                        help="foreground classes (default 1000 for classification, 80 for COCO; "
                             "SSDLite adds background)")
    parser.add_argument("--output-stride", type=int, metavar="S",
                        help="for models that dilate their later stages (deeplabv3, deeplabv3plus): 16 or 8 "
                             "(default 16)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    arch = Arch.from_arg(args.arch)
    input_size = tuple(args.input_size) if args.input_size else None
    report = count_task(args.task, arch, input_size, args.num_classes, args.output_stride)
    if args.json:
        parts = {} if args.task == "classification" else {
            part: {"params": p, "madds": a} for part, (p, a) in report.grouped().items()}
        print(json.dumps({"task": args.task, "arch": str(arch), "parts": parts, **report.to_dict()}))
    else:
        print(format_report(report, f"{args.task}: {arch}", args.task))
    return 0


if __name__ == "__main__":
    run(main)
