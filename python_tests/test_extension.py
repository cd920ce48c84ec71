"""The extension's life cycle: loaded and reported, absent (reference paths), compiled on first
use from the sources shipped in the package, and the warning when torch changed under it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fna_ext
from fna_ext import _build_config, _extension


def run_python(code, env=None, cwd=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=600)


def test_info_json_reports_the_extension():
    out = subprocess.run([sys.executable, "-m", "fna_ext.info", "--json"], capture_output=True,
                         text=True, check=True).stdout
    info = json.loads(out)
    assert isinstance(info["extension_loaded"], bool)
    assert info["torch_version"] == torch.__version__
    assert info["fna_ext_version"] == fna_ext.__version__
    if info["extension_loaded"]:
        assert "cpu" in info["extension_devices"]
        assert info["extension_built_against_torch"] == torch.__version__.split("+")[0]


def test_without_the_extension_everything_falls_back(tmp_path):
    env = {_extension.DISABLE_ENV: "1"}
    code = ("import torch, fna_ext; from fna_ext.ops import nms; "
            "b = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11.]]); "
            "print(nms(b, torch.tensor([0.9, 0.8]), 0.5).tolist())")
    result = run_python(code, env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0]"
    info = subprocess.run([sys.executable, "-m", "fna_ext.info"], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=tmp_path)
    assert "not loaded" in info.stdout and "nothing is fused" in info.stdout
    assert "extension   loaded" not in info.stdout


def test_warns_when_built_against_another_torch(monkeypatch):
    monkeypatch.setattr(_extension, "_runtime_torch_version", lambda: "9.9.9")
    with pytest.warns(RuntimeWarning, match=r"built against torch 2\.\S+ but torch .* rebuild it with "
                                            r"`pip install --no-build-isolation"):
        assert _extension.warn_if_built_for_another_torch({"torch_version": "2.0.0"})
    monkeypatch.setattr(_extension, "_runtime_torch_version", lambda: "2.0.0")
    assert not _extension.warn_if_built_for_another_torch({"torch_version": "2.0.0"})


def test_the_source_list_names_real_files():
    root = Path(_build_config.__file__).resolve().parent
    root = root / "_csrc" if (root / "_csrc").is_dir() else root.parent / "csrc"
    for path in _build_config.sources(with_cuda=True, root=root):
        assert Path(path).is_file(), path


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ninja") is None and not Path(sys.executable).with_name("ninja").exists(),
                    reason="the first-use build needs ninja")
def test_compiles_on_first_use_when_not_prebuilt(tmp_path):
    # A copy of the package without its compiled module: what an isolated `pip install .` leaves.
    package = Path(fna_ext.__file__).resolve().parent
    copy = tmp_path / "site" / "fna_ext"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "__pycache__"))
    if not (copy / "_csrc").is_dir():  # running from a checkout: the sources sit beside it
        shutil.copytree(package.parent / "csrc", copy / "_csrc")
    # The mechanism is under test, not the kernels (their own tests cover them): FORCE_CUDA=0 and
    # FNA_EXT_OPS=nms build the schemas and the NMS kernels alone, in under a minute instead of
    # several on a 2-core machine.
    env = {"PYTHONPATH": str(copy.parent), "TORCH_EXTENSIONS_DIR": str(tmp_path / "cache"),
           "FORCE_CUDA": "0", "FNA_EXT_OPS": "nms",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    code = ("import torch, fna_ext; from fna_ext import _extension; from fna_ext.ops import nms; "
            "assert fna_ext.__file__.startswith(%r); s = _extension.status(); "
            "b = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11.]]); s2 = _extension.status(); "
            "print(s.loaded, s.how, _extension.has_kernel('nms', 'cpu'), "
            "_extension.has_kernel('remap_copy', 'cpu'), nms(b, torch.tensor([0.8, 0.9]), 0.5).tolist())"
            % str(copy))
    result = run_python(code, env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True compiled on first use True False [1]"
    assert result.stderr.count("compiling the C++ ops once") == 1


def test_has_kernel_answers_for_the_ops_the_library_registered_and_keeps_the_answer():
    status = _extension.status()
    if not status.loaded:
        pytest.skip("the extension is not loaded")
    registered = status.kernels["cpu"]  # the dispatcher's list of registrations, another query
    assert registered, "a loaded library registers CPU kernels"
    for op, expected in [*((name, True) for name in registered), ("no_such_op", False)]:
        assert _extension.has_kernel(op, "cpu") is expected, op
        assert _extension.has_kernel(op, torch.device("cpu")) is expected  # the same key either way
        assert _extension._KERNEL_ANSWERS[(op, "cpu")] is expected
    assert _extension.has_kernel("nms", "meta") is False  # no dispatch key of ours
