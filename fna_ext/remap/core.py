"""Parameter remapping (FNA, Sec. 3.2 and Algorithm 1): a seed network's parameters become those of
a network of another depth, width (expansion) or kernel size.

Every remapping here is a set of per-dimension index maps: for each dimension of a target tensor,
which index of the seed tensor each position takes, or -1 where the position gets a fill value
(zero for weights, BN's initial value for BN entries). Kernel remapping is a map on the two spatial
dimensions, width remapping a map on the channel dimensions. One :class:`RemapPlan` holds the
maps of a whole network. The Python path (:meth:`RemapPlan.apply_reference`) gathers them with
``index_select``; the compiled op ``fna_ext::remap_copy`` copies every tensor of the network in one
call per device (:meth:`RemapPlan.apply`). The tests compare the two.

Published behaviour (FNA's code) and what the paper only describes:
- depth (Eq. 1): target layer i of a stage takes seed layer min(i, l-1); ``skip`` layers of either
  network are dropped first;
- width (Eq. 2, ``first``): the first channels; a wider target keeps every seed channel and zeros
  the rest (BN entries at their initial values). ``bn``/``std``/``l1`` (Algorithm 1) choose the
  hidden channels with the largest |gamma|, filter std or filter L1 norm; ``net2net`` widens by
  replicating channels and dividing the projection's incoming weights, preserving the function;
- kernel (Eq. 3, ``center``): the seed kernel in the centre of a zero kernel, a centre crop when
  smaller; ``dilate`` (Eq. 6) places the taps on rows/columns 0, (k-1)/2 and k-1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .. import _extension
from ..ops.slices import centre_offset
from ..families import get_family


WIDTH_MODES = ("first", "bn", "std", "l1", "net2net")
KERNEL_MODES = ("center", "dilate")
# how a grouped conv and a dense one take each other's weights (families with grouped convs):
# the block-diagonal, or the first C_in / G input channels (fna_ext.families.resnet.blocks)
GROUP_MODES = ("diagonal", "first")
FILL = -1  # index-map entry: this position takes the fill value


# ---- tensor level ------------------------------------------------------------------------------

def first_channels(num_target: int, num_seed: int) -> torch.Tensor:
    """Eq. 2: target channel j takes seed channel j; channels beyond the seed's are fills."""
    index = torch.arange(num_target)
    index[index >= num_seed] = FILL
    return index


def select_channels(reference: torch.Tensor, k: int) -> torch.Tensor:
    """Algorithm 1: indices of the k largest entries of ``reference``, in ascending order (ties go
    to the lower index)."""
    if not 0 <= k <= reference.numel():
        raise ValueError(f"select_channels: cannot select {k} of {reference.numel()} channels")
    order = torch.sort(reference.detach().flatten().float(), descending=True, stable=True).indices
    return order[:k].sort().values


def depth_map(num_seed_layers: int, num_target_layers: int) -> list[int]:
    """Eq. 1, 0-based: target layer i takes seed layer min(i, l-1)."""
    if num_seed_layers < 1:
        raise ValueError("depth_map: the seed stage has no layer to take from")
    return [min(i, num_seed_layers - 1) for i in range(num_target_layers)]


def kernel_index(seed_size: int, size: int, mode: str = "center") -> torch.Tensor:
    """Index map of one spatial dimension: which seed row/column each target row/column takes."""
    if mode not in KERNEL_MODES:
        raise ValueError(f"kernel mode {mode!r} is not one of {KERNEL_MODES}")
    if seed_size % 2 == 0 or size % 2 == 0:
        raise ValueError(f"kernel sizes must be odd, got {seed_size} -> {size}")
    positions = torch.arange(size)
    if mode == "center" or seed_size == size or 1 in (seed_size, size):
        # the super network's slice rule (fna_ext.ops.slices): a smaller kernel is the centre of a
        # larger one, so remapping the max-size weight and slicing it agree
        index = positions + centre_offset(seed_size, size)
        index[(index < 0) | (index >= seed_size)] = FILL
        return index
    small, large = sorted((seed_size, size))
    if (large - 1) % (small - 1):
        raise ValueError(f"dilate mode needs (k_large - 1) divisible by (k_small - 1); "
                         f"cannot map {seed_size}x{seed_size} to {size}x{size}")
    step = (large - 1) // (small - 1)
    if size > seed_size:  # taps spread over the larger kernel, zeros between
        index = torch.full((size,), FILL)
        index[::step] = torch.arange(seed_size)
        return index
    return positions * step  # shrinking takes those taps back


