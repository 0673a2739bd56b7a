"""The C ISA units (guanaco_rt/_kernels/isa/*.c) that this machine cannot run as a package module:
the NEON unit runs under qemu-aarch64 (tests/c/run_qemu.sh), against generic.c on random blocks,
marked ``emulation``: out of the default run. (The units the CPU runs are tested through the
package: test_isa.py, test_repack.py, test_kernels.py.)"""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.emulation
def test_neon_unit_under_qemu():
    """tests/c/run_qemu.sh: the NEON unit (baseline and dotprod builds) against generic.c on
    random blocks, under qemu-aarch64 (natively on an aarch64 host)."""
    script = os.path.join(ROOT, "tests", "c", "run_qemu.sh")
    r = subprocess.run(["bash", script], capture_output=True, text=True, cwd=ROOT)
    if r.returncode == 77:
        pytest.skip(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "cross tools missing")
    print(r.stdout)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "FAIL" not in r.stdout and "PASSED" in r.stdout and "neon: all kernels agree" in r.stdout
