"""Parameter adaptation (FNA section 3.3) of any task: build the task's model on a fixed
architecture, remap the seed into its backbone, fine-tune with :class:`Trainer`, evaluate with the
task's metrics and write the model file. ``python -m fna_ext.train`` is the command line over
:func:`finetune`."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..arch import Arch
from ..atomic import atomic_torch_save, atomic_write_text
from ..config import dump
from ..plots import plot_training_curves
from ..remap import load_seed_network, remap_network
from .bn_recalibration import recalibrate_batch_norm
from .settings import INITS
from .trainer import Trainer


@dataclass
class TrainResult:
    out_dir: Path
    metrics: dict[str, float]
    weights: Path
    seconds: float
    history: list[dict] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)  # data, remap, ..., evaluate


def check_init(init: str, seed_weights) -> None:
    if init not in INITS:
        raise ValueError(f"--init must be one of {INITS}, got {init!r}")
    if init == "remap" and not seed_weights:
        raise ValueError("--init remap needs --seed-weights (the seed to remap); use --init random "
                         "to train from random initialisation")


def finetune(task, config: dict, arch: Arch, out_dir: str | Path, *, seed_weights: str | Path | None = None,
             init: str = "remap", bn_recalibrate: int | None = None, resume: bool = False,
             device: str = "cpu", seed_arch=None) -> TrainResult:
    """FNA's parameter adaptation of ``config['model']['name']`` (a model of ``task``) on
    ``arch``: builds the model, initialises its backbone (``init="remap"``: the seed's parameters
    remapped into it by the ``adaptation`` section's width and kernel rules; ``"random"``: left at
    random initialisation, the paper's Table 5 baseline), re-estimates the BN statistics on
    ``bn_recalibrate`` training batches (None: ``adaptation.bn_recalibrate``; 0: none), fine-tunes
    and evaluates. Writes into ``out_dir``: ``config.yaml``, ``metrics.jsonl``
    (training log), ``checkpoint.pt`` (resumable), ``model_final.pt`` (weights with the arch
    embedded), ``metrics.json`` (the task's metrics) and ``training.png``. ``seed_arch`` is the
    seed weights' arch where the file embeds none (a torchvision or timm file)."""
    started = time.perf_counter()
    check_init(init, seed_weights)
    config = task.check_config(config)
    clock = PhaseClock()
    out_dir = Path(out_dir)
    data = task.data(config)
    clock.lap("data")
    torch.manual_seed(int(config["train"].get("seed", 0)))  # the same config starts the same model
    model_name = config["model"]["name"]
    model = task.build_model(model_name, arch, config["model"]["num_classes"] or data.num_classes,
                             **task.model_options(config))
    train_cfg, adaptation = config["train"], config.get("adaptation", {})
    if bn_recalibrate is None:
        bn_recalibrate = int(adaptation.get("bn_recalibrate", 0))
    if not resume and init == "remap":
        # the seed's parameters remapped into this backbone (FNA's parameter remapping; a change
        # of layout only when the arch is the seed's own)
        remap_network(load_seed_network(seed_weights, seed_arch), model.backbone,
                      adaptation.get("remap_width", "first"), adaptation.get("remap_kernel", "center"),
                      adaptation.get("remap_groups", "diagonal"))
    model.to(device)  # before recalibration, which runs batches on the device
    clock.lap("remap" if init == "remap" else "build")
    if not resume and bn_recalibrate:
        recalibrate_batch_norm(model, _training_inputs(data, train_cfg), bn_recalibrate, device)
        clock.lap("bn recalibration")

    def evaluate(m):
        with clock.pause("evaluate"):
            return task.evaluate(m, data.val, batch_size=config["eval"]["batch_size"], device=device)

    trainer = Trainer(model, task.loss, data.train, data.collate, train_cfg, out_dir, device=device,
                      evaluate=evaluate, description=model_name, settings=config,
                      extra_state={"arch": arch.to_json(), "task": task.name, "model_name": model_name})
    if resume and not trainer.resume():
        raise FileNotFoundError(f"--resume: no checkpoint in {out_dir}; start without --resume")
    if not resume:
        trainer.metrics_path.unlink(missing_ok=True)
    # written once the run is known to start: a refused --resume leaves the folder as it was
    atomic_write_text(out_dir / "config.yaml", dump(config))
    history = trainer.fit()
    evals = [r["eval"] for r in history if "eval" in r]
    metrics = evals[-1] if evals else evaluate(model)
    clock.lap("fine-tune")
    weights = atomic_torch_save(task.model_payload(model, config, data, metrics=metrics, init=init),
                                out_dir / "model_final.pt")
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    plot_training_curves(read_log(trainer.metrics_path), out_dir / "training.png",
                         title=f"{model_name} parameter adaptation ({init} init)")
    clock.lap("write")
    return TrainResult(out_dir, metrics, weights, time.perf_counter() - started, history, clock.seconds)


class PhaseClock:
    """Wall time per named phase: ``lap(name)`` books the time since the last lap, and
    ``pause(name)`` books a nested span to its own phase instead of the enclosing one."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()
        self._paused = 0.0

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self._add(name, now - self._last - self._paused)
        self._last, self._paused = now, 0.0

    @contextlib.contextmanager
    def pause(self, name: str):
        began = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - began
            self._add(name, spent)
            self._paused += spent

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


def _training_inputs(data, train_cfg: dict):
    """Batches of training inputs (with the training augmentation), in a seeded order."""
    loader = torch.utils.data.DataLoader(data.train, batch_size=int(train_cfg["batch_size"]), shuffle=True,
                                         collate_fn=data.collate, num_workers=0,
                                         generator=torch.Generator().manual_seed(int(train_cfg.get("seed", 0))))
    return (inputs for inputs, _ in loader)


def read_log(path: Path) -> list[dict]:
    """The whole run's records, including those of earlier, resumed parts."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class Evaluation:
    """What :func:`evaluate_checkpoint` measured, and on what."""

    task: object
    model: torch.nn.Module
    metrics: dict[str, float]
    dataset: torch.utils.data.Dataset


def evaluate_checkpoint(checkpoint: str | Path, data_root: str | Path | None = None, *,
                        batch_size: int | None = None, eval_settings=(), device: str = "cpu") -> Evaluation:
    """The task's metrics of a trained model file, on the split it was trained with or on the
    one of another dataset at ``data_root``. ``eval_settings`` are ``eval.KEY=VALUE`` assignments
    over the file's evaluation settings (segmentation: ``eval.flip``, ``eval.scales``)."""
    from ..tasks import load_model_file

    task, model, payload = load_model_file(checkpoint)
    config = payload["config"]
    not_eval = [a for a in eval_settings if not str(a).startswith("eval.")]
    if not_eval:
        raise ValueError(f"--set {not_eval[0]}: evaluate changes only eval.* settings "
                         f"(it has {sorted(config.get('eval', {}))})")
    if eval_settings:
        config = task.resolve_config(config, None, eval_settings)
    dataset = task.val_data(config, data_root)
    task.check_same_classes(payload, dataset, f"{checkpoint} and {getattr(dataset, 'ann_file', data_root)}")
    metrics = task.evaluate(model.to(device), dataset, device=device,
                            batch_size=batch_size or int(config["eval"]["batch_size"]))
    return Evaluation(task, model, metrics, dataset)
