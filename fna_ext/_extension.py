"""Finds, loads and checks the compiled extension (``fna_ext._C``).

Three outcomes, all reported by ``python -m fna_ext.info``:
- the extension built at install time (``pip install --no-build-isolation .``) imports;
- it is absent (an isolated ``pip install .``): the sources shipped in the package are compiled on
  first use into torch's extension cache, with one message saying so;
- it cannot be had (no compiler, a torch it was not built for, ``FNA_EXT_DISABLE_EXTENSION=1``):
  every op runs its pure-PyTorch reference path and nothing claims to be fused.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import _build_config

REBUILD_COMMAND = "pip install --no-build-isolation --force-reinstall --no-deps ."
DISABLE_ENV = "FNA_EXT_DISABLE_EXTENSION"
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


@dataclass
class ExtensionStatus:
    loaded: bool = False
    how: str = "not loaded"  # "installed", "compiled on first use", or why not
    build_info: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def devices(self) -> list[str]:
        """Device types that have compiled kernels."""
        return [device for device, ops in self.kernels.items() if ops]

    @property
    def kernels(self) -> dict[str, list[str]]:
        """Per device type, the fna_ext ops that have a compiled kernel for it."""
        if not self.loaded:
            return {}
        return {device: sorted(op.split("::", 1)[1]
                               for op in torch._C._dispatch_get_registrations_for_dispatch_key(key)
                               if op.startswith("fna_ext::"))
                for device, key in _DISPATCH_KEYS.items()}

    def missing_kernels(self) -> dict[str, list[str]]:
        """Per device type it was built for, the ops another device has and this one lacks: a
        kernel whose glue did not register (``nvcc -c`` alone cannot see that). CPU_ONLY_OPS are
        not missing elsewhere."""
        kernels = self.kernels
        every = set().union(*kernels.values()) if kernels else set()
        built_for = [d for d in kernels if d == "cpu" or self.build_info.get(d)]
        return {device: sorted(every - set(kernels[device]) - (set() if device == "cpu" else CPU_ONLY_OPS))
                for device in built_for}


# Ops with a CPU kernel only, by design: data loading (DataLoader workers run on the CPU, and a
# batch reaches the GPU as finished tensors).
CPU_ONLY_OPS = {"photometric_distortion"}

_status: ExtensionStatus | None = None
_jit_tried = False
_on_load: list[Callable[[], None]] = []


def on_load(register: Callable[[], None]) -> None:
    """Runs ``register`` (fake kernels, autograd) once the library is loaded, or now if it is."""
    _on_load.append(register)
    if _status is not None and _status.loaded:
        register()


def _runtime_torch_version() -> str:
    return torch.__version__.split("+")[0]


def warn_if_built_for_another_torch(build_info: dict) -> bool:
    """Warns (and returns True) when the extension was compiled against another torch version."""
    built = build_info.get("torch_version")
    if built == _runtime_torch_version():
        return False
    warnings.warn(
        f"fna_ext: the compiled extension was built against torch {built} but torch "
        f"{torch.__version__} is running; rebuild it with `{REBUILD_COMMAND}` in the fna_ext "
        "source tree", RuntimeWarning, stacklevel=4)
    return True


def warn_if_built_with_another_abi(build_info: dict) -> bool:
    """Warns (and returns True) when the extension's libstdc++ ABI is not the running torch's."""
    built = build_info.get("cxx11_abi")
    if built is None or built == torch.compiled_with_cxx11_abi():
        return False
    warnings.warn(
        f"fna_ext: the compiled extension was built with _GLIBCXX_USE_CXX11_ABI={int(built)} but "
        f"torch {torch.__version__} uses {int(torch.compiled_with_cxx11_abi())}; rebuild it with "
        f"`{REBUILD_COMMAND}` in the fna_ext source tree", RuntimeWarning, stacklevel=4)
    return True


def _finish_loading(how: str) -> ExtensionStatus:
    info = json.loads(torch.ops.fna_ext.build_info())
    status = ExtensionStatus(loaded=True, how=how, build_info=info)
    warn_if_built_for_another_torch(info) or warn_if_built_with_another_abi(info)
    for register in _on_load:
        register()
    return status


def _load_failure_cause(err: BaseException) -> str:
    """Why a built extension does not load, in words a user can act on."""
    text = str(err)
    if "undefined symbol" in text and ("cxx11" in text or "St3__1" in text):
        return (f"it was built with another C++ ABI than torch {torch.__version__} "
                f"(_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())})")
    return f"it does not load with torch {torch.__version__}"


def _belongs_to_this_package(spec) -> bool:
    """An editable install's finder can hand out another tree's _C for ``fna_ext._C``; only the
    one beside this package's own files was built from its sources."""
    origin = getattr(spec, "origin", None)
    return origin is not None and Path(origin).resolve().parent == Path(__file__).resolve().parent


def _load_installed() -> ExtensionStatus | None:
    """The extension built at install time, or None when this package has none."""
    try:
        spec = importlib.util.find_spec("fna_ext._C")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not _belongs_to_this_package(spec):
        return None
    try:
        importlib.import_module("fna_ext._C")
    except (ImportError, OSError) as err:  # typically undefined symbols: another torch or ABI
        cause = _load_failure_cause(err)
        warnings.warn(
            f"fna_ext: the compiled extension cannot be used: {cause} ({err}); rebuild it with "
            f"`{REBUILD_COMMAND}` in the fna_ext source tree. Using the pure-PyTorch reference "
            "paths.", RuntimeWarning, stacklevel=3)
        return ExtensionStatus(how="failed to load", error=f"{cause}: {err}")
    return _finish_loading("installed")


