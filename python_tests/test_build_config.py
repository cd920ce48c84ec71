"""The build environment: the C++ standard left to torch, the CUDA toolkit found behind links and
wrapper scripts, and one clear line for each way a build environment can fall short."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from fna_ext import _build_config, _extension
from fna_ext.cli import info


def make_toolkit(root: Path) -> Path:
    """A folder shaped like a CUDA toolkit, whose nvcc answers a dry run as the real one does."""
    (root / "include").mkdir(parents=True)
    (root / "include" / "cuda_runtime.h").write_text("// stand-in\n")
    (root / "bin").mkdir()
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f'#!/bin/sh\necho "#$ _HERE_={root}/bin" >&2\necho "#$ TOP={root}/bin/.." >&2\n')
    nvcc.chmod(0o755)
    return root


@pytest.fixture
def no_cuda_env(monkeypatch, tmp_path):
    for variable in _build_config.CUDA_HOME_VARIABLES + (_build_config.FORCE_CUDA_ENV,):
        monkeypatch.delenv(variable, raising=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(_build_config, "DEFAULT_CUDA_HOMES", ())
    return empty


def test_no_flag_fixes_the_cxx_standard():
    # torch's helpers add the standard its headers need (C++20 since torch 2.13); a constant broke
    # every build against a newer torch
    for flag in _build_config.cxx_flags(True) + _build_config.NVCC_FLAGS:
        assert not flag.startswith("-std"), flag


def test_cuda_home_variable_is_honoured(no_cuda_env, monkeypatch, tmp_path):
    toolkit = make_toolkit(tmp_path / "toolkit")
    monkeypatch.setenv("CUDA_PATH", str(toolkit))
    assert _build_config.find_cuda_home() == (str(toolkit), None)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))  # set, but no toolkit there: said, not skipped
    home, problem = _build_config.find_cuda_home()
    assert home is None and problem.startswith(f"CUDA_HOME={tmp_path} has no include/cuda_runtime.h")


def test_nvcc_through_a_link_in_a_general_bin_folder(no_cuda_env, tmp_path):
    toolkit = make_toolkit(tmp_path / "cuda-13.0")
    (no_cuda_env / "nvcc").symlink_to(toolkit / "bin" / "nvcc")
    assert _build_config.find_cuda_home() == (str(toolkit.resolve()), None)


def test_nvcc_through_a_wrapper_script(no_cuda_env, tmp_path):
    # no link to resolve: the toolkit is what nvcc's own dry run reports
    toolkit = make_toolkit(tmp_path / "cuda-13.0")
    wrapper = no_cuda_env / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    wrapper.chmod(0o755)
    assert _build_config.find_cuda_home() == (str(toolkit.resolve()), None)


def test_no_toolkit_says_which_variable_to_set(no_cuda_env, monkeypatch):
    home, problem = _build_config.find_cuda_home()
    assert home is None and problem.endswith("set CUDA_HOME to the CUDA toolkit's folder")
    with_cuda, note = _build_config.cuda_build_decision(torch_has_cuda=True)
    assert not with_cuda
    assert "building the CPU kernels only" in note and "CUDA_HOME" in note
    assert "\n" not in note
    monkeypatch.setenv("FORCE_CUDA", "1")
    with pytest.raises(RuntimeError, match="FORCE_CUDA=1 but no usable CUDA toolkit"):
        _build_config.cuda_build_decision(torch_has_cuda=True)


def test_a_found_toolkit_is_handed_to_torchs_helpers(no_cuda_env, monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    toolkit = make_toolkit(tmp_path / "toolkit")
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/wrong")
    assert _build_config.cuda_build_decision(torch_has_cuda=True) == (True, None)
    assert cpp_extension.CUDA_HOME == str(toolkit) == os.environ["CUDA_HOME"]
    assert _build_config.cuda_build_decision(torch_has_cuda=False) == (False, None)
    monkeypatch.setenv("FORCE_CUDA", "0")
    assert _build_config.cuda_build_decision(torch_has_cuda=True) == (False, None)


def test_no_compiler_and_no_ninja_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    problem = _build_config.compiler_problem()
    assert "no-such-compiler-xyz" in problem and "set CXX" in problem
    monkeypatch.setattr(_extension, "_first_use_problem", lambda: _build_config.NINJA_PROBLEM)
    with pytest.warns(RuntimeWarning, match=r"could not be compiled on first use: ninja is not "
                                            r"installed; run `pip install ninja`"):
        status = _extension._compile_on_first_use()
    assert not status.loaded and status.how == "first-use compile failed"
    assert "pip install ninja" in status.error


def test_first_use_compile_errors_are_summarised():
    log = ("Error building extension 'fna_ext_C': [1/2] c++ -c x.cpp\nFAILED: x.o\n"
           "x.cpp:3:1: error: 'foo' was not declared in this scope\nninja: build stopped")
    assert _extension._compile_error_summary(RuntimeError(log)) == \
        "x.cpp:3:1: error: 'foo' was not declared in this scope"
    fatal = "FAILED: y.o\ny.cu:1:10: fatal error: cuda_runtime.h: No such file or directory"
    assert _extension._compile_error_summary(RuntimeError(fatal)).startswith("y.cu:1:10: fatal error")
    assert _extension._compile_error_summary(RuntimeError("ninja: not found\nmore")) == "ninja: not found"


def test_another_cxx_abi_is_named(monkeypatch):
    abi = torch.compiled_with_cxx11_abi()
    err = ImportError("_C.so: undefined symbol: _ZN3c106detail14torchCheckFailEPKcS2_jRKNSt7"
                      "__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE")
    assert "another C++ ABI" in _extension._load_failure_cause(err)
    assert "another C++ ABI" not in _extension._load_failure_cause(ImportError("no such file"))
    with pytest.warns(RuntimeWarning, match="_GLIBCXX_USE_CXX11_ABI"):
        assert _extension.warn_if_built_with_another_abi({"cxx11_abi": not abi})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _extension.warn_if_built_with_another_abi({"cxx11_abi": abi})
        assert not _extension.warn_if_built_with_another_abi({})


def test_only_the_c_module_beside_this_package_counts(tmp_path):
    package = Path(_extension.__file__).resolve().parent

    class Spec:
        def __init__(self, origin):
            self.origin = origin

    assert _extension._belongs_to_this_package(Spec(str(package / "_C.so")))
    assert not _extension._belongs_to_this_package(Spec(str(tmp_path / "fna_ext" / "_C.so")))
    assert not _extension._belongs_to_this_package(Spec(None))


def test_info_check_names_what_is_missing():
    base = {"extension_how": "installed", "extension_error": None, "torch_cuda_version": "13.0",
            "cuda_home": "/cuda", "extension_devices": ["cpu", "cuda"],
            "extension_missing_kernels": {"cpu": [], "cuda": []}}
    assert info.install_problems(base) == []
    assert info.install_problems({**base, "extension_devices": ["cpu"]}) == ["no cuda kernels"]
    assert info.install_problems({**base, "cuda_home": None, "extension_devices": ["cpu"]}) == []
    assert info.install_problems({**base, "extension_missing_kernels": {"cuda": ["nms"]}}) == \
        ["cuda lacks kernels for nms"]
    problems = info.install_problems({**base, "extension_how": "first-use compile failed",
                                      "extension_error": "no C++ compiler"})
    assert problems[0] == "the extension is 'first-use compile failed', not installed (no C++ compiler)"


def test_missing_kernels_compares_devices(monkeypatch):
    status = _extension.ExtensionStatus(loaded=True, how="installed", build_info={"cuda": True})
    monkeypatch.setattr(_extension.ExtensionStatus, "kernels", property(
        lambda self: {"cpu": ["nms", "remap_copy"], "cuda": ["nms"]}))
    assert status.missing_kernels() == {"cpu": [], "cuda": ["remap_copy"]}
    # a CPU-only op (data loading) is not missing on CUDA, and is on the CPU
    monkeypatch.setattr(_extension.ExtensionStatus, "kernels", property(
        lambda self: {"cpu": ["nms"], "cuda": ["nms", "photometric_distortion"]}))
    assert status.missing_kernels() == {"cpu": ["photometric_distortion"], "cuda": []}
    monkeypatch.setattr(_extension.ExtensionStatus, "kernels", property(
        lambda self: {"cpu": ["nms", "photometric_distortion"], "cuda": ["nms"]}))
    assert status.missing_kernels() == {"cpu": [], "cuda": []}
    status.build_info = {"cuda": False}
    assert status.missing_kernels() == {"cpu": []}


def test_the_loaded_extension_has_every_kernel_it_was_built_for():
    status = _extension.status()
    if not status.loaded:
        pytest.skip(f"extension not loaded: {status.how}")
    assert "cpu" in status.devices
    assert {"nms", "remap_copy", "sampled_mbconv_forward"} <= set(status.kernels["cpu"])
    assert all(not missing for missing in status.missing_kernels().values())
    assert status.build_info["cxx_standard"] >= 201703
    out = subprocess.run([sys.executable, "-m", "fna_ext.info", "--json", "--check"],
                         capture_output=True, text=True)
    reported = json.loads(out.stdout)
    assert reported["extension_kernels"] == status.kernels
    if status.how == "installed":
        assert out.returncode == 0, out.stderr


def test_op_families_select_sources(monkeypatch):
    root = Path("/csrc")
    every = _build_config.sources(with_cuda=True, root=root)
    assert _build_config.op_families() == ["augment", "mbconv", "nms", "remap"]
    monkeypatch.setenv("FNA_EXT_OPS", "nms, remap")
    chosen = [Path(p).relative_to(root).as_posix() for p in _build_config.sources(True, root=root)]
    assert "registration.cpp" in chosen and "nms/nms_cuda.cu" in chosen and "remap/remap_cpu.cpp" in chosen
    assert not any(name.startswith("mbconv/") for name in chosen)
    assert len(chosen) < len(every)
    monkeypatch.setenv("FNA_EXT_OPS", "nms,conv")
    with pytest.raises(ValueError, match=r"FNA_EXT_OPS=nms,conv: unknown op families conv; choose from "
                                         r"augment, mbconv, nms, remap"):
        _build_config.sources(True, root=root)
