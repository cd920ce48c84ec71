"""The project's own small pretrained seed: MobileNetV2 trained from scratch on the synthetic shapes.

FNA adapts a *pretrained* seed network. ImageNet weights cannot be downloaded everywhere, so the
embedded default trains its own seed once: the standard ``mobilenet_v2()`` (width 1.0) on the
synthetic classification set (five shape classes: circle, square, triangle, ring, cross, drawn
with random colours and textures on textured backgrounds; 2000 images at 96x96, trained at 48x48).
Measured on the 2-core CPU: ``python -m fna_ext.pretrain`` reaches val top-1 0.925 in about two
minutes (2m13s in CI, generating the images included; 3m07s before weights were stored
channels-last).

What the seed is: a network whose early and middle stages detect edges, corners, curvature and
texture-versus-outline contrast, and whose late stages tell the five shapes apart whatever their
colour, fill or background. Those are the features SSDLite needs on the synthetic detection set
(the same five classes, several smaller objects per 160x160 image), so detection fine-tuning from
this seed starts well ahead of a random initialisation.

What it is not: an ImageNet model. It has seen five synthetic shape classes and nothing else, so
it is no seed for natural images; for COCO, pass real ImageNet weights (torchvision, timm or FNA's
seed) with ``--seed-weights``.

The weights file uses the fna_ext layout (``{"format": "fna_ext.weights", "arch",
"state_dict", "metadata"}``, see :func:`fna_ext.remap.save_weights`), loads with
``torch.load(..., weights_only=True)`` and with :func:`fna_ext.load_seed_weights`.

``python -m fna_ext.pretrain`` is the command line; :func:`default_seed_weights` is what the
embedded default calls.
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..config import Bool, Int, List, Number, resolve
from ..engine.settings import TRAINING_CHECKS, TRAINING_RULES
from ..data.classification import EvalTransform, ImageFolderDataset, TrainTransform
from ..data.synthetic import cache_dir, default_dataset
from ..engine.trainer import Trainer
from ..arch import Arch
from ..families import get_family
from ..families.mbconv import MBConv, mobilenet_v2
from ..families.resnet import BasicBlock, Bottleneck
from ..remap import save_weights

DEFAULT_SEED_NAME = "mobilenet_v2-synthetic-v1.pt"
# The wall-clock time of the default pretraining on a 2-core CPU, for the one-line notice
# (measured: ResNet-18 6.5 minutes, val top-1 0.828; MobileNetV3-Large 3.0 minutes, 0.783; other
# named archs take a guess)
DEFAULT_MINUTES = collections.defaultdict(lambda: 10, {"mobilenet_v2": 2, "resnet18": 7, "mobilenet_v3_large": 3})
MIN_IMAGE_SIZE = 32

# The default recipe, sized to a few minutes on a 2-core CPU (measured: see the module
# docstring). What made MobileNetV2 learn the shapes from scratch in that budget (val top-1 at
# 48 px; single runs differ by a few points from seed to seed):
# - residual blocks starting as the identity (see zero_init_residual): 85% instead of 47%;
# - 48 px training images: 4 ms per image instead of 8 at 96 px, and no slower learning per
#   step (93% at 48 px, 84% at 64 px after 1600 steps); the shapes then span about 19-38 px,
#   the typical object size of the 160x160 detection set, so the features are learnt at the
#   scale they are used at;
# - mild crops: TrainTransform's default (down to 50% of the area) cuts shapes in two, 72%
#   after 1600 steps against 93% with crops of at least 80%;
# - AdamW at 3e-3 after a short warm-up, cosine decay (lr 5e-3 after 100 warm-up steps gave
#   the same 90% on average over 3 seeds; 6e-3 at batch 16 stalled at 46%); batches of 32
#   (88.75-92% over 3 seeds) rather than 16 (85-91.5%), as they go through more images per
#   second;
# - crops of at least 90%, no label smoothing and no dropout, together: 85% against 81% after
#   1200 steps. Label smoothing is also known to make penultimate features transfer worse
#   (Kornblith et al., 2021), and transfer is the point of this seed.
# DataLoader workers: 0 is fastest here (1 or 2 workers take cores from the two compute threads).
DEFAULT_IMAGE_SIZE = 48
PRETRAIN_PRESET = {
    # images: size of the generated synthetic set (used only without --data); crop_scale: the
    # area range of TrainTransform's random crops.
    "data": {"images": 2000, "crop_scale": [0.9, 1.0]},
    # zero_init_residual: see zero_init_residual().
    "model": {"dropout": 0.0, "zero_init_residual": True},
    "train": {
        "epochs": 24, "batch_size": 32, "label_smoothing": 0.0, "grad_clip": 5.0,
        "eval_every": 0, "checkpoint_every": 0, "log_every": 20, "num_workers": 0, "seed": 0,
        "channels_last": None,
        "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.05},
        "schedule": {"name": "cosine", "min_lr_ratio": 0.01, "warmup_iters": 30,
                     "warmup_ratio": 0.1},
    },
}


@dataclass
class PretrainResult:
    path: Path  # the weights file
    accuracy: float  # top-1 on the val split, in [0, 1]
    seconds: float
    history: list[dict] = field(default_factory=list)  # the Trainer's log records


# --------------------------------------------------------------------------- paths

DEFAULT_SEED_ARCH = "mobilenet_v2"


def default_seed_path(name: str = DEFAULT_SEED_ARCH) -> Path:
    """Where the embedded default's seed of the named arch is cached: ``$FNA_EXT_CACHE/seeds/...``
    or ``~/.cache/fna_ext/seeds/...`` (``mobilenet_v2-synthetic-v1.pt``, ``resnet18-...``)."""
    return cache_dir() / "seeds" / DEFAULT_SEED_NAME.replace(DEFAULT_SEED_ARCH, name, 1)


def run_dir_for(out_path: str | os.PathLike) -> Path:
    """The Trainer's working folder (metrics.jsonl, checkpoint.pt) beside ``out_path``:
    ``seed.pt`` -> ``seed_run/``."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.with_suffix("").name + "_run")