def _first_use_build_exists(cpp_extension) -> bool:
    """Whether an earlier first-use build sits in torch's extension cache (torch then only
    checks it is current), so the one-minute compile message is not repeated on every run."""
    try:
        build_dir = Path(cpp_extension._get_build_directory("fna_ext_C", verbose=False))
    except Exception:  # a private helper of torch: if it moves, say the message anyway
        return False
    return any(build_dir.glob("fna_ext_C*.so")) or any(build_dir.glob("fna_ext_C*.pyd"))


def _first_use_problem() -> str | None:
    """What stops a first-use build before it starts, with the fix."""
    problem = _build_config.compiler_problem()
    if problem is None and _build_config.find_ninja() is None:
        problem = _build_config.NINJA_PROBLEM
    return problem


def _compile_error_summary(err: BaseException) -> str:
    """The compiler's first error line, not the whole build log that torch puts in the message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if " error:" in line:  # gcc, clang and nvcc: "file:line:col: (fatal )error: ..."
            return line
    return lines[0] if lines else type(err).__name__


def _failed_first_use(cause: str) -> ExtensionStatus:
    fix = ("fix that, or build at install time with "
           f"`{REBUILD_COMMAND}` in the fna_ext source tree")
    warnings.warn(f"fna_ext: the C++ ops could not be compiled on first use: {cause}; {fix}. "
                  "Using the pure-PyTorch reference paths, which are slower.",
                  RuntimeWarning, stacklevel=4)
    return ExtensionStatus(how="first-use compile failed", error=f"{cause}; {fix}")


def _compile_on_first_use() -> ExtensionStatus:
    problem = _first_use_problem()
    if problem is not None:
        return _failed_first_use(problem)
    try:  # before torch's build helpers read CUDA_HOME
        with_cuda, note = _build_config.cuda_build_decision(torch.version.cuda is not None)
    except RuntimeError as err:
        return _failed_first_use(str(err))
    if note:
        print(f"fna_ext: {note}", file=sys.stderr)
    from torch.utils import cpp_extension

    if with_cuda:
        _build_config.ensure_cuda_arch_list(torch.cuda.is_available())
    if not _first_use_build_exists(cpp_extension):
        print("fna_ext: no prebuilt extension; compiling the C++ ops once into torch's extension "
              "cache (about a minute). `pip install --no-build-isolation .` builds them at install "
              "time instead.", file=sys.stderr)
    try:
        sources = _build_config.sources(with_cuda, python_module=False)
    except ValueError as err:  # FNA_EXT_OPS names an unknown family
        return _failed_first_use(str(err))
    try:
        cpp_extension.load(
            name="fna_ext_C",
            sources=sources,
            extra_cflags=_build_config.cxx_flags(with_cuda),
            extra_ldflags=_build_config.LINK_FLAGS,
            extra_cuda_cflags=_build_config.NVCC_FLAGS + [
                f"-D{k}={v}" for k, v in _build_config.define_macros(with_cuda)],
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=False,
        )
    except Exception as err:  # a compile or link error: fall back, loudly, naming the cause
        return _failed_first_use(f"the build failed ({_compile_error_summary(err)})")
    return _finish_loading("compiled on first use")


def status(compile_if_missing: bool = True) -> ExtensionStatus:
    """The extension's state, loading it (and compiling it if allowed and needed) on first call."""
    global _status, _jit_tried
    if _status is not None and (_status.loaded or _jit_tried or not compile_if_missing):
        return _status
    if os.environ.get(DISABLE_ENV) == "1":
        _status = ExtensionStatus(how=f"disabled by {DISABLE_ENV}=1")
        return _status
    if _status is None:
        _status = _load_installed()
    if _status is None:
        _status = ExtensionStatus(how="not built yet")
        if not compile_if_missing:
            return _status
    if not _status.loaded and _status.error is None and compile_if_missing and not _jit_tried:
        _jit_tried = True
        _status = _compile_on_first_use()
    return _status


# Answers for a loaded library, by (op, device type): its kernels do not change while the process
# runs, and the dispatcher query took 13 us, asked on every fused block call (benchmarks/RESULTS.md,
# session 36).
_KERNEL_ANSWERS: dict[tuple[str, str], bool] = {}


# torch.compile takes the answer as a constant instead of tracing the dispatcher query (a graph
# break): the kernels a process has do not change while it runs
@torch.compiler.assume_constant_result
def has_kernel(op: str, device: torch.device | str) -> bool:
    """Whether fna_ext::<op> has a compiled kernel for this device type."""
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    answer = _KERNEL_ANSWERS.get((op, device_type))
    if answer is not None:
        return answer
    if device_type not in _DISPATCH_KEYS or not status().loaded:
        return False  # not kept: the library may load later (compiled on first use)
    try:
        answer = torch._C._dispatch_has_kernel_for_dispatch_key(f"fna_ext::{op}", _DISPATCH_KEYS[device_type])
    except RuntimeError:  # an extension built from older sources, without this op
        answer = False
    _KERNEL_ANSWERS[(op, device_type)] = answer
    return answer
