"""Model: a ggjt v3 file mapped read-only, validated, with its tokenizer and kernels.

Owns: the mmap and its lifetime, the tensor pointers handed to the kernels, the
tokenizer, and the thread-count default. Shared read-only by any number of
Sessions in any number of threads; holds no per-conversation state.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Sequence

import numpy as np

from ._kernels._engine import Engine
from ._kernels.dispatch import kernel_set, kernels
from .errors import GuanacoError
from .ggml_file import open_mmap, parse
from .tokenizer import Tokenizer

log = logging.getLogger("guanaco_rt")


def physical_cores():
    """Physical cores this process may run on (hyperthreads count once)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        allowed = None
    try:
        cores, cpu = set(), None
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k == "processor":
                    cpu = int(v)
                elif k == "physical id":
                    phys = v.strip()
                elif k == "core id":
                    core = v.strip()
                elif not line.strip() and cpu is not None:
                    if allowed is None or cpu in allowed:
                        cores.add((phys, core))
                    cpu = phys = core = None
            if cpu is not None and (allowed is None or cpu in allowed):
                cores.add((phys, core))
        if cores and all(c != (None, None) for c in cores):
            return len(cores)
    except OSError:
        pass
    return len(allowed) if allowed else (os.cpu_count() or 1)


class Model:
    """A LLaMA/Guanaco model from a ggjt v3 ``.bin`` file.

    The weights stay in a read-only mmap: nothing is copied or dequantized at load.
    ``n_threads`` is the default for sessions on this model (physical cores if None).
    ``isa`` picks the kernels ("generic", "avx2"); None: the best this CPU runs, or
    GUANACO_RT_ISA.
    """

    def __init__(self, path: str | os.PathLike[str], n_threads: int | None = None, eps: float = 1e-6,
                 isa: str | None = None):
        t0 = time.perf_counter()
        self.path = os.fspath(path)
        self._mm, size = open_mmap(self.path)
        try:
            self.file = parse(self.path, self._mm)
            self.tokenizer = Tokenizer(self.file.vocab, self.path)
            self._buf = np.frombuffer(self._mm, dtype=np.uint8)
            specs = {t.name: (t.offset, t.type, t.shape[0], t.n_rows) for t in self.file.tensors.values()}
            ks = kernels if isa is None else kernel_set(isa)
            self._engine = Engine(self.hparams.as_dict(), self._buf, specs, ks, eps)
        except BaseException:
            self._buf = None
            self._mm.close()
            raise
        self.eps = eps
        self._fingerprint = None
        self.n_threads = int(n_threads) if n_threads else physical_cores()
        if self.n_threads < 1:
            raise GuanacoError(f"n_threads must be >= 1, got {n_threads}")
        self.load_time = time.perf_counter() - t0
        log.info("loaded %s: %s, %d layers, %.2f GB in %.3f s", self.path, self.hparams.ftype_name,
                 self.hparams.n_layer, size / 1e9, self.load_time)

    @property
    def hparams(self):
        return self.file.hparams

    @property
    def tensors(self):
        return self.file.tensors

    @property
    def n_vocab(self) -> int:
        return self.hparams.n_vocab

    def tokenize(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        return self.tokenizer.encode(text, bos=bos, eos=eos)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    @property
    def fingerprint(self) -> bytes:
        """32 bytes that identify this model file: a SHA-256 of its header, vocab, tensor
        table and the first 4 KiB of every tensor. Session states carry it."""
        if self._fingerprint is None:
            import hashlib
            h = hashlib.sha256()
            h.update(repr(sorted(self.hparams.as_dict().items())).encode())
            for text, score in self.file.vocab:
                h.update(len(text).to_bytes(4, "little") + text + repr(score).encode())
            for t in self.file.tensors.values():
                h.update(f"{t.name}:{t.type}:{t.shape}:{t.offset}".encode())
                h.update(self._buf[t.offset:t.offset + min(4096, t.nbytes)].tobytes())
            self._fingerprint = h.digest()
        return self._fingerprint

    def tensor_data(self, name: str) -> np.ndarray:
        """A read-only uint8 view of one tensor's bytes in the mmap."""
        t = self.file.tensors[name]
        return self._buf[t.offset:t.offset + t.nbytes]

    def close(self) -> None:
        """Release the mapping once no session uses it any more (garbage collection does too)."""
        self._engine = None
        self._buf = None
        self._mm = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        hp = self.hparams
        return (f"Model({self.path!r}, {hp.ftype_name}, n_vocab={hp.n_vocab}, n_embd={hp.n_embd}, "
                f"n_layer={hp.n_layer}, n_head={hp.n_head})")
