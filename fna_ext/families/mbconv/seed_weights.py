"""Loading pretrained seed weights from the layouts people have: torchvision's ``mobilenet_v2``,
``mobilenet_v3_large``/``_small``, ``efficientnet_b0`` and ``mnasnet1_0``; timm's MBConv networks
(``mobilenetv2_100``, ``semnasnet_100``, ``mnasnet_100``, ``spnasnet_100``, ``fbnetc_100``,
``mobilenetv3_*_100``, ``efficientnet_b0``: ``conv_stem``, ``bn1``, ``blocks.S.J.*`` with
``se.conv_reduce``/``se.conv_expand``, ``conv_head``, ``classifier``); FNA's own seed and fna_ext's. Keys are matched by walking the network's structure, and every shape is checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ...safe_load import load_plain
from .blocks import MBConv
from .network import Network

# Parts of an MBConv block that own tensors, in fna_ext's own naming, in the order they compute.
_CONV_BN_PARTS = ("expand", "depthwise", "project")
_SE_PARTS = ("se.reduce", "se.expand")


def _parts(layer: MBConv) -> list[str]:
    """The block's parts that own tensors: ``expand`` (where it has one), ``depthwise``, ``se``
    (where it has one), ``project``."""
    return (["expand"] if layer.expand is not None else []) + ["depthwise"] + \
        (["se"] if layer.se is not None else []) + ["project"]


def _conv_bn(part: str, conv: str, bn: str) -> dict[str, str]:
    return {f"{part}.conv": conv, f"{part}.bn": bn}


def _sequential_block(prefix: str, layer: MBConv, se_names=("fc1", "fc2")) -> dict[str, str]:
    """torchvision's MobileNetV3 and EfficientNet blocks: ``block.{i}`` numbers the parts that are
    present, each a conv (``.0``) and BN (``.1``), the SE's convs ``fc1`` and ``fc2``."""
    out = {}
    for i, part in enumerate(_parts(layer)):
        if part == "se":
            out.update({"se.reduce": f"{prefix}.block.{i}.{se_names[0]}", "se.expand": f"{prefix}.block.{i}.{se_names[1]}"})
        else:
            out.update(_conv_bn(part, f"{prefix}.block.{i}.0", f"{prefix}.block.{i}.1"))
    return out


def _conv_bn_parts(layer: MBConv, pairs) -> dict[str, str]:
    """The block's conv-BN parts (expand where present, depthwise, project) named by ``pairs`` of
    (conv, BN) prefixes, in that order."""
    parts = [part for part in _parts(layer) if part != "se"]
    return {key: source for part, (conv, bn) in zip(parts, pairs, strict=True)
            for key, source in _conv_bn(part, conv, bn).items()}


def _every_third(prefix: str, layer: MBConv, first: int = 0) -> list[tuple[str, str]]:
    # one nn.Sequential of conv, BN, activation per part: convs at 0, 3, 6, BNs after them
    count = 3 if layer.expand is not None else 2
    return [(f"{prefix}.{3 * i}", f"{prefix}.{3 * i + 1}") for i in range(first, first + count)]


def _torchvision_v2_block(s, j, flat, layer):
    p = f"features.{flat}.conv"
    head = [(f"{p}.0.0", f"{p}.0.1")] + ([(f"{p}.1.0", f"{p}.1.1")] if layer.expand is not None else [])
    last = 2 if layer.expand is not None else 1
    return _conv_bn_parts(layer, head + [(f"{p}.{last}", f"{p}.{last + 1}")])


def _torchvision_mnasnet_block(s, j, flat, layer):
    if s == 0:  # the depthwise-separable first stage is part of the flat stem sequence, after its conv
        return _conv_bn_parts(layer, _every_third("layers", layer, first=1))
    return _conv_bn_parts(layer, _every_third(f"layers.{7 + s}.{j}.layers", layer))


def _timm_block(s, j, flat, layer):
    p = f"blocks.{s}.{j}"
    names = ([("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")] if layer.expand is not None  # InvertedResidual
             else [("conv_dw", "bn1"), ("conv_pw", "bn2")])                                           # DepthwiseSeparableConv
    out = _conv_bn_parts(layer, [(f"{p}.{conv}", f"{p}.{bn}") for conv, bn in names])
    if layer.se is not None:
        out.update({"se.reduce": f"{p}.se.conv_reduce", "se.expand": f"{p}.se.conv_expand"})
    return out


def _fna_block(s, j, flat, layer):
    # FNA's MBBlock is one nn.Sequential: conv, BN, ReLU6, dw conv, BN, ReLU6, conv, BN.
    return _conv_bn_parts(layer, _every_third(f"blocks.{s + 1}.layers.{j}.op", layer))


def _own_block(s, j, flat, layer):
    parts = [f"{part}.{kind}" for part in _parts(layer) if part != "se" for kind in ("conv", "bn")]
    parts += list(_SE_PARTS) if layer.se is not None else []
    return {part: f"stages.{s}.{j}.{part}" for part in parts}


def _has_pre_logits(model: Network) -> bool:
    return bool(model.arch.fixed.get("pre_logits"))


def _timm_head(model, ns, nl):
    # MobileNetV3's last 1x1 conv is timm's last block (a ConvBnAct); the others' is conv_head
    return (f"blocks.{ns}.0.conv", f"blocks.{ns}.0.bn1") if _has_pre_logits(model) else ("conv_head", "bn2")


