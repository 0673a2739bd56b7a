"""Model: a ggjt v3 or GGUF file mapped read-only, validated, with its tokenizer and kernels.

Owns: the mmap and its lifetime, the tensor pointers handed to the kernels, the
tokenizer, and the thread-count default. Shared read-only by any number of
Sessions in any number of threads; holds no per-conversation state.
"""
from __future__ import annotations

import logging
import math
import mmap as mmap_module
import os
import threading
import time
import weakref
from typing import Any, Sequence

import numpy as np

from . import gguf_file, gguf_model
from . import lora as _lora
from ._kernels._engine import Batcher, Engine, omp_release
from ._kernels._mapguard import GuardedBuffer
from ._kernels.dispatch import default_kernels, kernel_set
from .bpe import BPETokenizer
from .errors import GuanacoError, InvalidArgumentError, ModelClosedError, ModelFileChangedError
from .ggml_file import open_mapped, parse
from .ggml_types import deinterleave_r8
from .tokenizer import Tokenizer

log = logging.getLogger("guanaco_rt")


MAX_THREADS = 256    # libgomp kills the process (exit 1) somewhere below 2000 threads


_POOL_PID = None     # the process that started OpenMP's thread pool (a session ran with > 1 thread)


def usable_threads(n):
    """The thread count a session may run with in this process: libgomp's thread pool does
    not survive os.fork(), and a child that uses OpenMP with more than one thread after its
    parent did hangs forever. Such a child runs on 1 thread."""
    global _POOL_PID
    pid = os.getpid()
    if n > 1:
        if _POOL_PID is not None and _POOL_PID != pid:
            return 1
        _POOL_PID = pid
    return n


def release_threads() -> None:
    """Free the calling thread's OpenMP worker threads, if this process started OpenMP.
    libgomp keeps a pool for every thread that ever ran a parallel region and counts them all:
    once they outnumber the cores, every team spins only briefly at its barriers and then
    sleeps, and each of the ~200 forks of a token waits for a futex wake-up. A batcher's
    passes ran 20-25% slower (demo model, 2 threads) while the loading thread's idle pool
    lived. Never in a forked child: its copy of the pool has no threads (usable_threads)."""
    if _POOL_PID == os.getpid():
        omp_release()


def check_threads(n, what="n_threads"):
    """An explicit thread count -> int in [1, MAX_THREADS], else ValueError/TypeError."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {n!r}")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"{what}={n} is outside [1, {MAX_THREADS}]")
    return int(n)


def default_threads():
    """GUANACO_RT_THREADS if set, else the physical cores this process may run on (its CPU
    affinity: taskset, cpusets), no more than its cgroup's CPU quota allows, rounded up
    (docker --cpus=1.5, a Kubernetes CPU limit: 2). A team larger than the quota is
    throttled every period, and its joins wait for the throttled members."""
    env = os.environ.get("GUANACO_RT_THREADS", "").strip()
    if env:
        try:
            return check_threads(int(env), "GUANACO_RT_THREADS")
        except ValueError as e:
            raise ValueError(f"GUANACO_RT_THREADS={env!r}: {e}") from None
    n = physical_cores()
    quota = cgroup_cpu_limit()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, min(n, MAX_THREADS))


def _read_text(path):
    """A small system file's text, or None when it cannot be read (tests replace this)."""
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _affinity():
    """The CPUs this process may run on, or None where the OS does not say."""
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None


def physical_cores():
    """Physical cores this process may run on (hyperthreads count once)."""
    allowed = _affinity()
    cores, cpu, phys, core = set(), None, None, None
    for line in ((_read_text("/proc/cpuinfo") or "") + "\n").splitlines():
        k, _, v = line.partition(":")
        k = k.strip()
        if k == "processor":
            try:
                cpu = int(v)
            except ValueError:
                cpu = None
        elif k == "physical id":
            phys = v.strip()
        elif k == "core id":
            core = v.strip()
        elif not line.strip() and cpu is not None:
            if allowed is None or cpu in allowed:
                cores.add((phys, core))
            cpu = phys = core = None
    if cores and all(c != (None, None) for c in cores):
        return len(cores)
    return len(allowed) if allowed else (os.cpu_count() or 1)


