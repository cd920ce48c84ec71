"""The one list of C++/CUDA sources and compiler flags of the ``fna_ext._C`` extension.

Both ``setup.py`` (ahead-of-time build) and :mod:`fna_ext._extension` (first-use JIT build)
read this file, and ``CMakeLists.txt`` asks it for the same lists, so the three builds cannot
drift apart. It must import nothing beyond the standard library: ``setup.py`` executes it
before torch may be importable.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

EXTENSION_NAME = "fna_ext._C"

# Relative to the csrc root. Sources shared by every build.
CPU_SOURCES = [
    "registration.cpp",
    "host_cache.cpp",
    "cpu_isa.cpp",
    "nms/nms_cpu.cpp",
    "remap/remap_cpu.cpp",
    "mbconv/mbconv_cpu.cpp",
    "augment/photometric_cpu.cpp",
]
# Only in the Python extension (defines PyInit__C so ``import fna_ext._C`` works).
PYTHON_MODULE_SOURCES = ["python_module.cpp"]
# Built only against a CUDA torch: the .cu kernels need only the CUDA runtime headers and the
# *_glue.cpp files turn torch tensors into their launch-function arguments.
CUDA_SOURCES = [
    "nms/nms_cuda.cu",
    "nms/nms_cuda_glue.cpp",
    "remap/remap_cuda.cu",
    "remap/remap_cuda_glue.cpp",
    "mbconv/mbconv_cuda.cu",
    "mbconv/mbconv_cuda_glue.cpp",
]
# The C++ test executable of the CMake build.
CPP_TEST_SOURCES = ["tests/test_ops.cpp"]

# No -std flag here: torch's own build helpers (BuildExtension, load() and TorchConfig.cmake) add
# the C++ standard that the installed torch's headers need (C++20 for every supported torch).
# A constant here broke every build against a newer torch.
# -g0: Python's own CFLAGS (which setuptools passes on) often carry -g, and debug information for
# torch's headers makes every file compile about 2.7x slower (63 s against 23 s for the smallest
# one with torch 2.14's headers on this project's 2-core CI machine).
CXX_FLAGS = ["-O3", "-g0", "-fvisibility=hidden"]
# at::parallel_for is OpenMP in torch's Linux builds, inlined from its headers: without -fopenmp
# it compiles to a serial loop. The link flag resolves to the libgomp.so.1 torch already loaded.
LINK_FLAGS: list[str] = []
if sys.platform.startswith("linux"):
    CXX_FLAGS.append("-fopenmp")
    LINK_FLAGS.append("-fopenmp")
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
# Compiled for when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset (Hopper, the H100/H200).
DEFAULT_CUDA_ARCH_LIST = "9.0"


def csrc_root() -> Path:
    """Where the sources are: shipped inside the installed package, or the checkout's csrc/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_csrc", here.parent / "csrc"):
        if (candidate / CPU_SOURCES[0]).is_file():
            return candidate
    raise FileNotFoundError(
        f"fna_ext: C++ sources not found in {here / '_csrc'} or {here.parent / 'csrc'}; "
        "reinstall fna_ext from a complete source tree"
    )


OPS_ENV = "FNA_EXT_OPS"


def op_families() -> list[str]:
    """The op families, one per csrc/ folder (augment, mbconv, nms, remap)."""
    return sorted({name.split("/")[0] for name in CPU_SOURCES + CUDA_SOURCES if "/" in name})


def selected_op_families() -> set[str] | None:
    """The families ``FNA_EXT_OPS=nms,remap`` asks for, or None (all). A kernel developer builds
    one family in seconds instead of minutes; ops left out run their pure-PyTorch reference."""
    value = os.environ.get(OPS_ENV, "").strip()
    if not value:
        return None
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = sorted(names - set(op_families()))
    if unknown:
        raise ValueError(f"{OPS_ENV}={value}: unknown op families {', '.join(unknown)}; choose "
                         f"from {', '.join(op_families())}, or unset it to build all")
    return names


def sources(with_cuda: bool, python_module: bool = True, root: Path | None = None) -> list[str]:
    root = root or csrc_root()
    names = list(CPU_SOURCES)
    if python_module:
        names += PYTHON_MODULE_SOURCES
    if with_cuda:
        names += CUDA_SOURCES
    families = selected_op_families()
    if families is not None:  # the schemas (registration.cpp) stay: every op exists, some unfused
        names = [name for name in names if "/" not in name or name.split("/")[0] in families]
    return [str(root / name) for name in names]


def define_macros(with_cuda: bool) -> list[tuple[str, str]]:
    return [("FNA_EXT_WITH_CUDA", "1")] if with_cuda else []


def cxx_flags(with_cuda: bool) -> list[str]:
    return CXX_FLAGS + [f"-D{name}={value}" for name, value in define_macros(with_cuda)]


def ensure_cuda_arch_list(gpu_visible: bool) -> str:
    """Respect TORCH_CUDA_ARCH_LIST; without it and without a GPU, build for DEFAULT_CUDA_ARCH_LIST."""
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not gpu_visible:
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
    return os.environ.get("TORCH_CUDA_ARCH_LIST", "(detected from the visible GPUs)")


def find_compiler() -> str | None:
    """The C++ compiler a build would run: ``$CXX`` when set, else ``c++`` (as torch's helpers do)."""
    command = os.environ.get("CXX", "").split() or ["c++"]
    return shutil.which(command[0])


