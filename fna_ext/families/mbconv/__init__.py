"""The MBConv seed family (MobileNetV2 and the NAS-found MBConv networks): networks built from
architectures as data, and loading of pretrained seed weights.

Names load on first use (PEP 562), so :mod:`fna_ext.arch` can read this family's op grammar
(:mod:`.op`) without importing the blocks, which themselves import :mod:`fna_ext.arch`."""

import importlib

_EXPORTS = {
    "ConvBNAct": "blocks", "MBConv": "blocks", "Skip": "blocks", "make_layer": "blocks",
    "Network": "network", "build_network": "network", "mobilenet_v2": "network",
    "LoadReport": "seed_weights", "load_seed_weights": "seed_weights", "read_state_dict": "seed_weights",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
