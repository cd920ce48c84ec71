"""What a dense task gives the rest of fna_ext.

The engine, the search and the command lines know a task only through :class:`Task`: they ask it
for its settings, its data, its model around a backbone, its loss, its metrics and its model file.
A task is one subpackage of :mod:`fna_ext.tasks` and one line in its registry; nothing outside
the subpackage names a detector, a dataset or an input size.

A task may offer several models (meta-architectures: SSDLite and RetinaNet for detection,
DeepLabv3 and v3+ for segmentation); ``config["model"]["name"]`` says which one a run uses.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..arch import Arch
from ..config import Check, Rule, resolve, validate
from ..engine.settings import ADAPTATION_DEFAULTS, TRAINING_CHECKS, TRAINING_RULES
from ..nas.settings import SEARCH_CHECKS, SEARCH_RULES


def load_trained_weights(model: nn.Module, state_dict: dict, source: str, what: str) -> nn.Module:
    """``model`` with a model file's weights, in eval mode; weights of another shape or layout are
    one ValueError naming ``source`` and ``what`` the file says it holds."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise ValueError(f"{source}: the weights do not fit the {what} it describes "
                         f"({str(err).splitlines()[0]})") from None
    return model.eval()


@dataclass(frozen=True)
class TaskData:
    """A task's datasets for one config. ``num_classes`` and ``class_names`` describe the
    training split; ``collate`` turns a list of samples into ``(inputs, targets)``."""

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset | None
    collate: Callable
    num_classes: int
    class_names: list[str]


