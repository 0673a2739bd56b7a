#!/usr/bin/env bash
# The NEON unit against generic.c: guanaco_rt/_kernels/isa/neon.c built three times
# (baseline ARMv8.0; ARMv8.2 + dotprod; + i8mm) and linked with generic.c into
# tests/c/test_neon.c, a static aarch64 binary, run under qemu-aarch64 with -cpu max (dotprod
# and i8mm: all three builds run), -cpu neoverse-n1 (dotprod, no i8mm) and -cpu cortex-a57
# (neither: the baseline build), each time checking what the run-time checks answer.
# On an aarch64 host it builds with the host's gcc and runs natively, once.
# Needs: apt-get install -y gcc-aarch64-linux-gnu qemu-user. Exit 77 when they are missing.
#
# A full aarch64 run of the Python package under emulation: tests/c/run_arm_python.sh (by
# hand: minutes, network, root). An arm64 Debian root from debootstrap --arch=arm64 --foreign
# (its packages unpacked with dpkg-deb -x: no binfmt_misc needed; with binfmt and
# qemu-user-static, chroot ROOT /debootstrap/debootstrap --second-stage and pip install the
# package inside instead), the Cython modules cross-compiled against its Python headers, the
# NEON tables loaded through tests/c/neon_try.c, and the root's python3 run by
# qemu-aarch64 -L ROOT: the demo model answers the France question with the generic unit and
# every NEON build, logits compared bit for bit with each other and with x86's generic unit.
set -euo pipefail
cd "$(dirname "$0")/../.."
K=guanaco_rt/_kernels
OUT=${TMPDIR:-/tmp}/guanaco_neon_test.$$
mkdir -p "$OUT"
trap 'rm -rf "$OUT"' EXIT
if [ "$(uname -m)" = aarch64 ]; then
    CC=${CC:-gcc}; RUN=(); STATIC=()
else
    CC=aarch64-linux-gnu-gcc; RUN=(qemu-aarch64); STATIC=(-static)
    for tool in "$CC" qemu-aarch64; do
        command -v "$tool" >/dev/null || { echo "skipped: $tool not found (apt-get install -y gcc-aarch64-linux-gnu qemu-user)"; exit 77; }
    done
fi
FLAGS=(-std=c11 -O2 -Wall -Wextra -Werror -ffp-contract=off -I "$K")
"$CC" "${FLAGS[@]}" -march=armv8-a -c "$K/isa/generic.c" -o "$OUT/generic.o"
"$CC" "${FLAGS[@]}" -march=armv8-a -c "$K/isa/neon.c" -o "$OUT/neon.o"
"$CC" "${FLAGS[@]}" -march=armv8.2-a+dotprod -c "$K/isa/neon.c" -o "$OUT/neon_dotprod.o"
"$CC" "${FLAGS[@]}" -march=armv8.2-a+dotprod+i8mm -c "$K/isa/neon.c" -o "$OUT/neon_i8mm.o"
"$CC" "${FLAGS[@]}" -march=armv8-a "${STATIC[@]}" tests/c/test_neon.c "$OUT/generic.o" "$OUT/neon.o" \
    "$OUT/neon_dotprod.o" "$OUT/neon_i8mm.o" -lm -o "$OUT/test_neon"
if [ ${#RUN[@]} -eq 0 ]; then
    "$OUT/test_neon"
else
    echo "== qemu-aarch64 -cpu max"
    qemu-aarch64 -cpu max "$OUT/test_neon" --expect-dotprod=1 --expect-i8mm=1
    echo "== qemu-aarch64 -cpu neoverse-n1"
    qemu-aarch64 -cpu neoverse-n1 "$OUT/test_neon" --expect-dotprod=1 --expect-i8mm=0
    echo "== qemu-aarch64 -cpu cortex-a57"
    qemu-aarch64 -cpu cortex-a57 "$OUT/test_neon" --expect-dotprod=0 --expect-i8mm=0
fi