CGROUP_ROOT = "/sys/fs/cgroup"


def parse_cpu_max(text):
    """cgroup v2 ``cpu.max`` ("$QUOTA $PERIOD" in microseconds; QUOTA "max": no limit) ->
    the CPUs it allows, e.g. 1.5; None: no limit, or not a quota."""
    parts = (text or "").split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs_quota(quota_text, period_text):
    """cgroup v1 ``cpu.cfs_quota_us`` (-1: no limit) and ``cpu.cfs_period_us`` -> the CPUs
    they allow; None: no limit, or not a quota."""
    try:
        quota, period = int((quota_text or "").strip()), int((period_text or "").strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_limit(root=CGROUP_ROOT):
    """The CPUs this process's cgroups allow, the tightest of its own and its ancestors'
    quotas (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None: no quota.
    A container sees its own cgroup at the mount's root, a host process at the path that
    /proc/self/cgroup names: both are read."""
    v2, v1 = [], []
    for line in (_read_text("/proc/self/cgroup") or "").splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and not controllers:
            v2.append(path)
        elif "cpu" in controllers.split(","):
            v1.append((controllers, path))
    limits = []

    def dirs(base, path):
        parts = [p for p in path.split("/") if p and p not in (".", "..")]
        return [os.path.join(base, *parts[:i]) for i in range(len(parts), -1, -1)]

    for path in v2 or ["/"]:
        for d in dirs(root, path):
            limits.append(parse_cpu_max(_read_text(os.path.join(d, "cpu.max"))))
    for controllers, path in v1 or [("cpu", "/")]:
        for mount in dict.fromkeys((controllers, "cpu")):
            for d in dirs(os.path.join(root, mount), path):
                limits.append(parse_cfs_quota(_read_text(os.path.join(d, "cpu.cfs_quota_us")),
                                              _read_text(os.path.join(d, "cpu.cfs_period_us"))))
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


def _gguf_tokenizer(vocab, path):
    if vocab["model"] == "llama":
        tok = Tokenizer(None, path, pieces=list(zip(vocab["tokens"], vocab["scores"], vocab["types"])),
                        add_space_prefix=vocab["add_space_prefix"], bos_id=vocab["bos"], eos_id=vocab["eos"],
                        unk_id=vocab["unknown"])
    else:
        tok = BPETokenizer(vocab["tokens"], vocab["types"], vocab["merges"], vocab["pre"], vocab["bos"], vocab["eos"],
                           vocab["add_bos"], path)
    tok.add_bos, tok.add_eos, tok.eot_id = vocab["add_bos"], vocab["add_eos"], vocab["eot"]
    # the other special ids the file names, and the tokens that end a generation (eos, eot,
    # eom and the end-of-turn tokens llama.cpp finds by their text: gguf_model)
    tok.eom_id, tok.sep_id, tok.pad_id, tok.eog_ids = vocab["eom"], vocab["sep"], vocab["padding"], vocab["eog"]
    tok.rstrip_ids = frozenset(vocab["rstrip"])
    return tok


class Model:
    """A model from a ggjt v3 ``.bin`` file (Guanaco's: LLaMA) or a GGUF v2/v3 file of one of the
    families gguf_model.ARCHS names: llama (Llama 3.x rope factors included), qwen2, qwen3, phi3, gemma3.
    Weight types (ggml_types.WEIGHT_TYPES): F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the k-quants
    Q2_K..Q6_K, IQ4_NL, IQ4_XS, the i-quants IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S and the
    ternary TQ1_0, TQ2_0 (ggjt files: the 2023 types only, as ggjt had them).

    The weights stay in a read-only mmap; nothing is dequantized at load. The quantized
    matrices whose type the kernels have 8-row variants for (every one on x86 with AVX2) are the
    exception: each 8 rows are interleaved at load into memory of their own
    (``repacked_bytes``; a matrix's last n_rows % 8 rows are copied as they are, and a tied
    output's token embeddings are interleaved with it), and the file pages they came from
    are handed back, so the process holds one copy, never two. The file must not change while the Model is open: each
    call checks, before and after, the size and mtime of the open file (fstat: renaming,
    unlinking or replacing the path is harmless, the mapping keeps the old file) and
    raises ModelFileChangedError if they moved. A truncation during a call would kill the
    process with SIGBUS: a guard (_kernels/mapguard.h) turns a fault on the mapping into
    zero pages, the call stops at its next layer and raises ModelFileChangedError instead, and the
    Model refuses every later call. ``mmap=False`` reads the file into memory instead (no
    such check, the file can change freely; costs RAM; the interleaving then happens in place).
    ``n_threads`` is the default for sessions on this model (None: GUANACO_RT_THREADS, else
    the physical cores this process may use, within its cgroup's CPU quota). ``isa`` picks
    the kernel unit ("generic", "avx2", "avx512", ...; ``guanaco-rt config`` lists them; a name this
    machine cannot run is an InvalidArgumentError); None: GUANACO_RT_ISA, else the best this CPU
    runs. ``Model.isa`` says which it runs.

    ``lora``: LoRA adapters merged into the weights at load, ``[(path or lora.Adapter, scale), ...]``
    (GGUF adapters of llama.cpp's convert_lora_to_gguf.py, or 2023 ggla files): each adapted
    weight is dequantized, W + scale B A formed in float64, and quantized again to its own type,
    into anonymous memory (``lora_stats``: seconds, bytes, tensors); the file is not touched.
    Requantizing adds the type's rounding error once more; ``Session(model, lora=...)``
    applies adapters at run time instead, exactly, per session. See guanaco_rt.lora.
    """

    _engine: Engine | None              # None once closed
    _buf: np.ndarray | None             # the weights' bytes (uint8), None once closed
    _fingerprint: bytes | None          # computed on first use

    def __init__(self, path: str | os.PathLike[str], n_threads: int | None = None, eps: float = 1e-6,
                 isa: str | None = None, mmap: bool = True, lora=None):
        t0 = time.perf_counter()
        self.n_threads = default_threads() if n_threads is None else check_threads(n_threads)
        self.path = os.fspath(path)
        self.mmap = bool(mmap)
        self._batchers: weakref.WeakSet = weakref.WeakSet()
        self._fh, self._mm, size, self._stat = open_mapped(self.path, copy=not self.mmap)
        weakref.finalize(self, self._fh.close)  # a Model dropped without close() does not leak the descriptor
        # the SIGBUS guard covers the mapping from here on: the parser's reads too
        self._guard = GuardedBuffer(self._mm) if self.mmap else None
        if self._guard is not None and not self._guard.guarded:
            log.warning("guanaco_rt: %s: too many mapped models in this process for the SIGBUS guard; a truncation "
                        "of this file during a call will kill the process", self.path)
        if not self.mmap:
            self._fh.close()                     # a copy in memory: nothing to watch
        try:
            rope = {}
            if gguf_file.is_gguf(self._mm):
                self.file = gguf_model.load(gguf_file.parse(self.path, self._mm))
                self.tokenizer = _gguf_tokenizer(self.file.vocab, self.path)
                eps = self.file.hparams.eps
                rope = {"rope_base": self.file.hparams.rope_base, "rope_freq_scale": self.file.hparams.rope_freq_scale}
            else:
                self.file = parse(self.path, self._mm)
                self.tokenizer = Tokenizer(self.file.vocab, self.path)
            # the mapping, or the guard that exports it (the buffer protocol, which typing states
            # only from Python 3.12 on)
            src: Any = self._mm if self._guard is None else self._guard
            self._buf = np.frombuffer(src, dtype=np.uint8)
            specs = {name: (t.offset, t.type, t.shape[0], t.n_rows) for name, t in self.file.tensors.items()}
            if isa is None:
                ks = default_kernels()
            else:
                try:
                    ks = kernel_set(isa, source="isa")
                except GuanacoError as e:
                    raise InvalidArgumentError(f"{self.path}: {e}", param="isa") from None
            self.isa: str = ks.isa                 # the kernel unit this Model runs on
            self._fingerprint = None
            self._fp_lock = threading.Lock()
            inplace = None
            if self.mmap and hasattr(mmap_module, "MADV_NOHUGEPAGE") and \
                    any(ks.interleaves(t.type) for t in self.file.tensors.values()):
                # the page cache may hold the file in 2 MiB folios, and a fault maps a whole one:
                # touching a tensor next to an interleaved one would map back up to 2 MiB of the
                # pages released for it. Pages of 4 KiB map only what is read.
                self._mm.madvise(mmap_module.MADV_NOHUGEPAGE)
            if not self.mmap:
                inplace = np.frombuffer(self._mm.obj, dtype=np.uint8)
            load_threads = usable_threads(self.n_threads)    # 1 in a forked child (see usable_threads)
            self._merged, self.lora_stats = {}, None
            self.lora = _lora.normalize(lora)     # [(Adapter, scale)]: merged into the weights below
            if self.lora:
                _lora.check(self, self.lora)
                self._merged, self.lora_stats = _lora.merge(self, self._buf, self.lora, load_threads)
            self._engine = Engine(self.hparams.as_dict(), self._buf, specs, ks, eps, inplace=inplace,
                                  n_threads=load_threads, release=self._release if self.mmap else None,
                                  guard=self._guard, overrides=self._merged, **rope)
            self._repacked = {off for off, _ in self._engine.repacked}
            release_threads()                    # the load's thread pool: see release_threads
            self.check_file()                    # the load read every page: did the file shrink meanwhile?
        except BaseException:
            self._engine = self._buf = self._guard = None
            if hasattr(self._mm, "close"):
                try:
                    self._mm.close()
                except BufferError:              # still exported (a traceback's frame): GC unmaps it
                    pass
            self._fh.close()
            raise
        self.eps = eps
        self.load_time = time.perf_counter() - t0
        log.info("loaded %s: %s, %d layers, %.2f GB (%.2f GB interleaved) in %.3f s", self.path,
                 self.hparams.ftype_name, self.hparams.n_layer, size / 1e9, self.repacked_bytes / 1e9, self.load_time)

    def _release(self, off, n):
        # the engine reads its own interleaved copy of these bytes now: drop the file's pages
        # from this process (they stay in the page cache, and come back if tensor_data reads them)
        page = mmap_module.PAGESIZE
        lo, hi = -(-off // page) * page, (off + n) // page * page
        if hi > lo:
            self._mm.madvise(mmap_module.MADV_DONTNEED, lo, hi - lo)

    @property
    def repacked_bytes(self) -> int:
        """Bytes of weights interleaved at load (held in memory rather than read from the file)."""
        return sum(n for _, n in self._engine.repacked) if self._engine is not None else 0

    @property
    def closed(self) -> bool:
        return self._engine is None

    def _check_usable(self):
        """Raise unless the weights are still what was loaded: not closed, file unchanged."""
        if self._engine is None:
            raise ModelClosedError(f"{self.path}: this Model is closed")
        self.check_file()

    def check_file(self) -> None:
        """Raise ModelFileChangedError if the mapped file changed since it was loaded: its size
        or mtime moved (fstat of the file held open, so a rename, unlink or replacement of the
        path does not count), or a read found pages gone (the SIGBUS guard zeroed them; every
        result computed since is garbage). Sessions call it before and after each call; once
        it has raised, it always raises. Nothing to check for ``mmap=False`` or once closed."""
        if not self.mmap or self._fh is None or self._fh.closed:
            return
        guard = self._guard
        if guard is not None and guard.faulted:
            raise ModelFileChangedError(
                f"{self.path}: the file shrank under the memory-mapped model during a call (a read past its new "
                f"end was caught and the result discarded); reload it, or load with Model(path, mmap=False)")
        try:
            st = os.fstat(self._fh.fileno())
            now: tuple[object, ...] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        except (OSError, ValueError) as e:
            now = (f"fstat failed: {e}",)
        if self._fh.closed:     # close() in another thread meanwhile: the file was not what failed
            return
        if now != self._stat:
            raise ModelFileChangedError(
                f"{self.path}: the file changed under the memory-mapped model (size, mtime, inode, device "
                f"{self._stat} -> {now}); reload it, or load with Model(path, mmap=False)")

    @property
    def hparams(self):
        return self.file.hparams

    @property
    def tensors(self):
        return self.file.tensors

    @property
    def n_vocab(self) -> int:
        return self.hparams.n_vocab

    def tokenize(self, text: str, bos: bool | None = None, eos: bool | None = None,
                 special: bool = False) -> list[int]:
        """text -> token ids. ``bos``, ``eos`` None: as the file says (ggjt: BOS, no EOS;
        GGUF: tokenizer.ggml.add_bos_token / add_eos_token). ``special``: text spelling a special token such as
        ``<|im_start|>`` becomes that token (llama.cpp's parse_special); off by default, so
        user text cannot inject control tokens."""
        if eos is None:
            eos = getattr(self.tokenizer, "add_eos", False)
        return self.tokenizer.encode(text, bos=bos, eos=eos, special=special)

    def embed(self, texts, pooling: str | None = None, normalize: bool = True, n_threads: int | None = None,
              n_batch: int = 64):
        """Embeddings of ``texts`` (a string, a list of strings, token ids, or lists of them;
        texts tokenized as the file says) -> float32 (len(texts), n_embd), one row each; with
        ``pooling="none"`` a list of (n_tokens, n_embd) arrays, one row per token.

        The vector is the hidden state after the final norm, as llama.cpp's embeddings:
        ``pooling`` "mean" over the tokens, "cls" (the first token's), "last", or "none";
        None: the file's ``<arch>.pooling_type``, else "mean". ``normalize``: to unit length
        (L2), as llama.cpp's default. Each text runs on its own sequence, in batches of
        ``n_batch`` tokens, without the GIL and without the output matrix."""
        from .embeddings import embed
        return embed(self, texts, pooling, normalize, n_threads, n_batch)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    @property
    def fingerprint(self) -> bytes:
        """32 bytes that identify this model: a SHA-256 over its hparams, vocab, tensor table
        and a SHA-256 of every byte of every tensor (as the file has them). Session states
        carry it, and load_state refuses a state whose model differs in any weight.

        Computed on first use (save_state, load_state, or reading this) and kept: a plain
        load does not pay for reading every page. It costs one pass over the weights, the
        tensors hashed on up to ``n_threads`` threads (hashlib drops the GIL), about 1 GB/s
        per core with SHA extensions; see the README for a 7B figure."""
        self._check_open()
        fp = self._fingerprint
        if fp is None:
            with self._fp_lock:
                if self._fingerprint is None:
                    self._fingerprint = self._hash_weights()
                fp = self._fingerprint
        return fp

    def _hash_weights(self):
        import hashlib
        from concurrent.futures import ThreadPoolExecutor

        chunk = 16 << 20

        def digest(item):
            name, t = item
            data = memoryview(self.tensor_data(name))
            h = hashlib.sha256()
            for lo in range(0, len(data), chunk):
                h.update(data[lo:lo + chunk])
            del data
            if self.mmap and t.offset in self._repacked:
                self._release(t.offset, t.nbytes)     # the engine reads its own copy: drop the pages again
            return h.digest()

        tensors = list(self.file.tensors.items())
        with ThreadPoolExecutor(max_workers=max(1, min(self.n_threads, len(tensors)))) as pool:
            digests = list(pool.map(digest, tensors))
        h = hashlib.sha256()
        h.update(repr(sorted(self.hparams.as_dict().items())).encode())
        vocab = self.file.vocab
        if isinstance(vocab, dict):          # GGUF
            vocab = [(t.encode(), sc) for t, sc in zip(vocab["tokens"], vocab["scores"])]
        for text, score in vocab:
            h.update(len(text).to_bytes(4, "little") + text + repr(score).encode())
        for (_, t), d in zip(tensors, digests):
            h.update(f"{t.name}:{t.type}:{t.shape}:{t.offset}:{t.nbytes}".encode() + d)
        self.check_file()                    # the bytes hashed were the file's
        return h.digest()

    def _check_open(self):
        if self._engine is None:
            raise ModelClosedError(f"{self.path}: this Model is closed")

    def tensor_data(self, name: str) -> np.ndarray:
        """One tensor's bytes as the file has them (uint8, read-only): a view into the mmap, or,
        for a tensor interleaved in place (``mmap=False``), a copy put back in file order. A
        weight with a LoRA merged into it (``lora=``): the merged bytes, in file order."""
        self._check_open()
        buf, engine = self._buf, self._engine
        if buf is None or engine is None:        # closed by another thread since the check
            raise ModelClosedError(f"{self.path}: this Model is closed")
        t = self.file.tensors[name]
        data = buf[t.offset:t.offset + t.nbytes]
        if name in self._merged:                 # a LoRA merged at load: its own bytes, maybe interleaved
            data = self._merged[name]
            if engine.kernels.interleaves(t.type) and t.n_rows >= 8:
                data = np.frombuffer(deinterleave_r8(data, t.type, t.shape[0], t.n_rows), np.uint8)
            return data
        if not self.mmap and t.offset in self._repacked:
            data = np.frombuffer(deinterleave_r8(data, t.type, t.shape[0], t.n_rows), np.uint8)
        return data

    def batcher(self, max_seqs: int = 16, chunk: int = 32, n_threads: int | None = None,
                gather_ms: float = 2.0) -> Batcher:
        """Shared passes over the weights for Sessions made with ``batcher=`` it: their
        decoded tokens and prompt chunks are evaluated together, the weights read once for
        up to ``max_seqs`` sequences, on ``n_threads`` threads (default: the Model's). A
        prompt joins ``chunk`` tokens at a time, between the other sequences' tokens. Each
        Session's tokens and logits are the same bits as alone. ``close()`` it (or the
        Model) when done: it runs a thread of its own."""
        engine = self._engine
        if engine is None:
            raise ModelClosedError(f"{self.path}: this Model is closed")
        for name, v in (("max_seqs", max_seqs), ("chunk", chunk)):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096:
                raise InvalidArgumentError(f"batcher {name} must be an int in [1, 4096], got {v!r}", name)
        if isinstance(gather_ms, bool) or not isinstance(gather_ms, (int, float)) or not 0 <= gather_ms <= 1000:
            raise InvalidArgumentError(f"batcher gather_ms must be a number in [0, 1000], got {gather_ms!r}",
                                       "gather_ms")
        n = self.n_threads if n_threads is None else check_threads(n_threads)
        b = Batcher(engine, max_seqs, chunk, n, float(gather_ms))
        self._batchers.add(b)
        return b

    def close(self) -> None:
        """Release the mapping once no session uses it any more (garbage collection does too).
        Its batchers stop; their Sessions evaluate alone until they close."""
        for b in list(self._batchers):
            b.close()
        self._engine = None
        self._buf = None
        self._merged = {}
        self._mm = None
        self._guard = None
        if self._fh is not None:
            self._fh.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        hp = self.hparams
        return (f"Model({self.path!r}, {hp.ftype_name}, n_vocab={hp.n_vocab}, n_embd={hp.n_embd}, "
                f"n_layer={hp.n_layer}, n_head={hp.n_head})")
