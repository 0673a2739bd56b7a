"""Packaging: the public surface, one version, typing files, a clear error when the
package is imported from a source tree whose kernels were never built, what the sdist
holds, and (``pytest -m wheel``, in .ci/run) the release wheel built, repaired and run."""
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
    assert compiled >= {"_quants", "_engine", "_sampling", "_decode", "_twins", "_isa_generic"}
    for mod in compiled:
        assert os.path.exists(os.path.join(kdir, mod + ".pyi")), mod


def test_unbuilt_source_tree_says_what_to_do(tmp_path):
    # the Python files alone, as in a fresh checkout before any build
    shutil.copytree(PKG, tmp_path / "guanaco_rt", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    r = subprocess.run([sys.executable, "-c", "import guanaco_rt"], cwd=tmp_path, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode != 0
    assert "compiled kernels are missing" in r.stderr and "pip install ." in r.stderr


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _readme_paths():
    import re
    text = open(os.path.join(ROOT, "README.md")).read()
    paths = set(re.findall(r"`([A-Za-z_][\w.-]*(?:/[\w.-]+)+)`", text)) | set(re.findall(r"\]\(([^)#:]+)\)", text))
    return sorted(p for p in paths if os.path.exists(os.path.join(ROOT, p)))


def test_sdist_holds_what_the_readme_names(tmp_path):
    pytest = __import__("pytest")
    if not os.path.exists(os.path.join(ROOT, "setup.py")):
        pytest.skip("not a source checkout")
    pytest.importorskip("build")
    # an sdist needs no build requirements (setup.py cythonizes only when building extensions)
    r = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--skip-dependency-check",
                        "--outdir", str(tmp_path), ROOT], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    import tarfile
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    wanted = _readme_paths()
    assert "benchmarks/README.md" in wanted and "tools/build_wheels.sh" in wanted
    assert not [p for p in wanted if p not in names and not any(n.startswith(p + "/") for n in names)]
    for pkg in ("guanaco_rt/integrations/langchain.py", "guanaco_rt/integrations/ray_serve.py",
                "guanaco_rt/server.py", "guanaco_rt/_kernels/_engine.pyx", "tests/test_server.py", ".ci/run",
                "guanaco_rt/_kernels/isa/x86.c", "guanaco_rt/_kernels/isa/x86_r8.h", "guanaco_rt/_kernels/isa_list.py",
                "guanaco_rt/_kernels/isa_unit.h"):
        assert pkg in names, pkg


def test_integrations_are_installed():
    # the subpackage ships (an import of the package alone must not pull any framework in)
    import guanaco_rt.integrations  # noqa: F401
    r = subprocess.run([sys.executable, "-c", "import sys, guanaco_rt, guanaco_rt.integrations; "
                        "print([m for m in ('starlette', 'uvicorn', 'ray', 'langchain_core', 'tqdm') "
                        "if m in sys.modules])"], capture_output=True, text=True, check=True, cwd=os.path.dirname(PKG))
    assert r.stdout.strip() == "[]"


@__import__("pytest").mark.wheel
def test_release_wheel_is_manylinux_and_runs_without_a_compiler(tmp_path):
    # tools/build_wheels.sh --local: build, auditwheel repair + show, fresh venv, no cc on PATH
    r = subprocess.run(["bash", os.path.join(ROOT, "tools", "build_wheels.sh"), "--local", str(tmp_path)],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "wheel OK" in r.stdout
    (whl,) = tmp_path.glob("*manylinux*.whl")
    assert "x86_64" in whl.name or "aarch64" in whl.name
