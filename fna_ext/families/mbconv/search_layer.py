"""The MBConv family's searched layer: a layer's candidate ops (k, e) over one shared max-size
MBConv (or one MBConv each), run as one sampled op (path mode) or as their softmax(alpha)-weighted
mixture (mixture mode), through the fused ops. A NAS seed's candidates pass their activation and
SE to the sampled ops; the whole-mixture op computes MobileNetV2's block (ReLU6, no SE) only, so
a NAS seed's mixture shares the widest expansion and runs each candidate's fused tail on it."""

from __future__ import annotations

import torch
from torch import nn

from ...ops import sampled_mbconv
from ...ops.mbconv_mixture import depthwise_project_mixture, mbconv_mixture
from ...ops.sampled_mbconv import SqueezeExcite, depthwise_project, expand_hidden
from ...ops.slices import mbconv_regions
from ..norm import candidate_batch_norm
from ..sampled import SampledRegion
from .blocks import MBConv
from .candidates import module_key, widest_op
from .op import GATES, Op


class SearchLayer(nn.Module):
    """One searched layer: its candidate ops over shared or independent weights."""

    def __init__(self, spec, weight_sharing: str, affine_bn: bool, bn_eps: float):
        super().__init__()
        self.spec, self.weight_sharing, self.affine_bn, self.bn_eps = spec, weight_sharing, affine_bn, bn_eps
        ops = [op for op in spec.candidates if not Op.parse(op).is_skip]
        self.widest = widest_op(spec.candidates)
        owners = [self.widest] if weight_sharing == "shared" else ops
        norm = candidate_batch_norm(bn_eps, affine_bn)
        self.blocks = nn.ModuleDict({module_key(name): MBConv(spec.in_channels, spec.out_channels, Op.parse(name).kernel,
                                                        Op.parse(name).expansion, spec.stride, spec.dilation,
                                                        norm_layer=norm, attributes=Op.parse(name))
                                     for name in owners})
        # the whole-mixture op computes MobileNetV2's block (ReLU6, no SE) only
        self.whole_mixture = all(Op.parse(op).uses_relu6_only for op in ops)
        self.choice: str | torch.Tensor | None = None  # an op name, or mixture weights
        # mixture mode: keep neither the expansion nor the depthwise outputs for the backward,
        # which recomputes them
        # (fna_ext.ops.mbconv_mixture's recompute; the super network sets it)
        self.recompute = False

    def _owner(self, op: str) -> MBConv:
        return self.blocks[module_key(self.widest if self.weight_sharing == "shared" else op)]

    def _bn_args(self, block: MBConv) -> dict:
        if not self.affine_bn:
            return {}
        bns = (block.expand.bn, block.depthwise.bn, block.project.bn)
        return {f"bn{i}_{kind}": getattr(bn, kind) for i, bn in enumerate(bns, 1) for kind in ("weight", "bias")}

    def _expansion(self, op: str) -> int:
        return Op.parse(op).hidden_channels(self.spec.in_channels)

    def _attributes(self, op: str, block: MBConv) -> dict:
        """The op's activation and SE (its first squeezed channels of the shared SE) for the fused ops."""
        parsed = Op.parse(op)
        se = None
        if parsed.se:  # MobileNetV3's SE has ReLU inside; MnasNet's and EfficientNet's the block's activation
            se = SqueezeExcite(block.se.reduce.weight, block.se.reduce.bias, block.se.expand.weight,
                               block.se.expand.bias, parsed.se_channels(self.spec.in_channels),
                               "relu" if parsed.se == "hse" else parsed.activation, GATES[parsed.se])
        return dict(activation=parsed.activation, se=se)

    def run_op(self, x: torch.Tensor, op: str) -> torch.Tensor:
        parsed = Op.parse(op)
        if parsed.is_skip:
            return x
        if not parsed.has_expand:
            return self._rest_of_block(x, x, op)
        block = self._owner(op)
        return sampled_mbconv(x, block.expand.conv.weight, block.depthwise.conv.weight, block.project.conv.weight,
                              kernel_size=parsed.kernel, expand_channels=self._expansion(op),
                              stride=self.spec.stride, eps=self.bn_eps, dilation=self.spec.dilation,
                              **self._bn_args(block), **self._attributes(op, block))

    def expansion_output(self, x: torch.Tensor, op: str) -> torch.Tensor:
        """The op's expand conv -> BN -> activation output (for a detector feature tap); the input
        where the op has no expand conv."""
        parsed = Op.parse(op)
        if not parsed.has_expand:
            return x
        block = self._owner(op)
        bn = self._bn_args(block)
        return expand_hidden(x, block.expand.conv.weight, self._expansion(op), bn.get("bn1_weight"),
                             bn.get("bn1_bias"), self.bn_eps, parsed.activation)

    def _rest_of_block(self, x: torch.Tensor, hidden: torch.Tensor, op: str) -> torch.Tensor:
        block, parsed = self._owner(op), Op.parse(op)
        bn = self._bn_args(block)
        return depthwise_project(x, hidden, block.depthwise.conv.weight, block.project.conv.weight,
                                 kernel_size=parsed.kernel, stride=self.spec.stride,
                                 bn2_weight=bn.get("bn2_weight"), bn2_bias=bn.get("bn2_bias"),
                                 bn3_weight=bn.get("bn3_weight"), bn3_bias=bn.get("bn3_bias"), eps=self.bn_eps,
                                 dilation=self.spec.dilation, **self._attributes(op, block))

    def sampled_regions(self, op: str) -> dict[nn.Parameter, SampledRegion]:
        """In shared mode, which entries of the max-size weights op (k, e) uses (boxes: its first
        e hidden channels and centre k x k taps): the optimiser step must leave the others (other
        candidates' weights) where they were."""
        parsed = Op.parse(op)
        if self.weight_sharing != "shared" or parsed.is_skip:
            return {}
        block = self._owner(op)
        regions = mbconv_regions(Op.parse(self.widest).kernel, parsed.kernel, self._expansion(op))
        owned = [(block.expand.conv.weight, "expand"), (block.depthwise.conv.weight, "depthwise"),
                 (block.project.conv.weight, "project")]
        if self.affine_bn:
            owned += [(p, "hidden_bn") for bn in (block.expand.bn, block.depthwise.bn) for p in (bn.weight, bn.bias)]
        boxes = {param: SampledRegion(regions[part]) for param, part in owned}
        if block.se is not None:  # the first squeezed channels of the candidate's hidden ones
            hidden, squeezed = slice(0, self._expansion(op)), slice(0, parsed.se_channels(self.spec.in_channels))
            boxes.update({block.se.reduce.weight: SampledRegion((squeezed, hidden)),
                          block.se.reduce.bias: SampledRegion((squeezed,)),
                          block.se.expand.weight: SampledRegion((hidden, squeezed)),
                          block.se.expand.bias: SampledRegion((hidden,))})
        return boxes

    def _mixture(self, x: torch.Tensor, tap: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(softmax-weighted sum of every candidate's output, weighted sum of their expansion
        outputs). With shared weights the candidates run as one mixture op, which computes the
        widest expansion once (materialised only when a detector taps it)."""
        if self.weight_sharing != "shared" or not self.whole_mixture:
            return self._independent_mixture(x, tap)
        positions = [i for i, op in enumerate(self.spec.candidates) if not Op.parse(op).is_skip]
        ops = [self.spec.candidates[i] for i in positions]
        widest = max(ops, key=self._expansion)
        block = self._owner(widest)
        bn = self._bn_args(block)
        common = dict(candidates=[(Op.parse(op).kernel, self._expansion(op)) for op in ops], stride=self.spec.stride,
                      eps=self.bn_eps, dilation=self.spec.dilation, recompute=self.recompute,
                      **{k: v for k, v in bn.items() if not k.startswith("bn1")})
        weights = self.choice[positions]
        shared = self.expansion_output(x, widest) if tap else None
        if tap:
            out = depthwise_project_mixture(x, shared, weights, block.depthwise.conv.weight, block.project.conv.weight,
                                            **common)
        else:
            out = mbconv_mixture(x, block.expand.conv.weight, weights, block.depthwise.conv.weight,
                                 block.project.conv.weight, bn1_weight=bn.get("bn1_weight"),
                                 bn1_bias=bn.get("bn1_bias"), **common)
        for w, op in zip(self.choice, self.spec.candidates):
            if Op.parse(op).is_skip:
                out = out + w * x
        if not tap:
            return out, None
        full = [i for i, op in zip(positions, ops) if self._expansion(op) == self._expansion(widest)]
        return out, shared * self.choice[full].sum()

    def _independent_mixture(self, x: torch.Tensor, tap: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        ops = [op for op in self.spec.candidates if not Op.parse(op).is_skip]
        widest = max(ops, key=self._expansion)
        # shared weights: every step up to the expansion's activation is per channel, so the
        # first channels of the widest expansion are each narrower candidate's own
        shared = self.expansion_output(x, widest) if self.weight_sharing == "shared" else None
        out, tapped = 0, 0
        for w, op in zip(self.choice, self.spec.candidates):
            if Op.parse(op).is_skip:
                out = out + w * x
                continue
            if not Op.parse(op).has_expand:
                hidden = x
            elif shared is not None:
                hidden = shared[:, :self._expansion(op)]
            else:
                hidden = self.expansion_output(x, op)
            out = out + w * self._rest_of_block(x, hidden, op)
            if tap and hidden.shape[1] == self._expansion(widest):
                tapped = tapped + w * hidden
        return out, (tapped if tap else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tapping_expand(x, tap=False)[0]

    def forward_tapping_expand(self, x: torch.Tensor, tap: bool = True):
        """(output, expansion output); a tapped layer's candidates all have one expansion width
        (SSDLite's e6-only first layer), so the weighted sum of their expansions is well formed."""
        if isinstance(self.choice, str):
            out = self.run_op(x, self.choice)
            return out, (self.expansion_output(x, self.choice) if tap else None)
        if self.choice is None:
            raise RuntimeError(f"layer {self.spec.key}: set a path or mixture on the super network first")
        return self._mixture(x, tap)
