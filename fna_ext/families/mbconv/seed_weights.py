"""Loading pretrained seed weights from the layouts people have: torchvision's ``mobilenet_v2``,
timm's ``mobilenetv2_100`` (and any timm MBConv net of the same block structure), FNA's own seed
and fna_ext's. Keys are matched by walking the network's structure, and every shape is checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ...safe_load import load_plain
from .blocks import MBConv
from .network import Network

# Parts of an MBConv block that own tensors, in fna_ext's own naming.
_BLOCK_PARTS = ("expand.conv", "expand.bn", "depthwise.conv", "depthwise.bn", "project.conv",
                "project.bn")


@dataclass(frozen=True)
class _Layout:
    name: str
    marker: str  # a key only this layout has
    stem: tuple[str, str]
    # (stage, layer, flat layer number from 1, no expand conv) -> {part: source prefix}
    block: Callable[[int, int, int, bool], dict[str, str]]
    head: Callable[[int, int], tuple[str, str]]  # (num stages, num layers) -> conv, bn prefixes
    classifier: str


def _torchvision_block(s, j, flat, e1):
    names = (["conv.0.0", "conv.0.1", "conv.1", "conv.2"] if e1 else
             ["conv.0.0", "conv.0.1", "conv.1.0", "conv.1.1", "conv.2", "conv.3"])
    return dict(zip(_BLOCK_PARTS[2:] if e1 else _BLOCK_PARTS, (f"features.{flat}.{n}" for n in names)))


def _timm_block(s, j, flat, e1):
    names = (["conv_dw", "bn1", "conv_pw", "bn2"] if e1 else
             ["conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3"])
    return dict(zip(_BLOCK_PARTS[2:] if e1 else _BLOCK_PARTS, (f"blocks.{s}.{j}.{n}" for n in names)))


def _fna_block(s, j, flat, e1):
    # FNA's MBBlock is one nn.Sequential: conv, BN, ReLU6, dw conv, BN, ReLU6, conv, BN.
    indices = [0, 1, 3, 4] if e1 else [0, 1, 3, 4, 6, 7]
    return dict(zip(_BLOCK_PARTS[2:] if e1 else _BLOCK_PARTS,
                    (f"blocks.{s + 1}.layers.{j}.op.{i}" for i in indices)))


def _own_block(s, j, flat, e1):
    return {part: f"stages.{s}.{j}.{part}" for part in (_BLOCK_PARTS[2:] if e1 else _BLOCK_PARTS)}


LAYOUTS = {
    layout.name: layout for layout in (
        _Layout("fna_ext", "stem.conv.weight", ("stem.conv", "stem.bn"), _own_block,
                lambda ns, nl: ("head.conv", "head.bn"), "classifier"),
        _Layout("torchvision", "features.0.0.weight", ("features.0.0", "features.0.1"),
                _torchvision_block,
                lambda ns, nl: (f"features.{nl + 1}.0", f"features.{nl + 1}.1"), "classifier.1"),
        _Layout("timm", "conv_stem.weight", ("conv_stem", "bn1"), _timm_block,
                lambda ns, nl: ("conv_head", "bn2"), "classifier"),
        _Layout("fna", "blocks.0.0.weight", ("blocks.0.0", "blocks.0.1"), _fna_block,
                lambda ns, nl: (f"blocks.{ns + 1}.conv.0", f"blocks.{ns + 1}.conv.1"), "classifier"),
    )
}
# FNA's seed was trained with BatchNorm eps 1e-3 (torchvision and timm use 1e-5).
_LAYOUT_BN_EPS = {"fna": 1e-3}


@dataclass
class LoadReport:
    path: str
    layout: str
    loaded: int  # tensors copied
    ignored: list[str] = field(default_factory=list)  # file keys the network has no place for, by request
    notes: list[str] = field(default_factory=list)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a .pth/.pt (loaded with ``weights_only=True``) or
    .safetensors file, unwrapping ``state_dict``/``model`` wrappers and ``module.`` prefixes."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"{path}: reading .safetensors needs the safetensors package "
                             "(pip install safetensors)") from None
        try:
            return dict(load_file(str(path)))
        except Exception as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    return _unwrap(load_plain(path, "weights file"), path)


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in ("state_dict", "model", "model_state_dict", "module")
                      if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"{path}: not a state dict: its top-level keys {sorted(obj)[:8]} hold no "
                             "'state_dict' or 'model' entry and not only tensors")
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: not a state dict (found {type(obj).__name__})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def detect_layout(state_dict: dict[str, torch.Tensor]) -> str | None:
    return next((name for name, layout in LAYOUTS.items() if layout.marker in state_dict), None)


def _module_map(model: Network, layout: _Layout, skip_classifier: bool) -> dict[str, str]:
    """{module path in ``model``: key prefix in the file} for every module that owns tensors."""
    pairs = {"stem.conv": layout.stem[0], "stem.bn": layout.stem[1]}
    flat = 0
    for s, stage in enumerate(model.stages):
        for j, layer in enumerate(stage):
            flat += 1
            if isinstance(layer, MBConv):
                for part, source in layout.block(s, j, flat, layer.expand is None).items():
                    pairs[f"stages.{s}.{j}.{part}"] = source
    if model.head is not None:
        pairs["head.conv"], pairs["head.bn"] = layout.head(len(model.stages), flat)
    if model.classifier is not None and not skip_classifier:
        pairs["classifier"] = layout.classifier
    return pairs


def load_seed_weights(model: Network, path: str | Path, *, skip_classifier: bool = False) -> LoadReport:
    """Copies the weights in ``path`` into ``model`` (an fna_ext :class:`Network`).

    The layout is detected from the keys. Every tensor of the network must be found with the
    right shape, and every tensor of the file must have a place, except the classifier (and head)
    when the network has none or ``skip_classifier`` is set; otherwise a ``ValueError`` names the
    keys. Nothing is copied unless everything fits.
    """
    state = read_state_dict(path)
    layout_name = detect_layout(state)
    if layout_name is None:
        raise ValueError(f"{path}: unrecognised weight layout (first keys: {list(state)[:5]}); "
                         "expected torchvision, timm, FNA or fna_ext keys")
    layout = LAYOUTS[layout_name]
    modules = dict(model.named_modules())
    targets = model.state_dict()
    copies, missing, mismatched, placed = [], [], [], set()  # placed: file keys the network has a place for
    for module_path, source in _module_map(model, layout, skip_classifier).items():
        for name in modules[module_path].state_dict():
            key, target_key = f"{source}.{name}", f"{module_path}.{name}"
            placed.add(key)
            if key not in state:
                if name != "num_batches_tracked":  # absent from some exporters, never needed
                    missing.append(key)
            elif state[key].shape != targets[target_key].shape:
                mismatched.append(f"{key}: file {tuple(state[key].shape)} vs network "
                                  f"{tuple(targets[target_key].shape)} ({target_key})")
            else:
                copies.append((target_key, key))
    optional = _optional_prefixes(model, layout, skip_classifier)
    ignored = [k for k in state if k not in placed and k.startswith(optional)]
    # a key of the wrong shape is a mismatch, not also unexpected
    unexpected = [k for k in state if k not in placed and not k.startswith(optional)
                  and not k.endswith("num_batches_tracked")]
    problems = [f"{what} ({len(keys)}): {', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}"
                for what, keys in (("missing keys", missing), ("shape mismatches", mismatched),
                                   ("unexpected keys", unexpected)) if keys]
    if problems:
        raise ValueError(f"{path} ({layout_name} layout) does not fit the network {model.arch}: "
                         + "; ".join(problems))
    with torch.no_grad():
        for target_key, key in copies:
            targets[target_key].copy_(state[key])
    report = LoadReport(str(path), layout_name, len(copies), ignored)
    # a network built for these weights has their eps already (seed_bn_eps); one built otherwise
    # is told, and given it, rather than left to normalise differently from its training
    eps = _LAYOUT_BN_EPS.get(layout_name)
    mismatched = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and eps is not None and m.eps != eps]
    for m in mismatched:
        m.eps = eps
    if mismatched:
        report.notes.append(f"BatchNorm eps set to {eps}, as the {layout_name} seed was trained")
    return report


def seed_bn_eps(path: str | Path) -> float:
    """The BatchNorm eps the weights of ``path`` were trained with (FNA's seed: 1e-3; torchvision,
    timm and fna_ext: 1e-5), so that the network is built with it."""
    return _LAYOUT_BN_EPS.get(detect_layout(read_state_dict(path)), 1e-5)


def _optional_prefixes(model: Network, layout: _Layout, skip_classifier: bool) -> tuple[str, ...]:
    """Key prefixes of the file that may go unused: the parts the network does not have."""
    prefixes = []
    if model.classifier is None or skip_classifier:
        prefixes.append(layout.classifier + ".")
    if model.head is None:
        prefixes += [p + "." for p in layout.head(len(model.stages), model.arch.num_layers())]
    return tuple(prefixes)  # str.startswith(()) is False: nothing optional
