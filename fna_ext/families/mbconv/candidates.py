"""The MBConv family's candidate ops.

FNA's space is kernels 3, 5, 7 x expansions 3, 6 (and ``skip`` past a stage's first layer). A seed
found by NAS brings its own vocabulary, so the space comes from the seed: each layer offers the
space's kernels x the expansions (FNA's 3 and 6 and every expansion the seed's searched stages
use, or ``search.space.expansions``), each with the seed layer's SE and activation. For
MobileNetV2, whose searched layers are all ``k3_e6``, that is FNA's space exactly.
"""

from __future__ import annotations

from torch import nn

from ...arch import Arch
from .blocks import MBConv
from .op import Op, format_number

FNA_EXPANSIONS = (3, 6)
MBCONV_CANDIDATES = ("k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6")


def seed_layer_op(stage, layer: int | None) -> Op:
    """The seed's op at ``layer`` of ``stage`` (its last block past the stage's depth, as Eq. 1
    remaps): the attributes that layer's candidates keep."""
    ops = [Op.parse(name) for name in stage.ops if name != "skip"]
    return ops[min(layer or 0, len(ops) - 1)]


def seed_expansions(seed_arch: Arch | None) -> tuple[int | float, ...]:
    """FNA's expansions and every one the seed's searched stages use. An ``e1`` block without
    ``_pw`` has no expand conv to slice, so it is offered only where the seed keeps one."""
    found = set(FNA_EXPANSIONS)
    for stage in (seed_arch.stages[1:] if seed_arch is not None else ()):
        for name in stage.ops:
            op = Op.parse(name)
            if not op.is_skip and op.has_expand:
                found.add(op.expansion)
    return tuple(sorted(found))


def is_nas_seed(seed_arch: Arch) -> bool:
    """Whether a searched layer of the seed speaks more than FNA's MobileNetV2 vocabulary (SE,
    another activation than ReLU6, an expansion other than 3 and 6): a network found by NAS."""
    ops = [Op.parse(name) for stage in seed_arch.stages[1:] for name in stage.ops if name != "skip"]
    return any(not op.uses_relu6_only or op.expansion not in FNA_EXPANSIONS for op in ops)


def layer_candidates(first_layer: bool, keep_inner_width: bool, stage, layer, kernels, expansions,
                     seed_arch) -> tuple[str, ...]:
    """The ops of one searched layer (see the module docstring). ``keep_inner_width``: only the
    seed layer's expansion (SSDLite reads that layer's expansion output, whose width must not
    change)."""
    seed_op = seed_layer_op(stage, layer) if stage is not None else Op(3, 6)
    expansions = tuple(expansions) if expansions else seed_expansions(seed_arch)
    if keep_inner_width:
        expansions = (seed_op.expansion,)
    if any(e < 1 for e in expansions):
        raise ValueError(f"search.space.expansions {[format_number(e) for e in expansions]}: expansions are at least 1")
    ops = tuple(seed_op.with_shape(k, e).name if e != 1 else _e1(seed_op, k)
                for k in kernels for e in expansions)
    if not ops:
        raise ValueError(f"search.space.kernels {list(kernels)} leaves no MBConv candidate; use some of 3, 5, 7")
    return ops if first_layer else ops + ("skip",)


def _e1(seed_op: Op, kernel: int) -> str:
    # at expansion 1 a shared max-size weight still has an expand conv to slice: _pw keeps it
    return Op(kernel, 1, seed_op.se, seed_op.se_ratio, seed_op.act, True).name


def module_key(op: str) -> str:
    """``op`` as a ModuleDict key, which cannot hold the '.' of a decimal expansion or SE ratio."""
    return op.replace(".", "p")


def widest_op(candidates) -> str:
    """The candidate whose weights hold every other's: the largest kernel and expansion, with the
    candidates' shared attributes."""
    ops = [Op.parse(name) for name in candidates if not Op.parse(name).is_skip]
    widest = max(ops, key=lambda op: op.expansion)
    return widest.with_shape(max(op.kernel for op in ops), widest.expansion).name


def candidate_blocks(seed_arch: Arch, space, bn_eps: float = 1e-5) -> nn.ModuleDict:
    """One MBConv per candidate op of every searched layer, keyed ``s{stage}_l{layer}_{op}``
    (stage counted in the seed arch): the weights of a super network whose candidates each have
    their own parameters."""
    from ...nas.search_space import layer_specs

    blocks = nn.ModuleDict()
    for spec in layer_specs(seed_arch, space):
        for name in spec.candidates:
            op = Op.parse(name)
            if not op.is_skip:
                blocks[f"{spec.key}_{module_key(name)}"] = MBConv(
                    spec.in_channels, spec.out_channels, op.kernel, op.expansion, spec.stride, bn_eps=bn_eps,
                    attributes=op)
    return blocks
