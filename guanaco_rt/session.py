"""Session: one conversation's state on a shared Model.

Owns: the KV cache and scratch buffers (through the kernel State), the tokens
evaluated so far, prompt evaluation in batches, and the busy/cancel protocol.
The decode loop, sampling and chat live in generation.py, sampling.py, chat.py.
"""
import threading

import numpy as np

from ._kernels.dispatch import kernels
from .errors import ContextFullError, GuanacoError, SessionBusyError


class Cancelled(GuanacoError):
    """Raised inside eval when cancel() interrupted it; the session stays consistent."""


class Session:
    """KV cache + evaluated tokens on one Model. Not shared between threads at once."""

    def __init__(self, model, n_ctx=2048, n_batch=64, n_threads=None, kv_f16=False):
        if n_ctx < 1:
            raise GuanacoError(f"n_ctx must be >= 1, got {n_ctx}")
        if n_batch < 1:
            raise GuanacoError(f"n_batch must be >= 1, got {n_batch}")
        self.model = model
        self.n_ctx = int(n_ctx)
        self.n_batch = int(min(n_batch, n_ctx))
        self.n_threads = int(n_threads or model.n_threads)
        self.kv_f16 = bool(kv_f16)
        self._state = kernels.State(model._engine, self.n_ctx, self.n_batch, self.kv_f16, self.n_threads)
        self.tokens = []            # ids whose K/V are in the cache, positions 0..n_past-1
        self._busy = threading.Lock()
        self._last_logits = None

    # -- properties ----------------------------------------------------------------
    @property
    def n_past(self):
        return len(self.tokens)

    @property
    def n_vocab(self):
        return self.model.n_vocab

    # -- busy / cancel ---------------------------------------------------------------
    def _enter(self):
        if not self._busy.acquire(blocking=False):
            raise SessionBusyError("this Session is in use by another thread; use one Session per thread")

    def _leave(self):
        self._busy.release()

    def cancel(self):
        """Stop the running eval/generation at the next layer boundary (any thread may call it)."""
        self._state.set_cancel(True)

    # -- evaluation ------------------------------------------------------------------
    def _check_ids(self, ids):
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_vocab):
            bad = int(arr[(arr < 0) | (arr >= self.n_vocab)][0])
            raise ValueError(f"token id {bad} outside [0, {self.n_vocab})")
        return arr.astype(np.int32)

    def eval(self, ids, all_logits=False):
        """Evaluate ``ids`` after the tokens already in the cache.

        Returns float32 (n_vocab,) logits after the last token, or (len(ids), n_vocab)
        with ``all_logits``. Raises ContextFullError if they do not fit; Cancelled if
        cancel() interrupted it (the cache then keeps every complete batch).
        """
        self._enter()
        try:
            return self._eval(ids, all_logits)
        finally:
            self._leave()

    def _eval(self, ids, all_logits=False):
        arr = self._check_ids(ids)
        n = arr.size
        if n == 0:
            raise ValueError("eval() needs at least one token")
        if self.n_past + n > self.n_ctx:
            raise ContextFullError(f"{self.n_past} tokens in the cache + {n} new > n_ctx {self.n_ctx}")
        self._state.set_cancel(False)
        out = np.empty((n if all_logits else 1, self.n_vocab), dtype=np.float32)
        for start in range(0, n, self.n_batch):
            chunk = np.ascontiguousarray(arr[start:start + self.n_batch])
            last = start + chunk.size == n
            if all_logits:
                dst = out[start:start + chunk.size]
            elif last:
                dst = out
            else:
                dst = np.empty((1, self.n_vocab), dtype=np.float32)
            rc = self._state.forward(chunk, self.n_past, dst, all_logits)
            if rc:
                self._state.set_cancel(False)
                raise Cancelled(f"evaluation cancelled after {start} of {n} tokens")
            self.tokens.extend(int(t) for t in chunk)
        self._last_logits = out[-1]
        return out if all_logits else out[0]

    def reset(self):
        """Forget every evaluated token (the cache is overwritten lazily)."""
        self._enter()
        try:
            self.tokens = []
            self._last_logits = None
        finally:
            self._leave()

    def close(self):
        self._state = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
