"""The registry of seed families. A family is a :class:`Family` (one subpackage of this package)
and one line in :data:`_BUILT_IN`; :func:`register` adds one at run time.

Families load on first use: :mod:`fna_ext.arch` asks the registry for an op grammar while the
families' own modules import :mod:`fna_ext.arch`."""

from __future__ import annotations

import importlib

from .base import ARCH_HEAD, Family, FeatureInfo

# name -> "module:attribute" of the family object
_BUILT_IN = {"mbconv": "fna_ext.families.mbconv.family:MBCONV",
             "resnet": "fna_ext.families.resnet.family:RESNET"}
_LOADED: dict[str, Family] = {}
DEFAULT = "mbconv"


def register(family: Family) -> Family:
    if not family.name:
        raise ValueError("a family needs a name")
    _LOADED[family.name] = family
    return family


def unregister(name: str) -> None:
    _LOADED.pop(name, None)


def family_names() -> list[str]:
    return sorted({*_BUILT_IN, *_LOADED})


def get_family(name: str | None = None) -> Family:
    """The family called ``name`` (default: mbconv)."""
    name = name or DEFAULT
    if name not in _LOADED:
        if name not in _BUILT_IN:
            raise ValueError(f"unknown seed family {name!r}; choose one of {family_names()}")
        module, _, attribute = _BUILT_IN[name].partition(":")
        _LOADED[name] = getattr(importlib.import_module(module), attribute)
    return _LOADED[name]


__all__ = ["ARCH_HEAD", "Family", "FeatureInfo", "register", "unregister", "family_names", "get_family", "DEFAULT"]
