"""Architectures as data.

An :class:`Arch` is the backbone between the fixed stem (3x3 stride-2 conv to the first stage's
input channels) and the fixed head: a list of stages, each ``[[C_in, C_out], [op, ...], stride]``
where the stride applies to the stage's first layer. Ops are ``k{K}_e{E}`` (an MBConv block with a
KxK depthwise conv and expansion E) and ``skip`` (identity; never a stage's first layer).

Three text forms parse: the published ``net_config`` (stages joined by ``|``), the project's JSON
form (which may also carry the task, input size and search record), and a registered name such as
``mobilenet_v2``. ``str(arch)`` writes ``net_config``; ``arch.to_json()`` writes JSON.

An arch whose fixed parts differ from the family's defaults (MobileNetV3's hard-swish stem and
960-wide head, say) ends its ``net_config`` with one more chunk, a dict of those settings:
``...|[[160, 960], ...]|{'act': 'hs', 'head': 960, 'pre_logits': 1280}``. FNA's texts have none.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_write_text
from .families.mbconv.op import SKIP, Op  # noqa: F401  (re-exported)

JSON_FORMAT = "fna_ext.arch"


@dataclass(frozen=True)
class Stage:
    in_channels: int
    out_channels: int
    ops: tuple[str, ...]
    stride: int

    def layer_ops(self, family: str | None = None) -> list:
        """The ops of the stage's layers, parsed by ``family``'s grammar (default: mbconv)."""
        from .families import get_family

        parse = get_family(family).parse_op
        return [parse(op) for op in self.ops]

    def layers(self, family: str | None = None):
        """(in_channels, out_channels, stride, op) of each layer, skip layers included."""
        for i, op in enumerate(self.layer_ops(family)):
            yield (self.in_channels if i == 0 else self.out_channels, self.out_channels,
                   self.stride if i == 0 else 1, op)

    def to_net_config(self) -> str:
        ops = ", ".join(f"'{op}'" for op in self.ops)
        return f"[[{self.in_channels}, {self.out_channels}], [{ops}], {self.stride}]"


def _validate_stage(index: int, stage: Stage, family: str) -> None:
    where = f"stage {index} ({stage.to_net_config()})"
    for name, value in (("C_in", stage.in_channels), ("C_out", stage.out_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    if not isinstance(stage.stride, int) or isinstance(stage.stride, bool) or stage.stride not in (1, 2):
        raise ValueError(f"{where}: stride must be 1 or 2, got {stage.stride!r}")
    if not stage.ops:
        raise ValueError(f"{where}: a stage needs at least one op")
    from .families import get_family

    parse = get_family(family).parse_op
    for j, name in enumerate(stage.ops):
        try:
            op = parse(name)
        except ValueError as err:
            raise ValueError(f"{where}, layer {j}: {err}") from None
        if op.is_skip and j == 0:
            raise ValueError(f"{where}: 'skip' cannot be the first layer of a stage, which changes "
                             "channels or resolution; use a block op there")


@dataclass(frozen=True)
class Arch:
    stages: tuple[Stage, ...]
    # Task, input size, search record...: carried along, not part of the architecture's identity.
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    # the seed family whose blocks the ops name (fna_ext.families); it owns the op grammar
    family: str = "mbconv"
    # the fixed parts' settings the family reads (MBConv: the stem's and head's activation, the
    # head conv's width, MobileNetV3's pre-logits conv); empty: the family's defaults
    fixed: dict = field(default_factory=dict, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise ValueError("an architecture needs at least one stage")
        from .families import get_family

        object.__setattr__(self, "fixed", get_family(self.family).check_fixed(dict(self.fixed or {})))
        for i, stage in enumerate(self.stages):
            _validate_stage(i, stage, self.family)
            if i and stage.in_channels != self.stages[i - 1].out_channels:
                raise ValueError(
                    f"stage {i} ({stage.to_net_config()}): C_in {stage.in_channels} does not match "
                    f"the previous stage's C_out {self.stages[i - 1].out_channels}")

    # ---- properties -----------------------------------------------------------------------
    @property
    def stem_channels(self) -> int:
        return self.stages[0].in_channels

    @property
    def out_channels(self) -> int:
        return self.stages[-1].out_channels

    def num_layers(self, include_skips: bool = True) -> int:
        return sum(1 for s in self.stages for op in s.layer_ops(self.family) if include_skips or not op.is_skip)

    def with_meta(self, **meta) -> "Arch":
        return Arch(self.stages, {**self.meta, **meta}, self.family, self.fixed)

    def with_stages(self, stages) -> "Arch":
        """Another arch of the same family and fixed parts (a derived or a super network's)."""
        return Arch(tuple(stages), {}, self.family, self.fixed)

    # ---- text forms -----------------------------------------------------------------------
    def __str__(self) -> str:
        # the fixed parts, where they are not the defaults, as a last chunk: {'act': 'hs', ...}
        fixed = [repr(self.fixed)] if self.fixed else []
        return "|".join([stage.to_net_config() for stage in self.stages] + fixed)

    def to_dict(self) -> dict:
        stages = [{"in": s.in_channels, "out": s.out_channels, "ops": list(s.ops), "stride": s.stride}
                  for s in self.stages]
        family = {} if self.family == "mbconv" else {"family": self.family}
        fixed = {"fixed": dict(self.fixed)} if self.fixed else {}
        return {"format": JSON_FORMAT, "version": 1, "net_config": str(self), **family, "stages": stages,
                **fixed, **self.meta}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path) -> Path:
        """Writes the JSON form atomically."""
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def parse(cls, text: str) -> "Arch":
        """Parses net_config text, the JSON form, or a registered name."""
        if not isinstance(text, str):
            raise ValueError(f"an architecture must be given as text, got {type(text).__name__}")
        text = text.strip()
        if text in named_archs():
            return named_archs()[text]()
        if text.startswith("{"):
            return cls._from_json_text(text)
        if text.startswith("["):
            return cls._from_net_config(text)
        raise ValueError(f"cannot parse architecture {text[:60]!r}: expected net_config text "
                         f"('[[32, 16], ['k3_e1'], 1]|...'), the JSON form, or one of the names "
                         f"{sorted(named_archs())}")

    @classmethod
    def load(cls, path) -> "Arch":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: cannot read the architecture file ({err})") from None
        try:
            return cls.parse(text)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def from_arg(cls, value: str, flag: str = "--arch") -> "Arch":
        """A CLI's ARCH argument (``flag``): a registered name, a file, or inline net_config/JSON text."""
        if not isinstance(value, str):
            raise ValueError(f"{flag} must be a name, a file or net_config text, got {type(value).__name__}")
        if value.strip() in named_archs() or value.lstrip().startswith(("[", "{")):
            return cls.parse(value)
        if _is_file(value):
            return cls.load(value)
        raise ValueError(f"{flag} {value!r} is neither a file, nor net_config/JSON text, nor one of "
                         f"the names {sorted(named_archs())}")

    @classmethod
    def _from_net_config(cls, text: str, meta: dict | None = None, family: str | None = None) -> "Arch":
        """net_config text; ``family`` None: the family whose op grammar the ops are written in."""
        stages, chunks, fixed = [], text.split("|"), {}
        if len(chunks) > 1 and chunks[-1].strip().startswith("{"):
            fixed = _fixed_from_text(chunks.pop().strip())
        for i, chunk in enumerate(chunks):
            try:
                value = ast.literal_eval(chunk.strip())
            # TypeError: a list used as a set member or dict key; RecursionError and MemoryError:
            # nesting deeper than the parser goes (no real arch comes near)
            except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
                raise ValueError(f"stage {i} ({chunk.strip()[:60]!r}): not a list of the form "
                                 "[[C_in, C_out], [op, ...], stride]") from None
            stages.append(_stage_from_list(i, value))
        return cls(tuple(stages), meta or {}, family or _family_of_ops(stages), fixed)

    @classmethod
    def _from_json_text(cls, text: str) -> "Arch":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as err:  # ValueError: bad JSON, or a number past int's limit
            raise ValueError(f"invalid JSON architecture: {type(err).__name__}: {str(err)[:200]}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> "Arch":
        from .families import get_family

        if not isinstance(data, dict):
            raise ValueError("a JSON architecture must be an object")
        meta = {k: v for k, v in data.items()
                if k not in ("format", "version", "net_config", "stages", "family", "fixed")}
        family = data.get("family", "mbconv")
        if not isinstance(family, str):
            raise ValueError(f"field 'family' must be the name of a seed family, got {family!r}")
        fixed = data.get("fixed", {})
        if not isinstance(fixed, dict):
            raise ValueError(f"field 'fixed' must be an object of the fixed parts' settings, got {fixed!r}")
        if "stages" in data:
            if not isinstance(data["stages"], list):
                raise ValueError("field 'stages' must be a list")
            stages = tuple(_stage_from_dict(i, s) for i, s in enumerate(data["stages"]))
            arch = cls(stages, meta, family, fixed)
            if "net_config" in data and cls._from_net_config(str(data["net_config"]), family=family) != arch:
                raise ValueError("fields 'net_config' and 'stages' describe different architectures")
            return arch
        if "net_config" in data:
            arch = cls._from_net_config(str(data["net_config"]), meta, family)
            if "fixed" in data and arch.fixed != get_family(family).check_fixed(dict(fixed)):
                raise ValueError("fields 'net_config' and 'fixed' describe different fixed parts")
            return arch
        raise ValueError("a JSON architecture needs a 'stages' or a 'net_config' field")


def _fixed_from_text(chunk: str) -> dict:
    try:
        value = ast.literal_eval(chunk)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"the last chunk {chunk[:60]!r} is not the fixed parts' settings, a dict such as "
                         "{'act': 'hs', 'head': 960}")
    return value


