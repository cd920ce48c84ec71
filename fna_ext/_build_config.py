"""The one list of C++/CUDA sources and compiler flags of the ``fna_ext._C`` extension.

Both ``setup.py`` (ahead-of-time build) and :mod:`fna_ext._extension` (first-use JIT build)
read this file, and ``CMakeLists.txt`` asks it for the same lists, so the three builds cannot
drift apart. It must import nothing beyond the standard library: ``setup.py`` executes it
before torch may be importable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXTENSION_NAME = "fna_ext._C"

# Relative to the csrc root. Sources shared by every build.
CPU_SOURCES = [
    "registration.cpp",
    "host_cache.cpp",
    "nms/nms_cpu.cpp",
    "remap/remap_cpu.cpp",
    "mbconv/mbconv_cpu.cpp",
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

CXX_FLAGS = ["-O3", "-std=c++17", "-fvisibility=hidden"]
# at::parallel_for is OpenMP in torch's Linux builds, inlined from its headers: without -fopenmp
# it compiles to a serial loop. The link flag resolves to the libgomp.so.1 torch already loaded.
LINK_FLAGS: list[str] = []
if sys.platform.startswith("linux"):
    CXX_FLAGS.append("-fopenmp")
    LINK_FLAGS.append("-fopenmp")
NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
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


def sources(with_cuda: bool, python_module: bool = True, root: Path | None = None) -> list[str]:
    root = root or csrc_root()
    names = list(CPU_SOURCES)
    if python_module:
        names += PYTHON_MODULE_SOURCES
    if with_cuda:
        names += CUDA_SOURCES
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


if __name__ == "__main__":
    # `python fna_ext/_build_config.py cmake` prints the lists as CMake variables.
    root = Path(__file__).resolve().parent.parent / "csrc"
    if sys.argv[1:] == ["cmake"]:
        print("FNA_CPU_SOURCES=" + ";".join(CPU_SOURCES))
        print("FNA_CUDA_SOURCES=" + ";".join(CUDA_SOURCES))
        print("FNA_CPP_TEST_SOURCES=" + ";".join(CPP_TEST_SOURCES))
        print("FNA_CXX_FLAGS=" + ";".join(CXX_FLAGS))
        print("FNA_NVCC_FLAGS=" + ";".join(NVCC_FLAGS))
        print("FNA_LINK_FLAGS=" + ";".join(LINK_FLAGS))
    else:
        print("\n".join(sources(with_cuda=False, root=root)))
