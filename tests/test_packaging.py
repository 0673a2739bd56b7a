"""Packaging: the public surface, one version, typing files, and a clear error when the
package is imported from a source tree whose kernels were never built."""
import importlib.metadata
import os
import shutil
import subprocess
import sys

import guanaco_rt

PKG = os.path.dirname(os.path.abspath(guanaco_rt.__file__))


def test_public_types_are_exported():
    for name in ("Model", "Session", "SamplingParams", "GenerationResult", "Timings", "show_config",
                 "GuanacoError", "FormatError", "StateError", "Cancelled"):
        assert name in guanaco_rt.__all__ and hasattr(guanaco_rt, name)


def test_one_version():
    assert importlib.metadata.version("guanaco_rt") == guanaco_rt.__version__


def test_typing_files_ship_with_every_compiled_module():
    assert os.path.exists(os.path.join(PKG, "py.typed"))
    kdir = os.path.join(PKG, "_kernels")
    compiled = {f.split(".")[0] for f in os.listdir(kdir) if f.endswith((".so", ".pyd"))}
    assert compiled >= {"_quants", "_engine", "_sampling", "_decode", "_twins", "_generic"}
    for mod in compiled:
        assert os.path.exists(os.path.join(kdir, mod + ".pyi")), mod


def test_unbuilt_source_tree_says_what_to_do(tmp_path):
    # the Python files alone, as in a fresh checkout before any build
    shutil.copytree(PKG, tmp_path / "guanaco_rt", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    r = subprocess.run([sys.executable, "-c", "import guanaco_rt"], cwd=tmp_path, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode != 0
    assert "compiled kernels are missing" in r.stderr and "pip install ." in r.stderr
