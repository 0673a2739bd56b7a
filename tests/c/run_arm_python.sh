#!/usr/bin/env bash
# A full aarch64 run of the Python package under emulation: the demo model asked the France
# question with the generic unit and each NEON build (tests/c/arm_demo.py), its logits
# compared with the x86 generic unit's. Slow (minutes) and needs the network: run by hand.
#
# No binfmt_misc registration: a container shares its host's kernel, and registering a
# handler there is the host's business. So nothing arm64 runs except under an explicit
# qemu-aarch64 -L ROOT (which finds the root's loader and libraries first):
#  1. an arm64 Debian root, downloaded and unpacked only: debootstrap --foreign runs no
#     arm64 program, and dpkg-deb -x unpacks the packages its second stage would install
#     (with binfmt_misc you would instead copy qemu-aarch64-static into ROOT/usr/bin, run
#     chroot ROOT /debootstrap/debootstrap --second-stage, and pip install the package in a
#     chroot: the same run, with every build step emulated, far slower);
#  2. the package's Cython modules (their .c files, from an in-place build on this machine)
#     cross-compiled by aarch64-linux-gnu-gcc against the root's Python 3.11 headers, with
#     setup.py's flags, plus tests/c/neon_try.c: the three NEON tables as capsules;
#  3. the root's python3 under qemu-aarch64 -cpu max (dotprod and i8mm) runs arm_demo.py.
#
# Needs: root (debootstrap), apt-get install -y debootstrap gcc-aarch64-linux-gnu qemu-user,
# the demo model in the cache (guanaco-rt pull-demo), an in-place build (python setup.py
# build_ext --inplace: for the .c files and the x86 side), python3 with pip.
# Usage: tests/c/run_arm_python.sh [ROOT, default /tmp/guanaco_arm64root; kept for reuse]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${1:-/tmp/guanaco_arm64root}
PY=${PYTHON:-python3}
K=guanaco_rt/_kernels
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
    debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=python3,libpython3.11-dev,python3-numpy,python3-regex,python3-jinja2,libgomp1 \
        bookworm "$ROOT" http://deb.debian.org/debian
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
    ln -sf blas/libblas.so.3 "$ROOT/usr/lib/aarch64-linux-gnu/libblas.so.3"        # what update-alternatives
    ln -sf lapack/liblapack.so.3 "$ROOT/usr/lib/aarch64-linux-gnu/liblapack.so.3"  # would have linked
fi
if [ ! -d "$ROOT/opt/site/sentencepiece" ]; then     # not in bookworm: PyPI's aarch64 wheel, unzipped
    "$PY" -m pip download sentencepiece --platform manylinux2014_aarch64 --python-version 3.11 \
        --only-binary=:all: --no-deps -d "$STAGE/whl"
    mkdir -p "$ROOT/opt/site" && "$PY" -m zipfile -e "$STAGE"/whl/sentencepiece-*.whl "$ROOT/opt/site"
fi
git ls-files guanaco_rt | xargs -I{} cp --parents {} "$STAGE/"
INC=(-I "$K" -I "$ROOT/usr/lib/python3/dist-packages/numpy/core/include" -I "$ROOT/usr/include/python3.11"
     -I "$ROOT/usr/include")
for c in "$K"/_*.c; do
    m=$(basename "$c" .c)
    aarch64-linux-gnu-gcc -O3 -fno-strict-aliasing -ffp-contract=off -fwrapv -fopenmp -fPIC -shared "${INC[@]}" \
        -o "$STAGE/$K/$m.cpython-311-aarch64-linux-gnu.so" "$c" &
done
# the generic unit: setup.py's copy of the shim _isa_unit.pyx (cythonized by the x86 build) with isa/generic.c
aarch64-linux-gnu-gcc -O3 -fno-strict-aliasing -ffp-contract=off -fwrapv -fPIC -shared "${INC[@]}" \
    -DGR_UNIT_TABLE=gr_isa_generic -o "$STAGE/$K/_isa_generic.cpython-311-aarch64-linux-gnu.so" \
    build/isa_units/_isa_generic.c "$K/isa/generic.c" &
F=(-std=c11 -O3 -ffp-contract=off -fPIC -I "$K")
aarch64-linux-gnu-gcc "${F[@]}" -march=armv8-a -c "$K/isa/neon.c" -o "$STAGE/neon.o"
aarch64-linux-gnu-gcc "${F[@]}" -march=armv8.2-a+dotprod -c "$K/isa/neon.c" -o "$STAGE/neon_dotprod.o"
aarch64-linux-gnu-gcc "${F[@]}" -march=armv8.2-a+dotprod+i8mm -c "$K/isa/neon.c" -o "$STAGE/neon_i8mm.o"
aarch64-linux-gnu-gcc -O2 -fPIC -shared "${INC[@]}" -o "$STAGE/$K/_neon_try.cpython-311-aarch64-linux-gnu.so" \
    tests/c/neon_try.c "$STAGE/neon.o" "$STAGE/neon_dotprod.o" "$STAGE/neon_i8mm.o"
wait
echo "== x86_64, this machine's build"
PYTHONPATH=$PWD "$PY" tests/c/arm_demo.py "$STAGE/x86" generic
echo "== aarch64 under qemu-aarch64 -cpu max"
qemu-aarch64 -cpu max -L "$ROOT" -E PYTHONPATH="$STAGE:/opt/site" "$ROOT/usr/bin/python3.11" tests/c/arm_demo.py \
    "$STAGE/arm" generic,neon_i8mm,neon_dotprod,neon --against "$STAGE/x86_generic.npy"
