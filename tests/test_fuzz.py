"""The fuzz harness: every saved finding replays cleanly (in the default run), then a short
coverage-guided run per target (benchmarks/fuzz.py; 25 s each, GUANACO_RT_FUZZ_SECONDS to
change), marked `fuzz` because it is slow: `pytest -m fuzz`, a separate step of .ci/run."""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ = os.path.join(HERE, "..", "benchmarks", "fuzz.py")
SECONDS = int(os.environ.get("GUANACO_RT_FUZZ_SECONDS", "25"))

atheris = pytest.importorskip("atheris", reason="atheris has no wheel for this platform: fuzzing skipped")


def test_saved_findings_replay_cleanly():
    r = subprocess.run([sys.executable, FUZZ, "--replay", os.path.join(HERE, "fuzz_corpus")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.fuzz
@pytest.mark.parametrize("target", ["ggjt", "gguf", "state", "tokenizer", "bpe", "chat_template"])
def test_short_fuzz_run_finds_nothing(target, tmp_path):
    r = subprocess.run([sys.executable, FUZZ, "--target", target, "--seconds", str(SECONDS), "--artifacts",
                        str(tmp_path)], capture_output=True, text=True, timeout=SECONDS + 300)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr + "".join(
        f"\nfinding {f}: {open(os.path.join(tmp_path, f), 'rb').read()[:200]!r}" for f in os.listdir(tmp_path))
