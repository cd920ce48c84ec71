"""Per-candidate cost tables for FNA's cost-aware search loss.

The search minimises ``L_task + lambda * log_tau(E[cost])`` where
``E[cost] = fixed + sum_l softmax(alpha_l) . cost_l``: ``cost_l[i]`` is candidate ``i``'s cost at
searched layer ``l``, measured once at the task's input size with batch 1, and ``fixed`` is the
backbone's fixed parts (stem, the first stage, the head conv; not the detector's neck or head).
A ``skip`` costs 0.

Two kinds of cost:

- ``madds``: multiply-adds under :mod:`fna_ext.cost`'s convention, computed analytically (exact,
  instant, device-independent);
- ``latency``: the median forward time (ms) of real MBConv blocks on a device, cached as JSON
  under ``$FNA_EXT_CACHE/latency/`` (or ``~/.cache/fna_ext/latency/``), keyed by everything the
  measurement depends on.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from ..arch import Arch
from ..atomic import atomic_write_text
from ..cost import count
from ..families import ARCH_HEAD, get_family
from .search_space import LayerSpec

HW = tuple[int, int]
KINDS = ("madds", "latency")
JSON_FORMAT = "fna_ext.cost_table"
DEFAULT_REPEATS = 10
DEFAULT_WARMUP = 2


# --------------------------------------------------------------------------- spatial sizes
def _as_hw(input_size: int | tuple[int, int] | list[int]) -> HW:
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"input_size must be two positive integers (H, W), got {input_size!r}")
    return int(h), int(w)


def conv_output_size(size: int, kernel: int, stride: int) -> int:
    """What ``nn.Conv2d`` gives with padding ``kernel // 2``; for odd kernels it does not depend on
    the kernel, so a stride-2 layer shrinks alike whichever candidate it takes."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def _downsample(size: HW, kernel: int, stride: int) -> HW:
    return conv_output_size(size[0], kernel, stride), conv_output_size(size[1], kernel, stride)


@dataclass(frozen=True)
class _BackboneSizes:
    layer_inputs: list[HW]   # one per searched layer
    output: HW               # what the head conv sees


def _fixed_parts(seed_arch: Arch, head_channels: int | None) -> tuple[nn.Module, nn.Module | None]:
    """(stem and first stage, head) as the seed's family builds them: the parts every path shares."""
    family = get_family(seed_arch.family)
    with torch.random.fork_rng(devices=[]):  # building them must not move the caller's random stream
        first = nn.Sequential(family.build_stem(seed_arch),
                              *(family.build_layer(c_in, c_out, s, op)
                                for c_in, c_out, s, op in seed_arch.stages[0].layers(seed_arch.family)))
        return first, family.build_head(seed_arch, head_channels)


def _output_size(module: nn.Module, channels: int, size: HW) -> HW:
    with torch.no_grad():
        return tuple(module.eval()(torch.zeros(1, channels, *size)).shape[-2:])


def _backbone_sizes(seed_arch: Arch, specs: list[LayerSpec], input_size,
                    first: nn.Module | None = None) -> _BackboneSizes:
    """Sizes after the fixed first part (run once on zeros: the family's stem decides them),
    then per searched layer from its stride."""
    first = first if first is not None else _fixed_parts(seed_arch, None)[0]
    size = _output_size(first, 3, _as_hw(input_size))
    layer_inputs = []
    for spec in specs:
        layer_inputs.append(size)
        size = _downsample(size, 3, spec.stride)  # any odd kernel gives the same size
    return _BackboneSizes(layer_inputs, size)


def layer_input_sizes(seed_arch: Arch, specs: list[LayerSpec], input_size) -> list[HW]:
    """The (H, W) entering every searched layer for an input image of ``input_size``."""
    return _backbone_sizes(seed_arch, specs, input_size).layer_inputs


