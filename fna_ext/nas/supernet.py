"""FNA's super network: the seed's fixed parts (stem, the k3_e1 stage, the head conv) and, per
searched layer, a choice among the candidate ops of a :class:`~fna_ext.nas.search_space.SearchSpace`.

Two weight modes:

- ``shared`` (default): one max-size MBConv (7x7 depthwise, expansion 6) per layer; a candidate
  (k, e) is the centre k x k and the first e * C_in hidden channels of it (Once-for-All style), run
  through :func:`fna_ext.ops.sampled_mbconv`;
- ``independent``: every candidate has its own weights, as published.

Either way the initial state is the remapped seed: each candidate equals what the paper's
remapping gives for it (the max-size weight holds the remapped k7_e6 candidate, whose centre
slices are exactly the remapped smaller candidates under the ``first`` width rule).

Candidate BNs are non-affine and use batch statistics (as published); ``affine_bn=True`` gives
them trainable affine parameters (sliced in shared mode). A layer runs either one op (``path``
mode, the weight steps) or the softmax(alpha)-weighted sum of all its ops (``mixture`` mode, the
architecture steps); the search sets the mode before each forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..arch import Arch, Op, Stage
from ..families.mbconv.blocks import ConvBNAct, MBConv, make_layer
from ..families.mbconv.network import Network
from ..ops import sampled_mbconv
from ..ops.mbconv_mixture import depthwise_project_mixture, mbconv_mixture
from ..ops.sampled_mbconv import depthwise_project, expand_hidden
from ..remap import plan_candidates
from .search_space import SearchSpace

WEIGHT_MODES = ("shared", "independent")
MAX_OP = Op(7, 6)


@dataclass(frozen=True)
class LayerSpec:
    stage: int           # index in the seed arch (searched stages start at 1)
    layer: int           # index within the stage
    in_channels: int
    out_channels: int
    stride: int
    candidates: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"s{self.stage}_l{self.layer}"


def layer_specs(seed_arch: Arch, space: SearchSpace) -> list[LayerSpec]:
    if len(seed_arch.stages) - 1 != len(space.max_depths):
        raise ValueError(f"the {space.name} space searches {len(space.max_depths)} stages; the seed "
                         f"has {len(seed_arch.stages) - 1} after its first")
    specs = []
    for i, (stage, depth) in enumerate(zip(seed_arch.stages[1:], space.max_depths), start=1):
        for layer in range(depth):
            specs.append(LayerSpec(i, layer, stage.in_channels if layer == 0 else stage.out_channels,
                                   stage.out_channels, stage.stride if layer == 0 else 1,
                                   space.candidates(i - 1, layer)))
    return specs


class SearchLayer(nn.Module):
    """One searched layer: its candidate ops over shared or independent weights."""

    def __init__(self, spec: LayerSpec, weight_sharing: str, affine_bn: bool, bn_eps: float):
        super().__init__()
        self.spec, self.weight_sharing, self.affine_bn, self.bn_eps = spec, weight_sharing, affine_bn, bn_eps
        ops = [op for op in spec.candidates if not Op.parse(op).is_skip]
        owners = [MAX_OP.name] if weight_sharing == "shared" else ops
        self.blocks = nn.ModuleDict({name: MBConv(spec.in_channels, spec.out_channels, Op.parse(name).kernel,
                                                  Op.parse(name).expansion, spec.stride, bn_eps=bn_eps)
                                     for name in owners})
        self.choice: str | torch.Tensor | None = None  # an op name, or mixture weights

    def _owner(self, op: str) -> MBConv:
        return self.blocks[MAX_OP.name] if self.weight_sharing == "shared" else self.blocks[op]

    def _bn_args(self, block: MBConv) -> dict:
        if not self.affine_bn:
            return {}
        bns = (block.expand.bn, block.depthwise.bn, block.project.bn)
        return {f"bn{i}_{kind}": getattr(bn, kind) for i, bn in enumerate(bns, 1) for kind in ("weight", "bias")}

    def _expansion(self, op: str) -> int:
        return Op.parse(op).expansion * self.spec.in_channels

    def run_op(self, x: torch.Tensor, op: str) -> torch.Tensor:
        parsed = Op.parse(op)
        if parsed.is_skip:
            return x
        block = self._owner(op)
        return sampled_mbconv(x, block.expand.conv.weight, block.depthwise.conv.weight, block.project.conv.weight,
                              kernel_size=parsed.kernel, expand_channels=self._expansion(op),
                              stride=self.spec.stride, eps=self.bn_eps, **self._bn_args(block))

    def expansion_output(self, x: torch.Tensor, op: str) -> torch.Tensor:
        """The op's expand conv -> BN -> ReLU6 output (for a detector feature tap)."""
        block = self._owner(op)
        bn = self._bn_args(block)
        return expand_hidden(x, block.expand.conv.weight, self._expansion(op), bn.get("bn1_weight"),
                             bn.get("bn1_bias"), self.bn_eps)

    def _rest_of_block(self, x: torch.Tensor, hidden: torch.Tensor, op: str) -> torch.Tensor:
        block, parsed = self._owner(op), Op.parse(op)
        bn = self._bn_args(block)
        return depthwise_project(x, hidden, block.depthwise.conv.weight, block.project.conv.weight,
                                 kernel_size=parsed.kernel, stride=self.spec.stride,
                                 bn2_weight=bn.get("bn2_weight"), bn2_bias=bn.get("bn2_bias"),
                                 bn3_weight=bn.get("bn3_weight"), bn3_bias=bn.get("bn3_bias"), eps=self.bn_eps)

    def sampled_masks(self, op: str) -> dict[nn.Parameter, torch.Tensor]:
        """In shared mode, which entries of the max-size weights op (k, e) uses: the optimiser
        step must leave the others (other candidates' weights) where they were."""
        parsed = Op.parse(op)
        if self.weight_sharing != "shared" or parsed.is_skip:
            return {}
        block = self._owner(op)
        e = parsed.expansion * self.spec.in_channels
        start = (MAX_OP.kernel - parsed.kernel) // 2
        masks = {}
        for param, region in ((block.expand.conv.weight, (slice(0, e),)),
                              (block.depthwise.conv.weight, (slice(0, e), slice(None), slice(start, start + parsed.kernel),
                                                              slice(start, start + parsed.kernel))),
                              (block.project.conv.weight, (slice(None), slice(0, e)))):
            mask = torch.zeros_like(param, dtype=torch.bool)
            mask[region] = True
            masks[param] = mask
        if self.affine_bn:
            for bn in (block.expand.bn, block.depthwise.bn):
                for param in (bn.weight, bn.bias):
                    mask = torch.zeros_like(param, dtype=torch.bool)
                    mask[:e] = True
                    masks[param] = mask
        return masks

    def _mixture(self, x: torch.Tensor, tap: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(softmax-weighted sum of every candidate's output, weighted sum of their expansion
        outputs). With shared weights the candidates run as one mixture op, which computes the
        widest expansion once (materialised only when a detector taps it)."""
        if self.weight_sharing != "shared":
            return self._independent_mixture(x, tap)
        positions = [i for i, op in enumerate(self.spec.candidates) if not Op.parse(op).is_skip]
        ops = [self.spec.candidates[i] for i in positions]
        widest = max(ops, key=self._expansion)
        block = self._owner(widest)
        bn = self._bn_args(block)
        common = dict(candidates=[(Op.parse(op).kernel, self._expansion(op)) for op in ops], stride=self.spec.stride,
                      eps=self.bn_eps, **{k: v for k, v in bn.items() if not k.startswith("bn1")})
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
        out, tapped = 0, 0
        for w, op in zip(self.choice, self.spec.candidates):
            if Op.parse(op).is_skip:
                out = out + w * x
                continue
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


class SuperNetwork(nn.Module):
    """Stem, the fixed first stage, the searched layers (``stages[i][j]`` are SearchLayers) and the
    head conv, laid out like :class:`~fna_ext.families.mbconv.Network` so detectors tap it the same way."""

    def __init__(self, seed_arch: Arch, space: SearchSpace, *, seed: Network | None = None,
                 weight_sharing: str = "shared", affine_bn: bool = False, head_channels: int | None = 1280,
                 bn_eps: float = 1e-5, width: str = "first", kernel: str = "center"):
        super().__init__()
        if weight_sharing not in WEIGHT_MODES:
            raise ValueError(f"weight_sharing must be one of {WEIGHT_MODES}, got {weight_sharing!r}")
        self.seed_arch, self.space, self.weight_sharing = seed_arch, space, weight_sharing
        self.specs = layer_specs(seed_arch, space)
        self.stem = ConvBNAct(3, seed_arch.stem_channels, 3, stride=2, bn_eps=bn_eps)
        first = seed_arch.stages[0]
        stages = [nn.Sequential(*(make_layer(c_in, c_out, s, op, bn_eps) for c_in, c_out, s, op in first.layers()))]
        for i in range(1, len(seed_arch.stages)):
            stages.append(nn.Sequential(*(SearchLayer(spec, weight_sharing, affine_bn, bn_eps)
                                          for spec in self.specs if spec.stage == i)))
        self.stages = nn.ModuleList(stages)
        self.head = ConvBNAct(seed_arch.out_channels, head_channels, 1, bn_eps=bn_eps) if head_channels else None
        # the widest choice of every layer: what detectors read their tapped channels from
        self.arch = Arch([first] + [Stage(s.in_channels, s.out_channels, (MAX_OP.name,) * d, s.stride)
                                    for s, d in zip(seed_arch.stages[1:], space.max_depths)])
        if seed is not None:
            self._load_seed(seed, width, kernel)
        self._configure_bns(affine_bn)

    def _configure_bns(self, affine_bn: bool) -> None:
        # Candidate BNs never keep running statistics; without affine parameters they have
        # nothing to learn either, so their parameters are frozen at (1, 0) and never used.
        for layer in self.search_layers():
            for module in layer.blocks.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.track_running_stats = False
                    module.running_mean = module.running_var = module.num_batches_tracked = None
                    if not affine_bn:
                        module.weight.requires_grad_(False)
                        module.bias.requires_grad_(False)

    def search_layers(self) -> list[SearchLayer]:
        return [m for stage in self.stages[1:] for m in stage]

    # -- choosing what runs
    def set_path(self, ops: list[str]) -> None:
        layers = self.search_layers()
        if len(ops) != len(layers):
            raise ValueError(f"a path needs {len(layers)} ops, got {len(ops)}")
        for layer, op in zip(layers, ops):
            if op not in layer.spec.candidates:
                raise ValueError(f"layer {layer.spec.key}: {op!r} is not a candidate {layer.spec.candidates}")
            layer.choice = op

    def set_mixture(self, weights: list[torch.Tensor]) -> None:
        for layer, w in zip(self.search_layers(), weights, strict=True):
            layer.choice = w

    # -- running
    def extract_features(self, taps, x: torch.Tensor) -> list[torch.Tensor]:
        from ..tasks.detection.features import extract_features

        return extract_features(self, taps, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x) if self.head is not None else x

    # -- the remapped seed as initial state
    def _load_seed(self, seed: Network, width: str, kernel: str) -> None:
        """Copies the fixed parts and remaps every candidate from ``seed`` (Eq. 1-3 through
        :func:`fna_ext.remap.plan_block`), before the candidate BNs drop their statistics."""
        if seed.arch.stages[0] != self.seed_arch.stages[0] or len(seed.stages) != len(self.stages):
            raise ValueError(f"the seed network ({seed.arch}) is not built from the super network's "
                             f"seed arch ({self.seed_arch})")
        with torch.no_grad():
            self.stem.load_state_dict(seed.stem.state_dict())
            self.stages[0].load_state_dict(seed.stages[0].state_dict())
            if self.head is not None and seed.head is not None:
                self.head.load_state_dict(seed.head.state_dict())
        blocks = nn.ModuleDict({f"{layer.spec.key}_{name}": block for layer in self.search_layers()
                                for name, block in layer.blocks.items()})
        plan_candidates(seed, blocks, width, kernel).apply(seed, blocks)

    # -- derivation
    def derive(self, ops: list[str]) -> Arch:
        """The target Arch that takes ``ops`` (one per searched layer) on the seed's stages."""
        layers = self.search_layers()
        if len(ops) != len(layers):
            raise ValueError(f"derivation needs {len(layers)} ops, got {len(ops)}")
        stages = [self.seed_arch.stages[0]]
        for i, stage in enumerate(self.seed_arch.stages[1:], start=1):
            stage_ops = tuple(op for layer, op in zip(layers, ops) if layer.spec.stage == i)
            stages.append(Stage(stage.in_channels, stage.out_channels, stage_ops, stage.stride))
        return Arch(stages)
