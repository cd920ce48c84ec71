"""The dense tasks fna_ext adapts to, and ``build_model(task, arch, num_classes)``: one place
that knows which model a task uses, at which input size it is counted, and how its data is
transformed. COCO detection comes with two detectors, SSDLite and RetinaNet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..arch import Arch
from .detection import retinanet, ssdlite


@dataclass(frozen=True)
class TaskSpec:
    name: str
    build: Callable[..., nn.Module]
    count_size: tuple[int, int]  # (H, W) of the paper's Params/MAdds tables
    num_classes: int             # foreground classes of the published dataset
    description: str


TASKS: dict[str, TaskSpec] = {
    "ssdlite": TaskSpec("ssdlite", ssdlite, (320, 320), 80,
                        "COCO detection with SSDLite (320x320, softmax with background)"),
    "retinanet": TaskSpec("retinanet", retinanet, (800, 1088), 80,
                          "COCO detection with RetinaNet (short side 800, long side <= 1333)"),
}
DETECTORS = ("ssdlite", "retinanet")
# ``coco`` is the detection task; its default detector is the lighter one, SSDLite.
ALIASES = {"coco": "ssdlite"}


def task_spec(task: str) -> TaskSpec:
    name = ALIASES.get(task, task)
    if name not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS) + sorted(ALIASES)}")
    return TASKS[name]


def build_model(task: str, arch: Arch | str, num_classes: int | None = None, **options) -> nn.Module:
    """The model of ``task`` (``ssdlite``, ``retinanet``, or ``coco`` for SSDLite) on a backbone
    built from ``arch``. ``num_classes`` counts foreground classes (default: the published
    dataset's); ``options`` go to the builder (``config``, ``backbone_bn_eps``)."""
    spec = task_spec(task)
    if isinstance(arch, str):
        arch = Arch.from_arg(arch)
    num_classes = spec.num_classes if num_classes is None else num_classes
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    return spec.build(arch, num_classes, **options)
