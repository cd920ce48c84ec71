"""The ResNet seed family (ResNet-18/34/50, Wide ResNet-50-2, ResNeXt-50 and the networks FNA++ derives from them): BasicBlock and
Bottleneck stages in torchvision's layout, built from architectures as data.

Names load on first use (PEP 562), as in the MBConv family, so :mod:`fna_ext.arch` can read the
grammar (:mod:`.op`) without importing the blocks."""

import importlib

_EXPORTS = {
    "Op": "op", "BasicBlock": "blocks", "Bottleneck": "blocks", "make_block": "blocks",
    "Network": "network", "Stem": "network", "resnet18": "network", "resnet34": "network", "resnet50": "network",
    "wide_resnet50_2": "network", "resnext50_32x4d": "network",
    "load_seed_weights": "seed_weights",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