# --------------------------------------------------------------------------- the table
@dataclass
class CostTable:
    kind: str                       # "madds" or "latency"
    unit: str                       # "MAdds" or "ms"
    fixed: float                    # stem + first stage + head conv
    per_layer: list[list[float]]    # [layer][candidate], aligned with ``candidates``
    layer_keys: list[str]
    candidates: list[list[str]]
    input_size: HW
    device: str = ""                # what measured a latency table (empty for MAdds)
    torch_version: str = field(default_factory=lambda: torch.__version__)
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat())
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.input_size = _as_hw(self.input_size)
        if not (len(self.per_layer) == len(self.layer_keys) == len(self.candidates)):
            raise ValueError("per_layer, layer_keys and candidates must have one entry per searched layer")
        for key, costs, names in zip(self.layer_keys, self.per_layer, self.candidates):
            if len(costs) != len(names):
                raise ValueError(f"layer {key}: {len(costs)} costs for {len(names)} candidates")

    def expected(self, probs: list[torch.Tensor]) -> torch.Tensor:
        """``fixed + sum_l probs[l] . cost_l``, differentiable in ``probs``."""
        if len(probs) != len(self.per_layer):
            raise ValueError(f"expected() needs {len(self.per_layer)} probability vectors, got {len(probs)}")
        if not probs:
            return torch.tensor(float(self.fixed))
        total = probs[0].new_tensor(float(self.fixed))
        for p, costs in zip(probs, self.per_layer):
            total = total + (p * p.new_tensor(costs)).sum()
        return total

    def of_ops(self, ops: list[str]) -> float:
        """The cost of a derived path: one op per searched layer."""
        if len(ops) != len(self.per_layer):
            raise ValueError(f"a path needs {len(self.per_layer)} ops, got {len(ops)}")
        total = float(self.fixed)
        for key, op, names, costs in zip(self.layer_keys, ops, self.candidates, self.per_layer):
            if op not in names:
                raise ValueError(f"layer {key}: {op!r} is not a candidate {names}")
            total += costs[names.index(op)]
        return total

    def to_dict(self) -> dict:
        return {"format": JSON_FORMAT, "version": 1, "kind": self.kind, "unit": self.unit,
                "fixed": self.fixed, "per_layer": self.per_layer, "layer_keys": self.layer_keys,
                "candidates": self.candidates, "input_size": list(self.input_size), "device": self.device,
                "torch_version": self.torch_version, "created": self.created, "extra": self.extra}

    @classmethod
    def from_dict(cls, data: dict) -> "CostTable":
        if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
            raise ValueError(f"not a cost table (expected 'format': {JSON_FORMAT!r})")
        fields = ("kind", "unit", "fixed", "per_layer", "layer_keys", "candidates", "input_size",
                  "device", "torch_version", "created", "extra")
        missing = [f for f in fields[:7] if f not in data]
        if missing:
            raise ValueError(f"cost table lacks field(s) {missing}")
        return cls(**{f: data[f] for f in fields if f in data})

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the JSON form atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CostTable":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: cannot read the cost table ({err})") from None


# --------------------------------------------------------------------------- MAdds
def _fixed_madds(first: nn.Module, head: nn.Module | None, head_in_channels: int, sizes: _BackboneSizes,
                 input_size: HW) -> int:
    """The MAdds of the parts every path shares, counted on the modules themselves."""
    total = count(first, input_size).madds
    if head is not None:
        features = torch.zeros(1, head_in_channels, *sizes.output)
        total += count(head, sizes.output, forward=lambda m, _: m(features)).madds
    return total


def madds_table(seed_arch: Arch, specs: list[LayerSpec], input_size, head_channels: int | str | None = ARCH_HEAD) -> CostTable:
    """Every candidate's MAdds at its layer's input size, and the fixed parts'."""
    first, head = _fixed_parts(seed_arch, head_channels)
    sizes = _backbone_sizes(seed_arch, specs, input_size, first)
    family = get_family(seed_arch.family)
    per_layer = [[float(family.op_madds(spec.in_channels, spec.out_channels, op, spec.stride, size))
                  for op in spec.candidates]
                 for spec, size in zip(specs, sizes.layer_inputs)]
    fixed = _fixed_madds(first, head, seed_arch.out_channels, sizes, _as_hw(input_size))
    return CostTable("madds", "MAdds", float(fixed), per_layer,
                     [s.key for s in specs], [list(s.candidates) for s in specs], _as_hw(input_size),
                     extra={"head_channels": head_channels, "net_config": str(seed_arch)})


