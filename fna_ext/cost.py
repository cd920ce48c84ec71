"""Parameter and multiply-add counting under the convention of FNA's tables.

Params: every trainable parameter. MAdds: per image, over conv and linear layers,
``k_h * k_w * C_in * C_out / groups * H_out * W_out``, plus ``C_out * H_out * W_out`` where the
layer has a bias. A transposed convolution scatters each input position through its whole kernel,
so it counts ``k_h * k_w * C_in * C_out / groups * H_in * W_in`` (plus its bias per output
position): a 4x4 stride-2 deconvolution costs what a 4x4 conv at its input's resolution would,
four times a 2x2-equivalent conv at its output's. BatchNorm, activations, additions and resizing are not counted. The shapes come
from one real forward pass at batch size 1, so any network counts, whatever its control flow.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn


@dataclass
class ModuleCost:
    name: str
    kind: str
    params: int
    madds: int
    output_shape: tuple[int, ...] = ()


@dataclass
class CostReport:
    params: int
    madds: int
    input_size: tuple[int, int]
    modules: list[ModuleCost] = field(default_factory=list)

    def grouped(self, group_of: Callable[[str], str] | None = None) -> "OrderedDict[str, tuple[int, int]]":
        """(params, madds) summed per group, in network order. The default groups a module by the
        first component of its name, or the first three under ``stages`` (one row per layer)."""
        group_of = group_of or default_group
        groups: OrderedDict[str, list[int]] = OrderedDict()
        for m in self.modules:
            totals = groups.setdefault(group_of(m.name), [0, 0])
            totals[0] += m.params
            totals[1] += m.madds
        return OrderedDict((k, (p, a)) for k, (p, a) in groups.items())

    def to_dict(self) -> dict:
        return {"params": self.params, "madds": self.madds, "input_size": list(self.input_size),
                "modules": [asdict(m) for m in self.modules]}


def default_group(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "stages" and len(parts) > 1 else parts[0]


def conv_madds(conv: nn.Conv2d, output: torch.Tensor) -> int:
    k_h, k_w = conv.kernel_size
    positions = output.shape[-1] * output.shape[-2]
    madds = k_h * k_w * conv.in_channels * conv.out_channels // conv.groups * positions
    return madds + (conv.out_channels * positions if conv.bias is not None else 0)


def deconv_madds(deconv: nn.ConvTranspose2d, output: torch.Tensor, inputs: tuple) -> int:
    k_h, k_w = deconv.kernel_size
    madds = k_h * k_w * deconv.in_channels * deconv.out_channels // deconv.groups * _positions(inputs[0])
    return madds + (deconv.out_channels * _positions(output) if deconv.bias is not None else 0)


def _positions(tensor: torch.Tensor) -> int:
    return tensor.shape[-1] * tensor.shape[-2]


def linear_madds(linear: nn.Linear, output: torch.Tensor) -> int:
    positions = output[0].numel() // linear.out_features  # tokens per image
    madds = linear.in_features * linear.out_features * positions
    return madds + (linear.out_features * positions if linear.bias is not None else 0)


# each rule takes (module, output, inputs)
_MADDS_RULES = {nn.Conv2d: lambda m, out, _: conv_madds(m, out), nn.Linear: lambda m, out, _: linear_madds(m, out),
                nn.ConvTranspose2d: deconv_madds}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count(model: nn.Module, input_size: Iterable[int], *, forward: Callable | None = None) -> CostReport:
    """Params and MAdds of ``model`` for one image of ``input_size`` = (H, W), with a per-module
    breakdown. ``forward(model, x)`` overrides how the model is called (default ``model(x)``)."""
    h, w = (int(v) for v in input_size)
    if h < 1 or w < 1:
        raise ValueError(f"input_size must be two positive integers (H, W), got {(h, w)}")
    madds: dict[str, tuple[int, tuple[int, ...]]] = {}
    hooks = []
    for name, module in model.named_modules():
        # subclasses count as their base (an AtrousConv2d counts its whole kernel, as the paper does)
        rule = next((_MADDS_RULES[c] for c in type(module).__mro__ if c in _MADDS_RULES), None)
        if rule is None:
            continue

        def hook(mod, inputs, output, name=name, rule=rule):
            previous = madds.get(name, (0, ()))[0]  # a module called twice counts twice
            madds[name] = (previous + rule(mod, output, inputs), tuple(output.shape[1:]))

        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    param = next(model.parameters(), None)
    x = torch.zeros(1, 3, h, w, device=param.device if param is not None else "cpu",
                    dtype=param.dtype if param is not None else torch.float32)
    try:
        model.eval()
        with torch.no_grad():
            (forward or (lambda m, t: m(t)))(model, x)
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    rows = []
    for name, module in model.named_modules():
        own_params = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
        module_madds, shape = madds.get(name, (0, ()))
        if own_params or module_madds:
            rows.append(ModuleCost(name, type(module).__name__, own_params, module_madds, shape))
    return CostReport(count_params(model), sum(m for m, _ in madds.values()), (h, w), rows)