# --------------------------------------------------------------------------- configuration

# Rules of the settings only pretraining has; train.* follows the engine's rules.
PRETRAIN_RULES = {
    **TRAINING_RULES,
    "data.images": Int(1),
    "data.crop_scale": List(Number(0, 1, open_low=True), 2),
    "model.dropout": Number(0, 1, open_high=True),
    "model.zero_init_residual": Bool(),
}


def _check_crop_scale(config: dict) -> None:
    low, high = config["data"]["crop_scale"]
    if low > high:
        raise ValueError(f"data.crop_scale must be [low, high] with low <= high, got {[low, high]}")


def pretrain_config(config_file: str | os.PathLike | None = None, overrides: Iterable[str] = (), *,
                    epochs: int | None = None, batch_size: int | None = None,
                    seed: int | None = None) -> dict:
    """The preset, then ``config_file``, then ``--set`` overrides, then the explicit arguments
    (they are the command line's shortcuts, so they win); every value checked before any work."""
    for flag, value, low in (("--epochs", epochs, 1), ("--batch-size", batch_size, 1), ("--seed", seed, 0)):
        if value is not None and value < low:
            raise ValueError(f"{flag} must be {'positive' if low else 'non-negative'}, got {value}")
    shortcuts = [f"train.{key}={value}" for key, value in
                 (("epochs", epochs), ("batch_size", batch_size), ("seed", seed)) if value is not None]
    return resolve(PRETRAIN_PRESET, config_file, [*overrides, *shortcuts], PRETRAIN_RULES,
                   (*TRAINING_CHECKS, _check_crop_scale))


