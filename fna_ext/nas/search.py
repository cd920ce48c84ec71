"""Architecture adaptation (FNA section 3.2): a differentiable search over the super network on
the task itself, with a cost term, then derivation of the target architecture.

The published loop, with its defects fixed (REFERENCE.md):

- the training split is divided into ``weight_split`` (trains the operation weights) and
  ``arch_split`` (trains alpha), named for what they do;
- a weight step trains one sampled path: uniform before alpha starts, then drawn from
  softmax(alpha); an alpha step runs the softmax(alpha)-weighted mixture of every candidate
  (first order) and minimises ``L_task + lambda * log_tau(E[cost])``;
- the path of every weight step comes from a generator seeded by (seed, step), so it is the same
  on every process and after a resume;
- momentum and weight decay never move a candidate that was not sampled: its gradients are
  absent, not zero (independent weights), and in shared mode the optimiser step is undone
  outside the sampled slice (weights and optimiser state alike). A candidate's weights change
  only when it trains.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import ops
from ..atomic import atomic_write_text
from ..config import dump
from ..engine import distributed
from ..engine.checkpoint import Progress
from ..engine.trainer import (ResumableSampler, sample_noun, StepHooks, Trainer, build_optimizer, place_model,
                              resumable_loader, to_device)
from ..tasks import get_task
from .cost_table import build_cost_table
from .report import decided_count, layer_decision, search_summary_markdown
from .supernet import SuperNetwork


class ArchParameters(nn.Module):
    """One alpha vector per searched layer (over that layer's candidates)."""

    def __init__(self, num_candidates: list[int], init_std: float = 1e-3, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.alphas = nn.ParameterList(nn.Parameter(init_std * torch.randn(n, generator=generator))
                                       for n in num_candidates)

    def probabilities(self) -> list[torch.Tensor]:
        return [a.softmax(dim=0) for a in self.alphas]

    def sample(self, generator: torch.Generator, uniform: bool) -> list[int]:
        """One candidate index per layer: uniform, or drawn from softmax(alpha). Drawn on the CPU
        (``generator`` is a CPU generator), so a seed gives the same paths on every device."""
        with torch.no_grad():
            return [int(torch.multinomial(torch.ones(len(a)) if uniform else a.detach().cpu().float().softmax(0), 1,
                                          generator=generator))
                    for a in self.alphas]

    def argmax(self) -> list[int]:
        return [int(a.argmax()) for a in self.alphas]


def split_dataset(dataset, fraction: float, seed: int):
    """(weight_split, arch_split): a seeded partition of ``dataset``, ``fraction`` of it for the
    weights."""
    if not 0 < fraction < 1:
        raise ValueError(f"search.split_fraction must be strictly between 0 and 1, got {fraction}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(round(len(dataset) * fraction))
    if cut == 0 or cut == len(dataset):
        raise ValueError(f"the training set ({len(dataset)} images) is too small to split for the search")
    return torch.utils.data.Subset(dataset, order[:cut]), torch.utils.data.Subset(dataset, order[cut:])


def cost_term(expected: torch.Tensor, lam: float, tau: float) -> torch.Tensor:
    """lambda * log_tau(E[cost]); its gradient does not depend on the cost's unit."""
    return lam * torch.log(expected) / math.log(tau)


@dataclass
class SearchResult:
    out_dir: Path
    arch: object
    ops: list[str]
    record: dict
    phase_seconds: dict = field(default_factory=dict)


class _Loader:
    """Global batches of a split, in a per-epoch order that a step count alone determines; each
    process loads its slice of them."""

    def __init__(self, dataset, batch_size: int, seed: int, workers: int, collate, device: torch.device):
        if len(dataset) < batch_size:
            raise ValueError(f"a search split has {len(dataset)} {sample_noun(dataset)}, fewer than one batch of "
                             f"{batch_size}; lower train.batch_size or use more data")
        self.sampler = ResumableSampler(len(dataset), seed)
        self.per_epoch = len(dataset) // batch_size
        self.batch_size = batch_size
        self.loader = resumable_loader(self.sampler, batch_size, dataset, collate, workers, device)
        self._iterator, self._position = None, None

    def batch(self, step: int):
        """The batch of global step ``step`` (consecutive steps reuse one iterator)."""
        if self._iterator is None or self._position != step:
            epoch, start = divmod(step, self.per_epoch)
            self.sampler.set_position(epoch, start * self.batch_size)
            self._iterator = iter(self.loader)
        batch = next(self._iterator)
        self._position = step + 1
        if self._position % self.per_epoch == 0:
            self._iterator = None
        return batch


class ArchitectureSearch:
    """Everything one search needs; :meth:`run` does it and :func:`search` wraps it."""

    def __init__(self, config: dict, seed_network: nn.Module, out_dir: str | Path, *, device: str = "cpu"):
        task = get_task(config["task"])
        config = task.check_config(config)
        self.config, self.device = config, torch.device(device)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        s, train = config["search"], config["train"]
        self.phase_seconds: dict[str, float] = {}
        started = time.perf_counter()
        self.task, self.model_name = task, config["model"]["name"]
        data = self.task.data(config)
        train_set = data.train
        self.class_names = data.class_names
        self.seed = int(train.get("seed", 0))
        weight_split, arch_split = split_dataset(train_set, float(s["split_fraction"]), self.seed)
        workers = int(train.get("num_workers", 0))
        # alpha steps run every candidate; a smaller batch keeps them affordable on small machines
        alpha_batch = int(s.get("alpha_batch_size") or train["batch_size"])
        self.arch_data = _Loader(arch_split, alpha_batch, self.seed + 1, workers, data.collate, self.device)
        self.num_classes = config["model"]["num_classes"] or data.num_classes
        self.phase_seconds["data"] = time.perf_counter() - started

        started = time.perf_counter()
        torch.manual_seed(self.seed)  # the neck and head start the same for the same config
        space = self.task.search_space(self.model_name).with_settings(s.get("space"))
        # "random": the super network starts untrained (the paper's RandInit -> ArchAdapt rows)
        initial = seed_network if s["init"] == "remap" else None
        self.supernet = SuperNetwork(seed_network.arch, space, seed=initial,
                                     weight_sharing=s["weight_sharing"], affine_bn=bool(s["affine_bn"]),
                                     bn_eps=config["model"]["backbone_bn_eps"], width=s["remap_width"],
                                     kernel=s["remap_kernel"], output_stride=self.task.output_stride(config),
                                     groups=s.get("remap_groups", "diagonal"))
        self.model_options = self.task.model_options(config)
        self.model = place_model(self.task.build_model(self.model_name, self.supernet.arch, self.num_classes,
                                                       backbone=self.supernet, **self.model_options),
                                 self.device, train.get("channels_last"))
        # under torchrun every BN was built global (fna_ext.families.norm): its statistics cover
        # all processes' batches
        self.layers = self.supernet.search_layers()
        for layer in self.layers:  # a family whose mixtures can recompute says so with the attribute
            if hasattr(layer, "recompute"):
                layer.recompute = bool(s.get("recompute", True))
        self.alphas = ArchParameters([len(l.spec.candidates) for l in self.layers],
                                     float(s["alpha"]["init_std"]), self.seed).to(self.device)
        self.phase_seconds["remap"] = time.perf_counter() - started

        started = time.perf_counter()
        size = self.task.input_size(config)
        self.cost_table = build_cost_table(s["cost"], seed_network.arch, self.supernet.specs, size,
                                           device=str(self.device))
        self.phase_seconds["cost table"] = time.perf_counter() - started

        weights = [p for p in self.model.parameters() if p.requires_grad]
        self.weight_optimizer = build_optimizer(weights, train["optimizer"])
        self.alpha_optimizer = build_optimizer(self.alphas.parameters(), s["alpha"]["optimizer"])
        # alpha's own position (the weight steps are the trainer's iterations) and its history
        self.search_progress = Progress(alpha_steps=0, history=[])
        # the weight steps are the engine's training loop; the hooks add the path sampling, the
        # alpha steps, the gradient sum over processes and the masked optimiser step
        self.trainer = Trainer(self.model, self.task.loss, weight_split, data.collate, train, self.out_dir,
                               device=self.device, description="search", hooks=SearchHooks(self),
                               components={"alphas": self.alphas, "alpha_optimizer": self.alpha_optimizer,
                                           "search": self.search_progress},
                               kind="search", log_name="search_log.jsonl", optimizer=self.weight_optimizer,
                               settings=config)
        self.steps_per_epoch = self.trainer.iters_per_epoch
        self.total_steps = self.trainer.total_iters
        self.log_path, self.checkpoint_path = self.trainer.metrics_path, self.trainer.checkpoint_path
        self._ops: list[str] = []
        self._weight_batches = iter(())

    @property
    def step(self) -> int:
        return self.trainer.iteration

    alpha_steps = property(lambda self: self.search_progress.values["alpha_steps"],
                           lambda self, value: self.search_progress.values.__setitem__("alpha_steps", int(value)))

    @property
    def history(self) -> list:
        """[(step, softmax(alpha) per layer)], kept in the checkpoint."""
        return self.search_progress.values["history"]

    # ------------------------------------------------------------------ one step of each kind
    def _path_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 7_368_787 + self._path_step)

    def alpha_active(self, step: int | None = None) -> bool:
        s = self.config["search"]
        step = self.step if step is None else step
        return s["strategy"] == "diff" and step // self.steps_per_epoch >= int(s["alpha_start_epoch"])

    def sample_path(self, step: int) -> list[str]:
        """The path weight step ``step`` trains: uniform before alpha starts, then drawn from
        softmax(alpha) (``search.weight_paths: uniform``: uniform throughout); rank 0's draw,
        broadcast, so every process trains the same path."""
        self._path_step = step
        uniform = not self.alpha_active(step) or self.config["search"].get("weight_paths", "alpha") == "uniform"
        indices = distributed.broadcast_ints(self.alphas.sample(self._path_generator(), uniform=uniform))
        self._ops = [layer.spec.candidates[i] for layer, i in zip(self.layers, indices)]
        self.supernet.set_path(self._ops)
        return self._ops

    def weight_step(self, batch=None) -> dict:
        """One weight step on ``batch`` (default: the next of the weight split) with the loop's
        hooks: what :meth:`run` does per step, callable alone (benchmarks/bench_search_step.py)."""
        if batch is None:
            batch = next(self._weight_batches, None)
            if batch is None:  # the split's epoch ran out: start another pass
                self._weight_batches = iter(self.trainer.loader)
                batch = next(self._weight_batches)
        return self.trainer.train_step(to_device(batch, self.device))

    def alpha_terms(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(task loss of the softmax(alpha) mixture on ``batch``, expected cost), both
        differentiable in alpha only."""
        probs = self.alphas.probabilities()
        self.supernet.set_mixture(probs)
        weights = [p for p in self.model.parameters() if p.requires_grad]
        for p in weights:  # only alpha learns here; skipping weight gradients halves the work
            p.requires_grad_(False)
        try:
            task = sum(self.task.loss(self.model, to_device(batch, self.device)).values())
        finally:
            for p in weights:
                p.requires_grad_(True)
        return task, self.cost_table.expected(probs)

    def alpha_step(self) -> dict:
        s = self.config["search"]
        task, expected = self.alpha_terms(self.arch_data.batch(self.alpha_steps))
        # each process holds a part of the task loss; the cost term is shared out so the sum of
        # the processes' alpha gradients is the one-process gradient
        world = distributed.current().world_size if distributed.current() else 1
        loss = task + cost_term(expected, float(s["lambda"]), float(s["tau"])) / world
        self.trainer.check_finite(loss, {"task": task}, what="alpha step's loss")
        self.alpha_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.sum_gradients(self.alphas.parameters())
        if s["alpha"].get("grad_clip") is not None:  # null (allowed by its rule): no clipping
            nn.utils.clip_grad_norm_(self.alphas.parameters(), float(s["alpha"]["grad_clip"]))
        self.alpha_optimizer.step()
        self.alpha_steps += 1
        if self.alpha_steps % max(int(s["alpha_log_every"]), 1) == 0:
            self._snapshot_alphas()
        return {"arch_loss": distributed.global_sum(loss).item(), "arch_task_loss": distributed.global_sum(task).item(),
                "expected_cost": expected.item()}

    # ------------------------------------------------------------------ state
    def save_checkpoint(self) -> None:
        self.trainer.save_checkpoint()

    def resume(self) -> None:
        if not self.trainer.resume():
            raise FileNotFoundError(f"--resume: no checkpoint in {self.out_dir}; start without --resume")

    def _snapshot_alphas(self) -> None:
        probs = [[round(float(v), 6) for v in p.detach().cpu()] for p in self.alphas.probabilities()]
        self.history.append((self.step, probs))

    # ------------------------------------------------------------------ the loop
    def run(self, stop_at: int | None = None) -> None:
        if not self.history:
            self._snapshot_alphas()
        started = time.perf_counter()
        self.trainer.fit(stop_at)
        self.phase_seconds["search"] = self.phase_seconds.get("search", 0.0) + time.perf_counter() - started
        if self.step == self.total_steps and (not self.history or self.history[-1][0] != self.step):
            self._snapshot_alphas()


class SearchHooks(StepHooks):
    """The search's weight steps on the engine's loop: before each, an alpha step when due (one
    per ``weight_steps_per_alpha_step`` weight steps once alpha has started) and the sampled path;
    gradients summed over processes; the optimiser step undone outside the sampled path."""

    def __init__(self, search: ArchitectureSearch):
        self.search = search

    def before_step(self, iteration: int) -> dict:
        search, s = self.search, self.search.config["search"]
        record = {}
        if search.alpha_active(iteration) and iteration % max(int(s["weight_steps_per_alpha_step"]), 1) == 0:
            record.update(search.alpha_step())
        search.sample_path(iteration)
        return record

    def after_backward(self, model: nn.Module) -> None:
        distributed.sum_gradients(model.parameters())

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        regions = {p: r for layer, op in zip(self.search.layers, self.search._ops)
                   for p, r in layer.sampled_regions(op).items()}
        step_inside(optimizer, regions)

    def reduce(self, value: torch.Tensor) -> torch.Tensor:
        return distributed.global_sum(value)

    @property
    def writes_files(self) -> bool:
        return _is_main()


def _is_main() -> bool:
    return distributed.current() is None or distributed.current().is_main


def step_inside(optimizer: torch.optim.Optimizer, regions: dict) -> None:
    """optimizer.step(), with every parameter of ``regions`` stepped only inside its
    :class:`~fna_ext.families.sampled.SampledRegion`: the shared weights of candidates that did
    not run stay as they were, and so does their optimiser state.

    The optimiser runs on the region's box as a view of the parameter (its gradient and the
    state tensors of its shape swapped to views alike), so its in-place updates land in the box
    and its cost follows the sampled candidate, not the max-size weight; inside the box, entries
    outside ``inside`` are then put back. State born in this step (the first momentum) is made
    full-size, zero outside the region."""
    swapped = [_swap_to_box(optimizer, p, region) for p, region in regions.items() if p.grad is not None]
    try:
        optimizer.step()
    finally:
        for swap in swapped:
            _swap_back(optimizer, *swap)


def _swap_to_box(optimizer: torch.optim.Optimizer, p: nn.Parameter, region) -> tuple:
    full, grad = p.data, p.grad
    state = optimizer.state.get(p, {})
    full_state = {k: v for k, v in state.items() if torch.is_tensor(v) and v.shape == full.shape}
    # what ``inside`` must keep: the box's entries before the step (only where it is not all of it)
    saved = ({k: v[region.box].clone() for k, v in {"": full, **full_state}.items()}
             if region.inside is not None else {})
    p.data, p.grad = full[region.box], grad[region.box]
    for k, v in full_state.items():
        state[k] = v[region.box]
    return p, region, full, grad, full_state, saved


def _swap_back(optimizer, p: nn.Parameter, region, full, grad, full_state: dict, saved: dict) -> None:
    box_shape = p.data.shape
    p.data, p.grad = full, grad
    state = optimizer.state.get(p, {})
    born = {}
    for k, v in list(state.items()):
        if k in full_state:  # the step updated its view in place
            state[k] = full_state[k]
        elif torch.is_tensor(v) and v.shape == box_shape:
            state[k] = born[k] = v.new_zeros(full.shape)
            born[k][region.box] = v
    if region.inside is None:
        return
    with torch.no_grad():
        for k, tensor in {"": full, **full_state, **born}.items():
            view = tensor[region.box]
            before = saved.get(k)
            view.copy_(torch.where(region.inside, view, before) if before is not None
                       else view.masked_fill(~region.inside, 0))


# ---------------------------------------------------------------------- derivation and outputs

def random_search_choice(search: ArchitectureSearch) -> tuple[list[int], list[dict]]:
    """Random search with the same budget (the paper's Table 6 baseline): the super network
    trained with uniformly sampled paths for the whole run, then ``random_candidates`` uniformly
    drawn architectures scored on arch_split batches by the same objective as the differentiable
    search (task loss + lambda * log_tau(cost)); the best one wins."""
    s = search.config["search"]
    generator = torch.Generator().manual_seed(search.seed + 99_991)
    scored = []
    with torch.no_grad():
        for k in range(int(s["random_candidates"])):
            indices = distributed.broadcast_ints(search.alphas.sample(generator, uniform=True))
            ops = [layer.spec.candidates[i] for layer, i in zip(search.layers, indices)]
            search.supernet.set_path(ops)
            batch = to_device(search.arch_data.batch(k), search.device)
            task = distributed.global_sum(sum(search.task.loss(search.model, batch).values()))
            cost = torch.tensor(search.cost_table.of_ops(ops))
            score = (task + cost_term(cost, float(s["lambda"]), float(s["tau"]))).item()
            scored.append({"ops": ops, "task_loss": task.item(), "cost": cost.item(), "score": score})
    best = min(range(len(scored)), key=lambda i: scored[i]["score"])
    return [layer.spec.candidates.index(op) for layer, op in zip(search.layers, scored[best]["ops"])], scored


def _model_cost(search: ArchitectureSearch, arch, size) -> dict:
    from ..cost import count

    model = search.task.build_model(search.model_name, arch, search.num_classes, **search.model_options)
    report = count(model, size)
    parts = report.grouped()
    return {"input_size": list(size), "params": report.params, "madds": report.madds,
            "backbone_params": parts["backbone"][0], "backbone_madds": parts["backbone"][1]}


def derive(search: ArchitectureSearch, seed_network: nn.Module) -> SearchResult:
    """Argmax per layer (or the random search's pick); writes arch.json, arch.png, alphas.png."""
    from .. import plots

    started = time.perf_counter()
    s, config = search.config["search"], search.config
    scored = None
    if s["strategy"] == "random":
        indices, scored = random_search_choice(search)
    else:
        indices = search.alphas.argmax()
    ops = [layer.spec.candidates[i] for layer, i in zip(search.layers, indices)]
    arch = search.supernet.derive(ops)
    probs = search.alphas.probabilities()
    size = search.task.input_size(config)
    record = {
        "task": search.task.name, "model": search.model_name, "strategy": s["strategy"],
        "weight_sharing": s["weight_sharing"], "cost_kind": search.cost_table.kind,
        "cost_unit": search.cost_table.unit,
        "expected_cost": search.cost_table.expected(probs).item(),
        "derived_cost": search.cost_table.of_ops(ops),
        "seed_arch": str(seed_network.arch),
        "layers": [{"layer": layer.spec.key, "op": op,
                    "probabilities": {c: round(float(p), 6) for c, p in zip(layer.spec.candidates, prob.detach().cpu())},
                    "alpha": [round(float(a), 6) for a in alpha.detach().cpu()],
                    **layer_decision(layer.spec.candidates, prob.detach().cpu().tolist())}
                   for layer, op, prob, alpha in zip(search.layers, ops, probs, search.alphas.alphas)],
        "adapted": _model_cost(search, arch, size),
        "seed": _model_cost(search, seed_network.arch, size),
        "steps": search.step, "alpha_steps": search.alpha_steps, "config": config,
    }
    record["decided_layers"] = decided_count(record["layers"])
    if scored is not None:
        record["random_candidates"] = scored
    arch = arch.with_meta(task=search.task.name, model=search.model_name, input_size=list(size), search=record)
    if not _is_main():
        return SearchResult(search.out_dir, arch, ops, record, dict(search.phase_seconds))
    arch.save(search.out_dir / "arch.json")
    atomic_write_text(search.out_dir / "summary.md", search_summary_markdown(record))
    plots.plot_arch(arch, search.out_dir / "arch.png", seed_arch=seed_network.arch,
                    title=f"{search.model_name} backbone found by FNA ({s['strategy']} search)")
    plots.plot_alphas(search.history, [l.spec.key for l in search.layers],
                      [list(l.spec.candidates) for l in search.layers], search.out_dir / "alphas.png",
                      title="softmax(alpha) per layer over search steps")
    search.phase_seconds["derive"] = time.perf_counter() - started
    return SearchResult(search.out_dir, arch, ops, record, dict(search.phase_seconds))


def search(config: dict, seed_network: nn.Module, out_dir: str | Path, *, resume: bool = False,
           device: str = "cpu", stop_at: int | None = None) -> SearchResult | None:
    """Runs the architecture adaptation and derivation; returns None when stopped early
    (``stop_at``), leaving a resumable checkpoint."""
    runner = ArchitectureSearch(config, seed_network, out_dir, device=device)
    if resume:
        if not runner.checkpoint_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint in {runner.out_dir}; start without --resume")
        runner.resume()
    elif _is_main():
        runner.log_path.unlink(missing_ok=True)
    if _is_main():  # written once the run is known to start: a refused --resume changes nothing
        atomic_write_text(runner.out_dir / "config.yaml", dump(runner.config))
    with ops.fused(ops.fused_setting(config["search"].get("fused", "auto"), device)):
        runner.run(stop_at)
        if runner.step < runner.total_steps:
            return None
        return derive(runner, seed_network)