def gather(src: torch.Tensor, index_maps: list[torch.Tensor | None], fill: float = 0.0,
           scale: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """The reference remap of one tensor: ``out[i0, i1, ...] = src[m0[i0], m1[i1], ...]``, or
    ``fill`` where any map is -1, times ``scale[1][i_d]`` along dimension ``scale[0]``."""
    out = src
    for dim, index in enumerate(index_maps):
        if index is None:
            continue
        index = index.to(src.device)
        taken = out.index_select(dim, index.clamp(min=0))
        shape = [1] * src.dim()
        shape[dim] = -1
        out = torch.where((index >= 0).view(shape), taken, torch.full((), fill, dtype=src.dtype,
                                                                        device=src.device))
    if scale is not None:
        dim, factors = scale
        shape = [1] * src.dim()
        shape[dim] = -1
        out = out * factors.to(out).view(shape)
    return out


def kernel(w: torch.Tensor, size: int, mode: str = "center") -> torch.Tensor:
    """Eq. 3 (``center``) or Eq. 6 (``dilate``): remaps the last two (spatial) dims to size x size."""
    index = kernel_index(w.shape[-1], size, mode)
    maps = [None] * (w.dim() - 2) + [kernel_index(w.shape[-2], size, mode), index]
    return gather(w, maps)


def width_index(seed_size: int, size: int, reference: torch.Tensor | None = None,
                mode: str = "first") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Index map of a channel dimension and, for ``net2net``, the divisor of each seed channel's
    outgoing weights. Narrower: a subset (the first, or Algorithm 1's top-k of ``reference``).
    Wider: every seed channel, then zeros (or Net2Net's replicas)."""
    if mode not in WIDTH_MODES:
        raise ValueError(f"width mode {mode!r} is not one of {WIDTH_MODES}")
    if size <= seed_size and mode in ("bn", "std", "l1"):
        return select_channels(reference, size), None
    if size > seed_size and mode == "net2net":
        index = torch.cat([torch.arange(seed_size), torch.arange(size - seed_size) % seed_size])
        counts = torch.bincount(index, minlength=seed_size)
        return index, counts
    return first_channels(size, seed_size), None


# ---- the plan ----------------------------------------------------------------------------------

@dataclass
class TensorRemap:
    target: str            # state_dict key in the target
    source: str | None     # key in the seed, None for a synthesised source (see ``synthetic``)
    index_maps: list[torch.Tensor | None]
    fill: float = 0.0
    scale: tuple[int, torch.Tensor] | None = None
    synthetic: torch.Tensor | None = None  # e.g. the identity expand conv an e1 seed layer lacks


def _concatenated_maps(entry: TensorRemap, shape: torch.Size) -> torch.Tensor:
    """remap_copy's form of an entry's maps: one int64 vector, a dimension without a map taking
    the identity."""
    maps = [m if m is not None else torch.arange(n) for m, n in zip(entry.index_maps, shape)]
    return torch.cat(maps) if maps else torch.zeros(0, dtype=torch.long)


@dataclass
class LayerRecord:
    target: str
    source: str  # where it came from, for the per-layer table
    change: str


@dataclass
class RemapPlan:
    entries: list[TensorRemap] = field(default_factory=list)
    copies: list[tuple[str, str]] = field(default_factory=list)  # integer buffers, copied as is
    layers: list[LayerRecord] = field(default_factory=list)

    def restricted_to(self, keys) -> "RemapPlan":
        """The plan without the tensors the target does not have (the running statistics of
        BNs built not to track them)."""
        keys = set(keys)
        return RemapPlan([e for e in self.entries if e.target in keys],
                         [(t, s) for t, s in self.copies if t in keys], self.layers)

    def _sources(self, seed_state: dict) -> list[torch.Tensor]:
        return [e.synthetic if e.source is None else seed_state[e.source] for e in self.entries]

    def apply_reference(self, seed: nn.Module, target: nn.Module) -> nn.Module:
        """The pure-PyTorch path: one ``gather`` per tensor."""
        seed_state, target_state = seed.state_dict(), target.state_dict()
        with torch.no_grad():
            for entry, src in zip(self.entries, self._sources(seed_state)):
                dst = target_state[entry.target]
                dst.copy_(gather(src.to(dst), entry.index_maps, entry.fill, entry.scale))
            self._copy_buffers(seed_state, target_state)
        return target

    def apply(self, seed: nn.Module, target: nn.Module) -> nn.Module:
        """Every tensor in one ``fna_ext::remap_copy`` call where the extension has a kernel for
        the target's device, else :meth:`apply_reference`."""
        target_state = target.state_dict()
        device = next(iter(target_state.values())).device
        if not _extension.has_kernel("remap_copy", device):
            return self.apply_reference(seed, target)
        seed_state = seed.state_dict()
        dsts = [target_state[e.target] for e in self.entries]
        srcs = [s.to(d).contiguous() for s, d in zip(self._sources(seed_state), dsts)]
        maps = [_concatenated_maps(e, d.shape).to(device) for e, d in zip(self.entries, dsts)]
        scales = [e.scale[1].to(d) if e.scale else d.new_empty(0) for e, d in zip(self.entries, dsts)]
        scale_dims = [e.scale[0] if e.scale else -1 for e in self.entries]
        with torch.no_grad():
            torch.ops.fna_ext.remap_copy(srcs, dsts, maps, [e.fill for e in self.entries], scales,
                                         scale_dims)
            self._copy_buffers(seed_state, target_state)
        return target

    def _copy_buffers(self, seed_state, target_state):
        for target_key, seed_key in self.copies:
            target_state[target_key].copy_(seed_state[seed_key])


# ---- network level -----------------------------------------------------------------------------

_BN_FILLS = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}


def add_conv(plan: RemapPlan, target: str, source: str | None, maps, synthetic=None, scale=None):
    plan.entries.append(TensorRemap(f"{target}.weight", f"{source}.weight" if source else None,
                                    list(maps), 0.0, scale, synthetic))


def add_bias(plan: RemapPlan, target: str, source: str | None, channel_map: torch.Tensor):
    """A conv's bias along ``channel_map``; with no source, zeros."""
    if source is None:
        plan.entries.append(TensorRemap(f"{target}.bias", None, [torch.full_like(channel_map, FILL)], 0.0,
                                        synthetic=torch.zeros(1)))
    else:
        plan.entries.append(TensorRemap(f"{target}.bias", f"{source}.bias", [channel_map]))


def add_bn(plan: RemapPlan, target: str, source: str | None, channel_map: torch.Tensor):
    """BN entries; with no source, every entry takes its initial value."""
    for name, fill in _BN_FILLS.items():
        if source is None:
            plan.entries.append(TensorRemap(f"{target}.{name}", None, [torch.full_like(channel_map, FILL)],
                                            fill, synthetic=torch.zeros(1)))
        else:
            plan.entries.append(TensorRemap(f"{target}.{name}", f"{source}.{name}", [channel_map], fill))
    if source is not None:
        plan.copies.append((f"{target}.num_batches_tracked", f"{source}.num_batches_tracked"))


def check_compatible(seed: nn.Module, target: nn.Module) -> None:
    """Raises ValueError naming the stage and channels where ``target`` cannot take ``seed``."""
    for role, net in (("seed", seed), ("target", target)):
        if not all(hasattr(net, part) for part in ("arch", "stem", "stages", "head")):
            raise ValueError(f"the {role} is not an fna_ext network (got {type(net).__name__}); "
                             "build it with fna_ext.build_network")
    if seed.arch.family != target.arch.family:
        raise ValueError(f"the seed is a {seed.arch.family} network and the target a {target.arch.family} one; "
                         "FNA remaps within one family")
    if len(seed.stages) != len(target.stages):
        raise ValueError(f"the target arch has {len(target.stages)} stages but the seed has "
                         f"{len(seed.stages)}; FNA remaps stage by stage")
    if seed.arch.stem_channels != target.arch.stem_channels:
        raise ValueError(f"stem: the target has {target.arch.stem_channels} channels, the seed "
                         f"{seed.arch.stem_channels}")
    for i, (s, t) in enumerate(zip(seed.arch.stages, target.arch.stages)):
        if (s.in_channels, s.out_channels) != (t.in_channels, t.out_channels):
            raise ValueError(f"stage {i}: the target is {t.in_channels}->{t.out_channels} channels, "
                             f"the seed {s.in_channels}->{s.out_channels}")


def plan_network(seed: nn.Module, target: nn.Module, width: str = "first",
                 kernel: str = "center", groups: str = "diagonal", *,
                 allow_activation_change: bool = False) -> RemapPlan:
    """The maps of every tensor of ``target`` (stem, every block, head, classifier); the family
    of the seed's arch remaps each block (:meth:`~fna_ext.families.Family.plan_block`). A target
    whose activations differ from the seed's is refused unless ``allow_activation_change``."""
    check_compatible(seed, target)
    family = get_family(seed.arch.family)
    # the remapped weights were trained for the seed's activations: another one starts the target
    # far from the seed's function, which remapping is meant to keep
    advice = ("pass allow_activation_change=True (fna_ext.remap --allow-activation-change) to remap anyway, "
              "or give the target the seed's activations")
    if not allow_activation_change and family.fixed_activation(seed.arch) != family.fixed_activation(target.arch):
        raise ValueError(f"stem and head: the target's activation {family.fixed_activation(target.arch)!r} differs "
                         f"from the seed's {family.fixed_activation(seed.arch)!r}; {advice}")
    if width not in WIDTH_MODES:
        raise ValueError(f"width mode {width!r} is not one of {WIDTH_MODES}")
    kernel_index(3, 3, kernel)  # validates the mode
    if groups not in GROUP_MODES:
        raise ValueError(f"group mode {groups!r} is not one of {GROUP_MODES}")
    plan = RemapPlan()
    _plan_stem(plan, seed, target)
    for i, (seed_stage, target_stage) in enumerate(zip(seed.stages, target.stages)):
        seed_layers = [(j, m) for j, m in enumerate(seed_stage) if family.is_block(m)]
        target_layers = [j for j, m in enumerate(target_stage) if family.is_block(m)]
        source_of = dict(zip(target_layers, depth_map(len(seed_layers), len(target_layers))))
        for tj, t in enumerate(target_stage):
            if tj not in source_of:
                plan.layers.append(LayerRecord(f"stages.{i}.{tj}", "-", "skip (no parameters)"))
                continue
            sj, s = seed_layers[source_of[tj]]
            change = None if allow_activation_change else family.activation_change(s, t)
            if change:
                raise ValueError(f"stages.{i}.{tj}: {change}; {advice}")
            family.plan_block(plan, s, t, f"stages.{i}.{sj}", f"stages.{i}.{tj}", width, kernel, groups)
            if target_layers.index(tj) >= len(seed_layers):  # past the seed's depth
                family.plan_extra_block(plan, t, f"stages.{i}.{tj}")
            plan.layers.append(LayerRecord(f"stages.{i}.{tj}", f"stages.{i}.{sj}",
                                           f"{s.op.name} -> {t.op.name}"))
    _plan_head_and_classifier(plan, seed, target)
    return plan


def _plan_stem(plan: RemapPlan, seed: nn.Module, target: nn.Module) -> None:
    """Copies every stem tensor as is, whatever the family names its parts: the stem is fixed
    (check_compatible has matched its channels), so the seed's and the target's are the same."""
    seed_state = seed.stem.state_dict()
    for name, tensor in target.stem.state_dict().items():
        if name not in seed_state:
            raise ValueError(f"stem: the seed has no {name!r}; seed and target stems differ")
        if tensor.is_floating_point():
            plan.entries.append(TensorRemap(f"stem.{name}", f"stem.{name}", [None] * tensor.dim()))
        else:  # integer buffers (BN's num_batches_tracked)
            plan.copies.append((f"stem.{name}", f"stem.{name}"))
    plan.layers.append(LayerRecord("stem", "stem", "copied"))


def _plan_head_and_classifier(plan: RemapPlan, seed: nn.Module, target: nn.Module) -> None:
    if seed.head is not None and target.head is not None:
        out_map = first_channels(target.head.conv.out_channels, seed.head.conv.out_channels)
        add_conv(plan, "head.conv", "head.conv",
                  [out_map, first_channels(target.arch.out_channels, seed.arch.out_channels), None, None])
        add_bn(plan, "head.bn", "head.bn", out_map)
        plan.layers.append(LayerRecord("head", "head", "copied"))
    seed_pre, target_pre = getattr(seed, "pre_logits", None), getattr(target, "pre_logits", None)
    if seed_pre is not None and target_pre is not None and seed_pre[0].weight.shape == target_pre[0].weight.shape:
        for name in ("weight", "bias"):  # MobileNetV3's layer after pooling, as the classifier is
            plan.entries.append(TensorRemap(f"pre_logits.0.{name}", f"pre_logits.0.{name}",
                                            [None] * seed_pre[0].get_parameter(name).dim()))
        plan.layers.append(LayerRecord("pre_logits", "pre_logits", "copied"))
    if (seed.classifier is not None and target.classifier is not None
            and seed.classifier.weight.shape == target.classifier.weight.shape):
        plan.entries.append(TensorRemap("classifier.weight", "classifier.weight", [None, None]))
        plan.entries.append(TensorRemap("classifier.bias", "classifier.bias", [None]))
        plan.layers.append(LayerRecord("classifier", "classifier", "copied"))
    elif target.classifier is not None:
        plan.layers.append(LayerRecord("classifier", "-", "kept its initialisation (no matching seed classifier)"))


def remap_network(seed: nn.Module, target: nn.Module, width: str = "first", kernel: str = "center",
                  groups: str = "diagonal", *, use_extension: bool = True,
                  allow_activation_change: bool = False) -> nn.Module:
    """Fills every parameter and BN buffer of ``target`` from ``seed`` and returns ``target``.

    ``width``: ``first`` (Eq. 2), ``bn``, ``std``, ``l1`` (Algorithm 1) or ``net2net``.
    ``kernel``: ``center`` (Eq. 3) or ``dilate`` (Eq. 6). ``groups``: how grouped and dense convs
    take each other's weights, ``diagonal`` or ``first``. Where the construction preserves the
    function (the same arch, larger kernels with zero rings, extra skip layers, wider hidden
    layers), the target computes exactly what the seed does in eval mode."""
    plan = plan_network(seed, target, width, kernel, groups, allow_activation_change=allow_activation_change)
    return plan.apply(seed, target) if use_extension else plan.apply_reference(seed, target)


def plan_candidates(seed: nn.Module, blocks: nn.ModuleDict, width: str = "first",
                    kernel: str = "center", groups: str = "diagonal") -> RemapPlan:
    """Maps for a super network's candidate blocks (:func:`fna_ext.families.mbconv.candidates.candidate_blocks`):
    each ``s{stage}_l{layer}_{op}`` block takes the seed layer Eq. 1 names, through the same
    :func:`plan_block` that remaps target networks."""
    family = get_family(seed.arch.family)
    plan = RemapPlan()
    for key, block in blocks.items():
        stage, layer = (int(part[1:]) for part in key.split("_")[:2])
        seed_layers = [(j, m) for j, m in enumerate(seed.stages[stage]) if family.is_block(m)]
        sj, source = seed_layers[min(layer, len(seed_layers) - 1)]
        family.plan_block(plan, source, block, f"stages.{stage}.{sj}", key, width, kernel, groups)
        if layer >= len(seed_layers):
            family.plan_extra_block(plan, block, key)
    return plan.restricted_to(blocks.state_dict().keys())


def _register_fake_kernels() -> None:
    # remap_copy only writes into its targets: the fake kernel has nothing to compute.
    torch.library.register_fake("fna_ext::remap_copy", lambda *args: None)


_extension.on_load(_register_fake_kernels)


# ---- command line ------------------------------------------------------------------------------