@dataclass(frozen=True)
class _Layout:
    name: str
    marker: str  # a key only this layout has
    stem: tuple[str, str]
    # (stage, layer, flat layer number from 1, the MBConv) -> {part: source prefix}
    block: Callable[[int, int, int, MBConv], dict[str, str]]
    head: Callable[[Network, int, int], tuple[str, str]]  # (model, num stages, num layers) -> conv, bn prefixes
    classifier: str
    pre_logits: str = ""  # MobileNetV3's layer after pooling, where the layout has one
    bn_eps: float | None = None  # the eps the layout's networks were trained with, where not 1e-5


LAYOUTS = {
    layout.name: layout for layout in (
        _Layout("fna_ext", "stem.conv.weight", ("stem.conv", "stem.bn"), _own_block,
                lambda m, ns, nl: ("head.conv", "head.bn"), "classifier", "pre_logits.0"),
        _Layout("torchvision", "features.1.conv.0.0.weight", ("features.0.0", "features.0.1"),
                _torchvision_v2_block,
                lambda m, ns, nl: (f"features.{nl + 1}.0", f"features.{nl + 1}.1"), "classifier.1"),
        _Layout("torchvision_mobilenet_v3", "features.1.block.0.0.weight", ("features.0.0", "features.0.1"),
                lambda s, j, flat, layer: _sequential_block(f"features.{flat}", layer),
                lambda m, ns, nl: (f"features.{nl + 1}.0", f"features.{nl + 1}.1"), "classifier.3",
                "classifier.0", bn_eps=1e-3),
        _Layout("torchvision_efficientnet", "features.1.0.block.0.0.weight", ("features.0.0", "features.0.1"),
                lambda s, j, flat, layer: _sequential_block(f"features.{s + 1}.{j}", layer),
                lambda m, ns, nl: (f"features.{ns + 1}.0", f"features.{ns + 1}.1"), "classifier.1"),
        _Layout("torchvision_mnasnet", "layers.8.0.layers.0.weight", ("layers.0", "layers.1"),
                _torchvision_mnasnet_block, lambda m, ns, nl: ("layers.14", "layers.15"), "classifier.1"),
        _Layout("timm", "conv_stem.weight", ("conv_stem", "bn1"), _timm_block, _timm_head, "classifier",
                "conv_head"),
        _Layout("fna", "blocks.0.0.weight", ("blocks.0.0", "blocks.0.1"), _fna_block,
                lambda m, ns, nl: (f"blocks.{ns + 1}.conv.0", f"blocks.{ns + 1}.conv.1"), "classifier",
                bn_eps=1e-3),  # FNA's seed was trained with BatchNorm eps 1e-3
    )
}


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
                for part, source in layout.block(s, j, flat, layer).items():
                    pairs[f"stages.{s}.{j}.{part}"] = source
    if model.head is not None:
        pairs["head.conv"], pairs["head.bn"] = layout.head(model, len(model.stages), flat)
    if getattr(model, "pre_logits", None) is not None and not skip_classifier:
        if not layout.pre_logits:
            raise ValueError(f"the {layout.name} layout has no layer after pooling for the network's pre_logits")
        pairs["pre_logits.0"] = layout.pre_logits
    if model.classifier is not None and not skip_classifier:
        pairs["classifier"] = layout.classifier
    return pairs


def _fits(source: torch.Tensor, target: torch.Tensor) -> bool:
    """Same shape, or timm's 1x1 conv for a linear layer (MobileNetV3's conv_head)."""
    return source.shape == target.shape or source.shape == target.shape + (1, 1)


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
                         "expected torchvision (mobilenet_v2, mobilenet_v3_*, efficientnet_b0, mnasnet1_0), "
                         "timm, FNA or fna_ext keys")
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
            elif not _fits(state[key], targets[target_key]):
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
            targets[target_key].copy_(state[key].reshape(targets[target_key].shape))
    report = LoadReport(str(path), layout_name, len(copies), ignored)
    # a network built for these weights has their eps already (seed_bn_eps); one built otherwise
    # is told, and given it, rather than left to normalise differently from its training
    eps = layout.bn_eps
    mismatched = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and eps is not None and m.eps != eps]
    for m in mismatched:
        m.eps = eps
    if mismatched:
        report.notes.append(f"BatchNorm eps set to {eps}, as the {layout_name} seed was trained")
    return report


def seed_bn_eps(path: str | Path) -> float:
    """The BatchNorm eps the weights of ``path`` were trained with (FNA's seed: 1e-3; torchvision,
    timm and fna_ext: 1e-5), so that the network is built with it."""
    layout = detect_layout(read_state_dict(path))
    return (LAYOUTS[layout].bn_eps if layout else None) or 1e-5


def _optional_prefixes(model: Network, layout: _Layout, skip_classifier: bool) -> tuple[str, ...]:
    """Key prefixes of the file that may go unused: the parts the network does not have."""
    prefixes = []
    if model.classifier is None or skip_classifier:
        prefixes.append(layout.classifier + ".")
        if layout.pre_logits:
            prefixes.append(layout.pre_logits + ".")
    if model.head is None:
        prefixes += [p + "." for p in layout.head(model, len(model.stages), model.arch.num_layers())]
    return tuple(prefixes)  # str.startswith(()) is False: nothing optional