def find_ninja() -> str | None:
    """ninja on PATH, or beside this Python (a venv's bin/ that is not on PATH)."""
    beside = Path(sys.executable).with_name("ninja")
    return shutil.which("ninja") or (str(beside) if beside.is_file() else None)


def compiler_problem() -> str | None:
    if find_compiler() is not None:
        return None
    wanted = os.environ.get("CXX") or "c++"
    return (f"no C++ compiler: `{wanted}` is not on PATH; install one (Debian/Ubuntu: "
            "apt-get install g++) or set CXX to a compiler")


NINJA_PROBLEM = "ninja is not installed; run `pip install ninja`"


CUDA_HOME_VARIABLES = ("CUDA_HOME", "CUDA_PATH")
# Where toolkits install themselves when nothing on PATH points at one.
DEFAULT_CUDA_HOMES = ("/usr/local/cuda",)
FORCE_CUDA_ENV = "FORCE_CUDA"


def _is_toolkit(folder: str | Path) -> bool:
    return (Path(folder) / "include" / "cuda_runtime.h").is_file()


def _nvcc_top(nvcc: str) -> str | None:
    """The toolkit folder that nvcc itself reports (its dry run prints ``TOP=...``). This finds the
    toolkit behind a wrapper script on PATH, which no link resolution can follow."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o",
                                  os.path.join(tmp, "probe.o")], capture_output=True, text=True,
                                 timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    return os.path.realpath(match.group(1).strip()) if match else None


def find_cuda_home() -> tuple[str | None, str | None]:
    """The CUDA toolkit's folder, and None; or None and one line saying why none was found.

    ``CUDA_HOME`` or ``CUDA_PATH`` wins when set (and must hold the toolkit's headers). Otherwise
    the folder comes from ``nvcc`` on PATH with links resolved, then from what nvcc reports, then
    ``DEFAULT_CUDA_HOMES``. torch's own guess, the parent of the folder holding ``nvcc``, is wrong
    whenever nvcc is reached through a link or a wrapper in a general ``bin`` folder.
    """
    for variable in CUDA_HOME_VARIABLES:
        value = os.environ.get(variable)
        if value:
            if _is_toolkit(value):
                return value, None
            return None, (f"{variable}={value} has no include/cuda_runtime.h; set {variable} to the "
                          "CUDA toolkit's folder (the one holding bin/nvcc and include/)")
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parent.parent))
        candidates.append(lambda: _nvcc_top(nvcc))
    candidates += DEFAULT_CUDA_HOMES
    for candidate in candidates:
        folder = candidate() if callable(candidate) else candidate
        if folder and _is_toolkit(folder):
            return os.path.realpath(folder), None
    where = f"nvcc at {nvcc} belongs to no folder with" if nvcc else "no nvcc on PATH and no folder with"
    return None, (f"{where} include/cuda_runtime.h; set CUDA_HOME to the CUDA toolkit's folder")


def use_cuda_home(folder: str) -> None:
    """Points torch's build helpers at ``folder``. They read CUDA_HOME once, when
    torch.utils.cpp_extension is first imported, so an import that came earlier is updated too."""
    os.environ["CUDA_HOME"] = folder
    cpp_extension = sys.modules.get("torch.utils.cpp_extension")
    if cpp_extension is not None:
        cpp_extension.CUDA_HOME = folder


def cuda_build_decision(torch_has_cuda: bool) -> tuple[bool, str | None]:
    """Whether to build the CUDA kernels, and a one-line note when a CUDA torch gets a CPU-only
    build for want of a toolkit. FORCE_CUDA=1 turns that case into a RuntimeError, and
    FORCE_CUDA=0 asks for the CPU kernels only."""
    forced = os.environ.get(FORCE_CUDA_ENV) == "1"
    if os.environ.get(FORCE_CUDA_ENV) == "0" or not (torch_has_cuda or forced):
        return False, None  # FORCE_CUDA=0: the CPU kernels only, even with a CUDA torch
    home, problem = find_cuda_home()
    if home is None:
        if forced:
            raise RuntimeError(f"{FORCE_CUDA_ENV}=1 but no usable CUDA toolkit: {problem}")
        return False, (f"torch has CUDA but {problem}; building the CPU kernels only "
                       f"({FORCE_CUDA_ENV}=1 makes this an error)")
    use_cuda_home(home)
    return True, None


if __name__ == "__main__":
    # `python fna_ext/_build_config.py cmake` prints the lists as CMake variables.
    root = Path(__file__).resolve().parent.parent / "csrc"
    if sys.argv[1:] == ["cmake"]:  # FNA_EXT_OPS selects families here too
        try:
            cpu, every = (sources(cuda, python_module=False, root=root) for cuda in (False, True))
        except ValueError as err:
            sys.exit(f"error: {err}")
        print("FNA_CPU_SOURCES=" + ";".join(os.path.relpath(s, root) for s in cpu))
        print("FNA_CUDA_SOURCES=" + ";".join(os.path.relpath(s, root) for s in every if s not in cpu))
        print("FNA_CPP_TEST_SOURCES=" + ";".join(CPP_TEST_SOURCES))
        print("FNA_CXX_FLAGS=" + ";".join(CXX_FLAGS))
        print("FNA_NVCC_FLAGS=" + ";".join(NVCC_FLAGS))
        print("FNA_LINK_FLAGS=" + ";".join(LINK_FLAGS))
    else:
        print("\n".join(sources(with_cuda=False, root=root)))