def _is_file(value: str) -> bool:
    try:
        return Path(value).is_file()
    except (OSError, ValueError):  # a name too long for the OS, or with a NUL byte: not a file
        return False


def _family_of_ops(stages) -> str:
    """The family whose grammar reads every op of ``stages`` (``basic_k3`` is a ResNet's, ``k3_e6``
    an MBConv's); failing that, the one that reads the first op, so that the error names the
    layer that is wrong in its grammar; failing that too, the default family."""
    from .families import DEFAULT, family_names, get_family

    ops = [op for stage in stages for op in stage.ops]

    def reads(family: str, names) -> bool:
        try:
            for name in names:
                get_family(family).parse_op(name)
        except ValueError:
            return False
        return True

    for names in (ops, ops[:1]):
        readers = [family for family in family_names() if reads(family, names)]
        if readers:
            return DEFAULT if DEFAULT in readers else readers[0]
    return DEFAULT


def _stage_from_list(index: int, value) -> Stage:
    shape_ok = (isinstance(value, (list, tuple)) and len(value) == 3
                and isinstance(value[0], (list, tuple)) and len(value[0]) == 2
                and isinstance(value[1], (list, tuple)))
    if not shape_ok:
        raise ValueError(f"stage {index} ({value!r}): expected [[C_in, C_out], [op, ...], stride]")
    return Stage(value[0][0], value[0][1], tuple(value[1]), value[2])


