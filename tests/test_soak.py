"""The soak (benchmarks/soak.py) as a test: many generations, abandoned streams, state
round trips, forks and chats on one Session, with RSS that must not grow once warm.
Marked `soak` (minutes, not seconds): `pytest -m soak`, a separate step of .ci/run."""
import os
import subprocess
import sys

import pytest

SOAK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "soak.py")


@pytest.mark.soak
def test_soak_rss_does_not_grow():
    r = subprocess.run([sys.executable, SOAK, "--generations", "600", "--every", "50", "--warmup", "100"],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