def _check_arguments(width_mult: float, image_size: int, device: str) -> None:
    if width_mult <= 0:
        raise ValueError(f"--width-mult must be positive, got {width_mult}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"--image-size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this torch sees no CUDA device; use --device cpu")


# --------------------------------------------------------------------------- data and metrics

def classification_datasets(root: Path, image_size: int, crop_scale: Sequence[float]):
    """(train, val) ImageFolder datasets of ``root``, which must share their classes."""
    train = ImageFolderDataset(root, "train", TrainTransform(image_size, scale=tuple(crop_scale)))
    val = ImageFolderDataset(root, "val", EvalTransform(image_size))
    if train.classes != val.classes:
        raise ValueError(f"{root}: the train classes {train.classes} and val classes {val.classes} differ")
    if len(train.classes) < 2:
        raise ValueError(f"{root}: classification needs at least two classes, found {train.classes}")
    return train, val


def cross_entropy_loss(label_smoothing: float) -> Callable[[nn.Module, list], dict[str, torch.Tensor]]:
    def loss_fn(model: nn.Module, batch: list) -> dict[str, torch.Tensor]:
        images, labels = batch
        return {"cls": nn.functional.cross_entropy(model(images), labels, label_smoothing=label_smoothing)}
    return loss_fn


@torch.no_grad()
def top1_accuracy(model: nn.Module, dataset, *, batch_size: int = 100, device: str = "cpu") -> float:
    """The fraction of ``dataset`` whose arg-max class is the label (the model is left in eval mode)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    correct = 0
    for images, labels in loader:
        predictions = model(images.to(device)).argmax(dim=1).cpu()
        correct += int((predictions == labels).sum())
    return correct / len(dataset)


# --------------------------------------------------------------------------- training

def zero_init_residual(model: nn.Module) -> None:
    """Zeroes the last BatchNorm scale of every residual block (MBConv with a residual, ResNet's
    basic and bottleneck blocks), so each starts as the identity: the deep network first trains
    like a shallow one, which speeds up training from scratch (Goyal et al., 2017). The scales
    grow back as the blocks learn."""
    for module in model.modules():
        if isinstance(module, MBConv) and module.use_residual:
            nn.init.zeros_(module.project.bn.weight)
        elif isinstance(module, (BasicBlock, Bottleneck)):
            nn.init.zeros_((module.bn2 if isinstance(module, BasicBlock) else module.bn3).weight)


def pretrain_seed(out_path: str | os.PathLike, *, data_root: str | os.PathLike | None = None,
                  epochs: int | None = None, batch_size: int | None = None, width_mult: float = 1.0,
                  image_size: int = DEFAULT_IMAGE_SIZE, seed: int | None = None, device: str = "cpu",
                  config_overrides: Iterable[str] = (), config_file: str | os.PathLike | None = None,
                  resume: bool = False, announce: Callable[[str], None] | None = None,
                  arch: Arch | None = None) -> PretrainResult:
    """Trains ``mobilenet_v2(width_mult)``, or the network of ``arch`` (e.g. a searched
    architecture, pretrained as the paper's Table 5 "Retrain" row does), on the classification data at ``data_root``
    (``<root>/{train,val}/<class>/<image>``; default: the synthetic shapes, generated and cached
    on first use) and writes its weights atomically to ``out_path``.

    ``epochs``, ``batch_size`` and ``seed`` default to :data:`PRETRAIN_PRESET`'s; ``config_file``
    and ``config_overrides`` (``"train.optimizer.lr=0.05"``) change any other setting. The
    Trainer's metrics.jsonl and checkpoint.pt go to :func:`run_dir_for` ``(out_path)``, from which
    ``resume=True`` continues. ``announce`` receives one line describing the run once every
    input has been checked."""
    started = time.perf_counter()
    _check_arguments(width_mult, image_size, device)
    config = pretrain_config(config_file, config_overrides, epochs=epochs, batch_size=batch_size, seed=seed)
    root = Path(data_root) if data_root is not None else default_dataset(
        "classification", images=int(config["data"]["images"]))
    train_set, val_set = classification_datasets(root, image_size, config["data"]["crop_scale"])
    train_cfg = config["train"]
    torch.manual_seed(train_cfg["seed"])  # the initial weights are part of the seeded run
    model = seed_network(len(train_set.classes), width_mult, config["model"], arch)
    trainer = _make_trainer(model, train_set, val_set, config, run_dir_for(out_path), device, width_mult)
    if resume and not trainer.resume():
        raise FileNotFoundError(f"--resume: no checkpoint in {trainer.out_dir}; start without --resume")
    if not resume:
        trainer.metrics_path.unlink(missing_ok=True)
    if announce is not None:
        what = f"mobilenet_v2 (width {width_mult:g})" if arch is None else str(arch)
        announce(f"pretraining {what} at {image_size}px on {root}: "
                 f"{len(train_set)} train / {len(val_set)} val images, {train_cfg['epochs']} epochs")
    history = trainer.fit()
    evals = [r["eval"]["top1"] for r in history if "eval" in r]
    # A resumed run that had already finished trains nothing and evaluates nothing: measure now.
    accuracy = evals[-1] if evals else top1_accuracy(model, val_set, device=device)
    metadata = {"val_top1": accuracy, "epochs": train_cfg["epochs"], "image_size": image_size,
                "width_mult": width_mult, "dataset": _dataset_name(root, data_root),
                **_split_summary(train_set, val_set)}
    path = save_weights(out_path, model.cpu(), metadata=metadata)
    return PretrainResult(Path(path), accuracy, time.perf_counter() - started, history)


def seed_network(num_classes: int, width_mult: float, model_config: dict, arch: Arch | None = None) -> nn.Module:
    """The standard MobileNetV2 (or ``arch``'s network) with a ``num_classes`` classifier,
    initialised for training."""
    dropout = float(model_config["dropout"])
    if arch is None:
        model = mobilenet_v2(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
    else:
        model = get_family(arch.family).build_network(arch, num_classes, dropout=dropout)
    if model_config["zero_init_residual"]:
        zero_init_residual(model)
    return model


def _split_summary(train_set: ImageFolderDataset, val_set: ImageFolderDataset) -> dict:
    return {"class_names": list(train_set.classes), "train_images": len(train_set),
            "val_images": len(val_set)}


def _make_trainer(model: nn.Module, train_set, val_set, config: dict, run_dir: Path, device: str,
                  width_mult: float) -> Trainer:
    train_cfg = config["train"]
    evaluate = lambda m: {"top1": top1_accuracy(m, val_set, device=device)}
    return Trainer(model, cross_entropy_loss(float(train_cfg["label_smoothing"])), train_set,
                   torch.utils.data.default_collate, train_cfg, run_dir, device=device,
                   evaluate=evaluate, description="pretrain", settings=config,
                   extra_state={"arch": model.arch.to_json(), "width_mult": width_mult,
                                "class_names": list(train_set.classes)})


def _dataset_name(root: Path, data_root) -> str:
    return f"synthetic shapes ({root.name})" if data_root is None else str(root)


# --------------------------------------------------------------------------- the cached default

def build_default_seed(path: Path, name: str = DEFAULT_SEED_ARCH) -> None:
    """Pretrains the embedded default's seed of the named arch into ``path`` (the default
    settings throughout; MobileNetV2 at width 1, or e.g. ResNet-18)."""
    pretrain_seed(path, arch=None if name == DEFAULT_SEED_ARCH else Arch.parse(name))


def default_seed_weights(name: str = DEFAULT_SEED_ARCH) -> Path:
    """The embedded default's seed weights of the named arch (``mobilenet_v2``, ``resnet18``,
    ...), pretrained on first use and cached.

    Concurrent first uses are safe: where the OS offers file locks (POSIX), later callers wait for
    the first one's pretraining instead of running several on the same cores; in any case each
    builder trains into its own private file and renames it into place, so every caller gets a
    complete, valid file."""
    if name not in named_arch_names():
        raise ValueError(f"--seed-arch {name!r}: without --seed-weights the project pretrains its own seed, "
                         f"of a named arch: one of {named_arch_names()}; or pass --seed-weights")
    path = default_seed_path(name)
    if path.is_file():  # published by a rename, so present means complete
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path.with_name(f".{path.name}.lock")):
        if path.is_file():  # another process built it while we waited
            return path
        print(f"fna_ext: pretraining the embedded {name} seed once (about {DEFAULT_MINUTES[name]} minutes) "
              f"into {path} ...", file=sys.stderr, flush=True)
        _build_and_publish(path, name)
    return path


def seed_weights_path(seed_weights: str | None, data: str | None, seed_arch: str | None = None) -> Path:
    """The seed's weight file: the given one, or with no ``--data`` the embedded default's of
    ``seed_arch`` (a named arch; default MobileNetV2), pretrained once and cached."""
    if seed_weights:
        return Path(seed_weights)
    if data is not None:
        raise ValueError("--seed-weights is required with --data: FNA adapts a pretrained seed "
                         "(torchvision, timm, FNA or fna_ext weights)")
    return default_seed_weights(seed_arch or DEFAULT_SEED_ARCH)


def named_arch_names() -> list[str]:
    from ..families import get_family, family_names

    return sorted(name for family in family_names() for name in get_family(family).named_archs())


def _build_and_publish(path: Path, name: str = DEFAULT_SEED_ARCH) -> None:
    private = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.pt")
    try:
        build_default_seed(private, name)
        if not path.is_file():  # a process without the lock may have published first: keep it
            os.replace(private, path)
    finally:
        private.unlink(missing_ok=True)
        shutil.rmtree(run_dir_for(private), ignore_errors=True)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``lock_path`` where the OS offers one. The OS releases it when
    its holder exits, even by a crash, so a lock is never left stale."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic publish alone keeps every file valid
        yield
        return
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("fna_ext: waiting for another process that is pretraining the embedded seed ...",
                  file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------- command line
