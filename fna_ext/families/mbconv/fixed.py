"""The MBConv family's fixed-part settings (``Arch.fixed``): what MobileNetV2's stem and head
have by default, and what the NAS-found networks change.

- ``act``: the stem's and head's activation token (``re``, ``hs`` or ``sw``; ReLU6 when absent);
- ``head``: the 1x1 head conv's width (1280 when absent: MobileNetV2's, MnasNet's, EfficientNet-B0's);
- ``pre_logits``: MobileNetV3's hidden layer between pooling and classifier (none when absent).
"""

from __future__ import annotations

from .op import ACT_TOKENS

KEYS = ("act", "head", "pre_logits")
DEFAULTS = {"head": 1280}


def _positive(key: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"fixed part {key!r} must be a positive integer (channels), got {value!r}")
    return value


def check_fixed(fixed: dict) -> dict:
    """The canonical settings: known keys in :data:`KEYS` order, defaults dropped."""
    unknown = sorted(set(fixed) - set(KEYS), key=str)
    if unknown:
        raise ValueError(f"unknown fixed-part setting(s) {unknown}; the MBConv family's are {list(KEYS)}")
    out = {}
    if fixed.get("act"):
        if fixed["act"] not in ACT_TOKENS:
            raise ValueError(f"fixed part 'act' must be one of {[t for t in ACT_TOKENS if t]} "
                             f"(ReLU6 when absent), got {fixed['act']!r}")
        out["act"] = fixed["act"]
    if "head" in fixed and _positive("head", fixed["head"]) != DEFAULTS["head"]:
        out["head"] = fixed["head"]
    if fixed.get("pre_logits") is not None:
        out["pre_logits"] = _positive("pre_logits", fixed["pre_logits"])
    return out