# --------------------------------------------------------------------------- latency
def device_name(device: torch.device) -> str:
    """The hardware behind ``device``: the GPU's name, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def default_cache_dir() -> Path:
    from ..data.synthetic import cache_dir  # imported late: the data package pulls in PIL and more

    return cache_dir() / "latency"


def latency_cache_key(seed_arch: Arch, specs: list[LayerSpec], input_size, device: str | torch.device, *,
                      head_channels: int | str | None = ARCH_HEAD, repeats: int = DEFAULT_REPEATS,
                      warmup: int = DEFAULT_WARMUP, threads: int | None = None) -> str:
    """A hash of everything a latency table depends on, so a cached table is reused only where it
    would be measured again the same way (``threads``: torch's CPU threads, default the current)."""
    device = torch.device(device)
    identity = {"net_config": str(seed_arch), "candidates": [[s.key, list(s.candidates)] for s in specs],
                "input_size": list(_as_hw(input_size)), "device": f"{device.type}:{device_name(device)}",
                "threads": threads or torch.get_num_threads(), "torch": torch.__version__,
                "head_channels": head_channels, "repeats": repeats, "warmup": warmup}
    # named only when they differ from the defaults, so the tables cached before them stay valid
    if seed_arch.family != "mbconv":
        identity["family"] = seed_arch.family
    if any(s.dilation != 1 for s in specs):
        identity["geometry"] = [[s.stride, s.dilation] for s in specs]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class _Job:
    """One module to time: how to build it, and the input it takes."""

    build: Callable[[], nn.Module]
    in_channels: int
    size: HW


def _prepare(job: _Job, device: torch.device) -> tuple[nn.Module, torch.Tensor]:
    # Building modules and inputs draws random numbers: fork the CPU generator so measuring never
    # shifts the caller's (the search's) random stream. Inputs are drawn on CPU for the same reason.
    with torch.random.fork_rng(devices=[]):
        module = job.build().eval().to(device)
        x = torch.randn(1, job.in_channels, *job.size).to(device)
    return module, x


def _time_once(module: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    """One forward's wall time in ms."""
    _synchronize(device)  # time only this run, not queued earlier work
    start = time.perf_counter()
    module(x)
    _synchronize(device)
    return (time.perf_counter() - start) * 1e3


def _measure(jobs: list[_Job], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Median latency (ms) of every job. The repeats run in rounds over all jobs rather than job
    after job: on a shared machine a burst of contention then spoils one sample of many jobs,
    which the median discards, instead of every sample of one job."""
    prepared = [_prepare(job, device) for job in jobs]
    samples: list[list[float]] = [[] for _ in prepared]
    with torch.no_grad():
        for module, x in prepared:
            for _ in range(warmup):
                module(x)
        for _ in range(repeats):
            for (module, x), times in zip(prepared, samples):
                times.append(_time_once(module, x, device))
    return [statistics.median(times) for times in samples]


def _fixed_jobs(seed_arch: Arch, sizes: _BackboneSizes, input_size: HW, head_channels: int | None) -> list[_Job]:
    jobs = [_Job(lambda: _fixed_parts(seed_arch, None)[0], 3, input_size)]
    if head_channels:
        jobs.append(_Job(lambda: _fixed_parts(seed_arch, head_channels)[1], seed_arch.out_channels, sizes.output))
    return jobs


def _candidate_configs(specs: list[LayerSpec], sizes: _BackboneSizes, families: list[str]) -> list[list[tuple | None]]:
    """Per layer and candidate, the (family, c_in, c_out, op, stride, size, dilation) that fixes its latency
    (None for a skip)."""
    configs = []
    for spec, size, family in zip(specs, sizes.layer_inputs, families):
        parse = get_family(family).parse_op
        configs.append([None if parse(op).is_skip else (family, spec.in_channels, spec.out_channels, op, spec.stride,
                                                        size, spec.dilation)
                        for op in spec.candidates])
    return configs


def _layer_job(config: tuple) -> _Job:
    family, c_in, c_out, op, stride, size, dilation = config
    return _Job(lambda: get_family(family).build_layer(c_in, c_out, stride, op, dilation=dilation), c_in, size)


def _measure_backbone(seed_arch: Arch, specs: list[LayerSpec], input_size: HW, head_channels: int | None,
                      device: torch.device, repeats: int, warmup: int) -> tuple[float, list[list[float]]]:
    """(fixed latency, per-layer candidate latencies); identical blocks at identical sizes are
    timed once."""
    sizes = _backbone_sizes(seed_arch, specs, input_size)
    fixed_jobs = _fixed_jobs(seed_arch, sizes, input_size, head_channels)
    configs = _candidate_configs(specs, sizes, [seed_arch.family] * len(specs))
    unique = list(dict.fromkeys(c for layer in configs for c in layer if c is not None))
    latencies = _measure(fixed_jobs + [_layer_job(c) for c in unique], device, repeats, warmup)
    by_config = dict(zip(unique, latencies[len(fixed_jobs):]))
    per_layer = [[0.0 if c is None else by_config[c] for c in layer] for layer in configs]
    return sum(latencies[:len(fixed_jobs)]), per_layer


def _load_cached(path: Path) -> CostTable | None:
    if not path.is_file():
        return None
    try:
        return CostTable.load(path)
    except ValueError as err:
        warnings.warn(f"ignoring an unreadable cached latency table: {err}")
        return None


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def latency_table(seed_arch: Arch, specs: list[LayerSpec], input_size, device: str | torch.device = "cpu", *,
                  repeats: int = DEFAULT_REPEATS, warmup: int = DEFAULT_WARMUP,
                  cache_dir: str | os.PathLike | None = None, head_channels: int | str | None = ARCH_HEAD,
                  threads: int | None = None) -> CostTable:
    """Every candidate's forward latency (ms, batch 1, eval mode) at its layer's input size on
    ``device``, and the fixed parts'; read from the cache when measured before. ``threads`` sets
    torch's CPU thread count for the measurement (default: the current one)."""
    if repeats < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise ValueError(f"repeats and threads must be >= 1 and warmup >= 0, got {repeats}, {threads}, {warmup}")
    with _torch_threads(threads):
        return _cached_latency_table(seed_arch, specs, _as_hw(input_size), torch.device(device), repeats, warmup,
                                     cache_dir, head_channels)


def _cached_latency_table(seed_arch: Arch, specs: list[LayerSpec], input_size: HW, device: torch.device,
                          repeats: int, warmup: int, cache_dir: str | os.PathLike | None,
                          head_channels: int | None) -> CostTable:
    key = latency_cache_key(seed_arch, specs, input_size, device, head_channels=head_channels,
                            repeats=repeats, warmup=warmup)
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / f"{key}.json"
    cached = _load_cached(path)
    if cached is not None:
        return cached
    start = time.perf_counter()
    fixed, per_layer = _measure_backbone(seed_arch, specs, input_size, head_channels, device, repeats, warmup)
    table = CostTable("latency", "ms", fixed, per_layer, [s.key for s in specs], [list(s.candidates) for s in specs],
                      input_size, device=f"{device.type}:{device_name(device)}",
                      extra={"cache_key": key, "threads": torch.get_num_threads(), "repeats": repeats,
                             "warmup": warmup, "head_channels": head_channels, "net_config": str(seed_arch),
                             "measure_seconds": round(time.perf_counter() - start, 3)})
    try:
        table.save(path)
    except OSError as err:  # an unwritable cache should not cost the measurement
        warnings.warn(f"could not cache the latency table at {path}: {err}")
    return table


def build_cost_table(kind: str, seed_arch: Arch, specs: list[LayerSpec], input_size,
                     device: str | torch.device = "cpu", **kw) -> CostTable:
    """The ``madds`` or ``latency`` table (``--cost``) of the search space ``specs``."""
    if kind == "madds":
        return madds_table(seed_arch, specs, input_size, **kw)
    if kind == "latency":
        return latency_table(seed_arch, specs, input_size, device, **kw)
    raise ValueError(f"--cost must be one of {list(KINDS)}, got {kind!r}")