def _stage_from_dict(index: int, value) -> Stage:
    missing = [k for k in ("in", "out", "ops", "stride") if not isinstance(value, dict) or k not in value]
    if missing:
        raise ValueError(f"stage {index}: missing field(s) {missing} (each stage is "
                         "{'in': C_in, 'out': C_out, 'ops': [...], 'stride': 1 or 2})")
    if not isinstance(value["ops"], list):
        raise ValueError(f"stage {index}: field 'ops' must be a list")
    return Stage(value["in"], value["out"], tuple(value["ops"]), value["stride"])


@dataclass(frozen=True)
class StageGeometry:
    """How a stage runs once an output stride is imposed: its first layer's stride and dilation,
    and the dilation of its other layers."""

    stride: int
    first_dilation: int
    dilation: int


def stage_geometry(arch: Arch, output_stride: int | None = None, stem_stride: int = 2) -> list[StageGeometry]:
    """Per stage, the stride and dilations that keep the features at ``output_stride`` (None:
    the arch's own strides). As DeepLab does, a stage that would go past the output stride runs at
    stride 1 and dilates instead; its first layer keeps the dilation the previous layers had, and
    the layers after it take the new one."""
    if output_stride is not None and (output_stride < stem_stride or output_stride & (output_stride - 1)):
        raise ValueError(f"output_stride must be a power of two of at least {stem_stride}, got {output_stride}")
    geometry, stride, dilation = [], stem_stride, 1
    for stage in arch.stages:
        previous = dilation
        if output_stride is not None and stride * stage.stride > output_stride:
            dilation *= stage.stride
            geometry.append(StageGeometry(1, previous, dilation))
        else:
            stride *= stage.stride
            geometry.append(StageGeometry(stage.stride, previous, dilation))
    return geometry


def named_archs() -> dict:
    """{name: function returning the Arch} of every family's named architectures (mobilenet_v2,
    resnet18, ...)."""
    from .families import family_names, get_family

    return {name: build for family in family_names() for name, build in get_family(family).named_archs().items()}


def __getattr__(name: str):
    # the MobileNetV2 helpers live with their family; fna_ext.arch.mobilenet_v2_arch still works
    if name in ("mobilenet_v2_arch", "make_divisible"):
        from .families.mbconv import archs

        return getattr(archs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
