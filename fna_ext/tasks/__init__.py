"""The registry of dense tasks. A task is a :class:`Task` (one subpackage of this package) and one
line in :data:`TASKS`; :func:`register` adds one at run time (a test's toy task, a user's own).

``build_model(name, arch, num_classes)`` builds a task's model by task name (its default model)
or by model name (``ssdlite``, ``retinanet``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..arch import Arch
from ..engine.checkpoint import load_safely
from .base import Task, TaskData
from .detection.task import DETECTION
from .keypoints.task import KEYPOINTS
from .segmentation.task import SEGMENTATION

TASKS: dict[str, Task] = {task.name: task for task in (DETECTION, SEGMENTATION, KEYPOINTS)}
# what the commands run without --task (the README's Quickstart names it too)
DEFAULT_TASK = "coco"


def register(task: Task) -> Task:
    """Adds ``task`` to the registry (replacing one of the same name) and returns it."""
    if not task.name or not task.models or task.default_model not in task.models:
        raise ValueError(f"a task needs a name, models and a default model among them; got "
                         f"{task.name!r}, {task.models!r}, {task.default_model!r}")
    TASKS[task.name] = task
    return task


def unregister(name: str) -> None:
    TASKS.pop(name, None)


def task_names() -> list[str]:
    """Every name --task accepts: the tasks and their aliases."""
    return sorted({*TASKS, *(alias for task in TASKS.values() for alias in task.aliases)})


def get_task(name: str) -> Task:
    """The task called ``name`` or with ``name`` among its aliases (``coco`` is detection)."""
    for task in TASKS.values():
        if name == task.name or name in task.aliases:
            return task
    raise ValueError(f"unknown task {name!r}; choose one of {task_names()}")


def model_names() -> list[str]:
    return sorted({model for task in TASKS.values() for model in task.models})


def resolve(name: str) -> tuple[Task, str]:
    """(task, model) for a task name (its default model) or a model name."""
    for task in TASKS.values():
        if name in task.models:
            return task, name
    task = get_task(name)
    return task, task.default_model


def build_model(name: str, arch: Arch | str, num_classes: int | None = None, **options) -> nn.Module:
    """The model ``name`` (a task, for its default model, or a model such as ``ssdlite``) on a
    backbone built from ``arch``. ``num_classes`` counts foreground classes (default: the
    published dataset's); ``options`` go to the builder (``backbone``, ``backbone_bn_eps``, ...)."""
    task, model = resolve(name)
    if isinstance(arch, str):
        arch = Arch.from_arg(arch)
    num_classes = task.default_num_classes(model) if num_classes is None else num_classes
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    return task.build_model(model, arch, num_classes, **options)


def read_model_file(path: str | Path) -> tuple[Task, dict]:
    """(task, payload) of a trained model file, read without unpickling code; the task then
    rebuilds the model (:meth:`Task.model_from_payload`)."""
    path = Path(path)
    payload = load_safely(path, "--checkpoint")
    if not isinstance(payload, dict) or not isinstance(payload.get("task"), str):
        raise ValueError(f"{path} is not a trained model (no 'task' field); pass the model_final.pt "
                         "that python -m fna_ext.train writes")
    try:
        return get_task(payload["task"]), payload
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_model_file(path: str | Path) -> tuple[Task, nn.Module, dict]:
    """(task, model in eval mode, payload) from a trained model file of any task."""
    task, payload = read_model_file(path)
    return task, task.model_from_payload(payload, str(path)), payload


__all__ = ["Task", "TaskData", "TASKS", "register", "unregister", "get_task", "task_names", "model_names",
           "resolve", "build_model", "read_model_file", "load_model_file"]