class Task:
    """The interface of a task. Subclasses set the class attributes and override the methods
    that raise ``NotImplementedError``; the rest have defaults that suit most tasks."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    description: str = ""
    models: tuple[str, ...] = ()     # meta-architectures this task can build
    # output strides build_model(output_stride=...) accepts (DeepLab: 16 and 8); () when the
    # backbone keeps its own strides
    output_strides: tuple[int, ...] = ()
    default_model: str = ""
    metric_names: tuple[str, ...] = ()
    primary_metric: str = ""
    # What --data points at, for help texts.
    data_help: str = "dataset root"
    # Flags the evaluate command adds for this task: {flag: (eval setting it sets, help)}
    evaluation_flags: dict[str, tuple[str, str]] = {}

    # -- settings ------------------------------------------------------------------------
    def presets(self, model: str, synthetic: bool) -> tuple[dict, dict]:
        """(search config, fine-tuning config) of ``model``: the published settings, or the
        embedded default's when ``synthetic``. Both carry ``task`` and ``model.name``."""
        raise NotImplementedError

    def search_preset(self, model: str | None = None, synthetic: bool = True, seed_arch: Arch | None = None) -> dict:
        """The search preset; the embedded default's as ``seed_arch``'s family adjusts it
        (:meth:`~fna_ext.families.base.Family.adjust_embedded_search`)."""
        preset = copy.deepcopy(self.presets(self.model_name(model, seed_arch), synthetic)[0])
        if synthetic and seed_arch is not None:
            from ..families import get_family

            preset["search"] = get_family(seed_arch.family).adjust_embedded_search(preset["search"], seed_arch)
        return preset

    def finetune_preset(self, model: str | None = None, synthetic: bool = True) -> dict:
        """The fine-tuning preset, its ``adaptation`` section completed from the engine's defaults."""
        preset = copy.deepcopy(self.presets(self.model_name(model), synthetic)[1])
        preset["adaptation"] = {**ADAPTATION_DEFAULTS, **preset.get("adaptation", {})}
        return preset

    def config_rules(self, model: str) -> dict[str, Rule]:
        """Rules of the task's own settings (its ``data`` and ``model`` sections). Settings
        without one are held to the type of their preset value."""
        return {}

    def config_checks(self, model: str) -> tuple[Check, ...]:
        """Checks across the task's settings (e.g. a maximum size above a minimum one)."""
        return ()

    def resolve_config(self, preset: dict, config_file: str | Path | None = None,
                       assignments=()) -> dict:
        """``preset`` with ``config_file`` and ``key=value`` ``assignments`` applied, every value
        checked against the engine's, the search's and this task's rules before any work."""
        return resolve(preset, config_file, assignments, *self._rules_and_checks(preset))

    def check_config(self, config: dict) -> dict:
        """``config`` (built by hand, or read back from a run) checked as :meth:`resolve_config`
        checks a resolved one."""
        return validate(config, config, *self._rules_and_checks(config))

    def _rules_and_checks(self, preset: dict) -> tuple[dict, tuple]:
        model = preset["model"]["name"]

        def same_task_and_model(config: dict) -> None:
            if config.get("task") != preset.get("task") or config["model"]["name"] != model:
                raise ValueError(f"task and model.name are {preset.get('task')!r} and {model!r} in this "
                                 "config; choose them with --task and --model, not with settings")

        rules = {**TRAINING_RULES, **SEARCH_RULES, **self.config_rules(model)}
        return rules, (same_task_and_model, *TRAINING_CHECKS, *SEARCH_CHECKS, *self.config_checks(model))

    def model_name(self, model: str | None, seed_arch: Arch | None = None) -> str:
        """``model``, checked; or, when it is None, the model this task builds by default on a
        backbone of ``seed_arch`` (:meth:`default_model_for`)."""
        name = model or (self.default_model_for(seed_arch) if seed_arch is not None else self.default_model)
        if name not in self.models:
            raise ValueError(f"the {self.name} task has no model {name!r}; choose one of {list(self.models)}")
        return name

    def default_model_for(self, seed_arch: Arch) -> str:
        """The model a user gets without ``--model`` on a seed of ``seed_arch``: ``default_model``,
        unless it reads features that arch's family does not offer."""
        return self.default_model

    # -- the model ------------------------------------------------------------------------
    def build_model(self, model: str, arch: Arch, num_classes: int, *, backbone: nn.Module | None = None,
                    **options) -> nn.Module:
        """``model`` on a backbone built from ``arch`` (or on ``backbone``, a super network whose
        ``arch`` is the widest choice of every layer). The result has ``backbone``, and
        ``loss(outputs, targets)`` returning a dict of loss tensors."""
        raise NotImplementedError

    def search_space(self, model: str):
        """The :class:`~fna_ext.nas.search_space.SearchSpace` ``model``'s backbone is searched
        in: how deep each stage may grow, and which layers' inner width the model reads."""
        raise NotImplementedError

    def output_stride(self, config: dict) -> int | None:
        """The output stride a run of ``config`` keeps its backbone at (DeepLab's 16 or 8: later
        strides become dilations), or None for the backbone's own strides."""
        return None

    def model_options(self, config: dict) -> dict:
        """What :meth:`build_model` takes from ``config`` beyond the arch and the classes, so that
        the search, fine-tuning, counting and a model file build the same model."""
        return {"backbone_bn_eps": float(config["model"]["backbone_bn_eps"])}

    def count_size(self, model: str) -> tuple[int, int]:
        """(H, W) at which the published Params/MAdds tables count ``model``."""
        raise NotImplementedError

    def input_size(self, config: dict) -> tuple[int, int]:
        """(H, W) at which a run of ``config`` counts its cost (the search's cost table)."""
        raise NotImplementedError

    def default_num_classes(self, model: str) -> int:
        raise NotImplementedError

    # -- data, loss, evaluation ----------------------------------------------------------
    def data(self, config: dict) -> TaskData:
        """The datasets of ``config`` (its ``data`` section; the embedded synthetic set when it
        names no root). Problems with the files are found here, before any training."""
        raise NotImplementedError

    def val_data(self, config: dict, root: str | Path | None = None) -> torch.utils.data.Dataset:
        """The evaluation split of ``config``, or of another dataset at ``root``."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        inputs, targets = batch
        return model.loss(model(inputs), targets)

    def evaluate(self, model: nn.Module, dataset, *, batch_size: int, device="cpu") -> dict[str, float]:
        raise NotImplementedError

    def write_examples(self, model: nn.Module, dataset, path: Path, *, device="cpu") -> Path | None:
        """Writes ``path``, a PNG of a few of ``dataset``'s images with the model's predictions
        beside the truth, and returns it; None for a task that draws none."""
        return None

    def format_metrics(self, metrics: dict) -> str:
        return "  ".join(f"{name} {metrics[name]:.3f}" for name in self.metric_names if name in metrics)

    # -- the model file and export ----------------------------------------------------------
    def model_payload(self, model: nn.Module, config: dict, data: TaskData, **extra) -> dict:
        """What the trained model's file (``model_final.pt``) holds: plain tensors, strings and
        numbers, loadable with ``weights_only=True``."""
        raise NotImplementedError

    def model_from_payload(self, payload: dict, source: str) -> nn.Module:
        """The model in eval mode from what :meth:`model_payload` wrote (read once, safely, by
        :func:`fna_ext.tasks.load_model_file`); ``source`` names the file in errors."""
        raise NotImplementedError

    def check_same_classes(self, payload: dict, dataset, where: str) -> None:
        """Raises when ``dataset`` does not have the classes the model was trained on."""

    def export_module(self, model: nn.Module, payload: dict, input_size: tuple[int, int]) -> nn.Module:
        """A module for TorchScript/ONNX that takes raw 0..255 RGB images of ``input_size``."""
        raise NotImplementedError(f"the {self.name} task has no export yet")

    def export_input_size(self, payload: dict) -> tuple[int, int]:
        return self.input_size(payload["config"])
