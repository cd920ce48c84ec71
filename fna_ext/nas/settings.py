"""The rules of the ``search`` settings (FNA's architecture adaptation), checked when a config
is resolved, together with the training ones (:mod:`fna_ext.engine.settings`)."""

from __future__ import annotations

from ..config import Bool, Choice, Int, List, Number, Rule
from ..engine.settings import INITS, optimizer_rules
from ..remap.core import GROUP_MODES, KERNEL_MODES, WIDTH_MODES

STRATEGIES = ("diff", "random")
COSTS = ("madds", "latency")

# Search settings every task's presets start from (each adds lambda, tau, its schedule, alpha).
# init: how the super network starts, "remap" (the seed remapped into it, FNA) or "random".
# fused: the sampled MBConv through the fused C++/CUDA kernels where the extension has them:
# "auto" where they are measured faster than PyTorch's own (CPUs; not yet GPUs, see
# fna_ext.ops.FUSED_BY_DEFAULT), true on every device, false never (the pure-PyTorch
# reference, e.g. to compare; the CLIs' --no-fused).
# recompute: an architecture step keeps neither the expansions nor the depthwise outputs of the
# fused mixtures and computes them again in the backward, bit for bit: its peak drops by about
# 40% above the process's baseline for about 13% more time per alpha step (benchmarks/RESULTS.md);
# false trades the memory back for the time.
SEARCH_DEFAULTS = {"init": "remap", "weight_sharing": "shared", "affine_bn": False, "fused": "auto", "recompute": True,
                   "strategy": "diff", "cost": "madds",
                   # the paths weight steps train once alpha has started: "alpha" draws them from
                   # softmax(alpha) (published), "uniform" keeps drawing every candidate alike
                   "weight_paths": "alpha",
                   "split_fraction": 0.5, "random_candidates": 8, "remap_width": "first",
                   "remap_kernel": "center", "remap_groups": "diagonal", "alpha_log_every": 5,
                   "alpha_batch_size": None,
                   # the axes candidates are drawn from: kernel sizes (every family), group counts
                   # (ResNet), MBConv expansions (null: FNA's 3 and 6 and the seed's own), and how
                   # many layers a stage may grow past the seed's (families whose depths follow the
                   # seed: ResNet, and MBConv seeds whose stages FNA's depths do not fit)
                   "space": {"kernels": [3, 5, 7], "groups": [1, 2, 4], "expansions": None, "depth_margin": 1}}

SEARCH_RULES: dict[str, Rule] = {
    "search.init": Choice(*INITS),
    "search.weight_sharing": Choice("shared", "independent"),
    "search.affine_bn": Bool(),
    "search.fused": Choice("auto", True, False),
    "search.recompute": Bool(),
    "search.strategy": Choice(*STRATEGIES),
    "search.weight_paths": Choice("alpha", "uniform"),
    "search.cost": Choice(*COSTS),
    "search.split_fraction": Number(0, 1, open_low=True, open_high=True),
    "search.random_candidates": Int(1),
    "search.remap_width": Choice(*WIDTH_MODES),
    "search.remap_kernel": Choice(*KERNEL_MODES),
    "search.remap_groups": Choice(*GROUP_MODES),
    "search.space.kernels": List(Choice(3, 5, 7)),
    "search.space.groups": List(Int(1)),
    "search.space.expansions": List(Number(1), nullable=True),
    "search.space.depth_margin": Int(0),
    "search.alpha_log_every": Int(1),
    "search.alpha_batch_size": Int(1, nullable=True),
    "search.lambda": Number(0),
    "search.tau": Number(0, open_low=True),
    "search.alpha_start_epoch": Int(0),
    "search.weight_steps_per_alpha_step": Int(1),
    **optimizer_rules("search.alpha.optimizer"),
    "search.alpha.grad_clip": Number(0, open_low=True, nullable=True),
    "search.alpha.init_std": Number(0),
}


def check_alpha_trains(config: dict) -> None:
    """A differentiable search whose alpha never steps would derive the architecture from the
    random initial alpha."""
    search, train = config.get("search"), config.get("train")
    if not search or not train or search.get("strategy") != "diff":
        return
    if search["alpha_start_epoch"] >= train["epochs"]:
        raise ValueError(f"search.alpha_start_epoch ({search['alpha_start_epoch']}) must be below "
                         f"train.epochs ({train['epochs']}), or alpha is never trained; lower it or "
                         "train longer")


def check_space_axes(config: dict) -> None:
    """Each axis of the search space offers at least one value, each once."""
    space = (config.get("search") or {}).get("space")
    for axis in ("kernels", "groups", "expansions"):
        values = (space or {}).get(axis)
        if values is not None and (not values or len(set(values)) != len(values)):
            raise ValueError(f"search.space.{axis} must list distinct values, at least one; got {values}")


SEARCH_CHECKS = (check_alpha_trains, check_space_axes)
