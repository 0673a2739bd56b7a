"""Session: one conversation's state on a shared Model -- the embedding API.

Owns the policies and the public API: prefix reuse, the context-full policy,
chat turns, the state blob (save/load/fork), the busy/cancel protocol and
timings. The sequence itself -- tokens, n_past, logits, KV cache -- belongs to
the kernel State (_kernels/_engine.pyx), which evaluates prompts in C; the decode
loop -- sampling chain, incremental UTF-8, stop strings, context shift -- is C
too (_kernels/_decode.pyx). Both stop on the State's one cancel flag. The
sampling settings and RNG live in sampling.py, the template in chat.py.

Threading contract: a Model is shared read-only by any number of Sessions in any
number of threads. A Session serves one caller at a time; a second thread that
calls into a busy Session gets SessionBusyError. ``cancel()`` and the read-only
properties may be called from any thread at any time. Evaluation and the decode
loop (sampling and stop checks included) run with the GIL released.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import struct
import threading
import time
import weakref
from typing import TYPE_CHECKING, Callable, Iterable, Sequence, Union

import numpy as np

from . import lora as _lora
from ._kernels._decode import Decoder, TextStage
from ._kernels._engine import Batcher, State
from .chat import DEFAULT_STOP, ChatTemplate, Conversation
from .constrain import compile_constraint
from .errors import (
    Cancelled,
    ContextFullError,
    GuanacoError,
    InvalidArgumentError,
    ModelClosedError,
    SessionBusyError,
    StateError,
)
from .model import check_threads, release_threads, usable_threads
from .results import AsyncTextStream, ChatReply, GenerationResult, StreamView, TextStream, Timings
from .sampling import CONTEXT_POLICY, Sampler, SamplingParams
from .tokenizer import CONTROL, USER_DEFINED, unicode_problem

if TYPE_CHECKING:
    from .model import Model

Prompt = Union[str, Sequence[int]]   # text, or token ids starting with BOS
Schema = Union[dict, str, type, bool, None]   # a JSON schema: a dict, JSON text, a pydantic model class

log = logging.getLogger("guanaco_rt")

STATE_MAGIC = b"GRTS"
STATE_VERSION = 3       # 2: the fingerprint covers every weight byte (1 hashed only 4 KiB of each tensor);
#                         3: kv_rows, each layer's K/V rows (a sliding-window layer's last positions only)
POLICIES = ("error", "shift")
DRAIN_TIMEOUT_S = 30.0  # longest wait for an abandoned astream() to stop (one token, or one prompt layer)
MAX_CTX = 1 << 20       # positions; a KV cache this long is already tens of GB on 7B
EXIT_WAIT_S = 1.0       # longest wait at exit for the running calls to stop (a cancel lands within a layer)
MAX_NEW_TOKENS = 2**31 - 1  # the decode loop's counter (a C int); a larger max_new_tokens means no limit


def _meta_int(meta, key, lo, hi, default=None):
    v = meta.get(key, default) if default is not None else meta[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{key} is {v!r}, not an integer")
    if not lo <= v <= hi:
        limit = f"this session's n_ctx {hi}" if key == "n_past" else f"[{lo}, {hi}]"
        raise StateError(f"state's {key} {v} is outside {limit}")
    return v


def chat_format(model, template=None):
    """A model's chat format -> (its source, a ChatTemplate or None for Guanaco's turns).
    ``template``: "guanaco", a Jinja2 chat template, or None -- the model's own (a GGUF
    file's tokenizer.chat_template, else Guanaco's)."""
    own = None
    if template is None:
        template = own = getattr(model.file, "metadata", {}).get("tokenizer.chat_template") or "guanaco"
    elif not isinstance(template, str):
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    if template == "guanaco":
        return template, None
    # bos_token / eos_token are the tokens' own spellings ("<s>", "<|endoftext|>"), as HF passes them
    vocab = getattr(model.file, "vocab", {})
    pieces = vocab.get("tokens", []) if isinstance(vocab, dict) else []
    spell = [pieces[i] if i is not None and i < len(pieces) else "" for i in
             (model.tokenizer.bos_id, model.tokenizer.eos_id)]
    # the special tokens a template may write (and message content may not): control and
    # user-defined tokens, the ones tokenize(special=True) matches
    types = vocab.get("types", []) if isinstance(vocab, dict) else []
    specials = [t for t, ty in zip(pieces, types) if ty in (CONTROL, USER_DEFINED)]
    # the file's own template, when it is not even a string, fails the chat calls, not the Session
    return (template if own is None or isinstance(own, str) else None), ChatTemplate(template, *spell,
                                                                                      specials=specials)


# the Sessions of this process, and whether it is exiting: at exit (atexit, before the
# interpreter finalizes) every running call is cancelled and waited for, up to EXIT_WAIT_S, and
# no call starts afterwards. A daemon thread still in a call's C loop (the GIL released) when
# the interpreter finalized aborted the process ("PyEval_SaveThread ... the GIL is released")
_LIVE: weakref.WeakSet = weakref.WeakSet()
_EXITING = False


def _stop_at_exit():
    global _EXITING
    _EXITING = True
    live = [s for s in list(_LIVE) if s._pid == os.getpid()]     # a forked child's copies run nothing
    for s in live:
        s.hold_cancel()
    deadline = time.monotonic() + EXIT_WAIT_S
    while any(s._busy.locked() for s in live) and time.monotonic() < deadline:
        time.sleep(0.002)
    for b in {id(s.batcher): s.batcher for s in live if s.batcher is not None}.values():
        b.close()           # its thread leaves its C loop: it ends before the interpreter does


atexit.register(_stop_at_exit)


def common_prefix(a, b):
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Session:
    """KV cache, evaluated tokens, sampler and conversation on one shared Model.

    ``context_policy``: "error" raises ContextFullError when the context is full;
    "shift" keeps the first ``n_keep`` tokens and drops the oldest half of the rest
    (chat drops whole turns instead).

    A sliding-window layer (Gemma 3's local ones) keeps K/V for its window and a margin
    only (about 3 windows); ``swa_full`` keeps every position there too, as llama.cpp's
    option of that name. The logits are the same bits either way; a rewind further back
    than the margin costs an evaluation of the kept tokens again.

    ``batcher`` (``model.batcher()``): the session's decoding and prompts share passes over
    the weights with the other sessions on it; the same bits as alone.

    ``lora``: LoRA adapters applied at run time to this session only, ``[(path or
    lora.Adapter, scale), ...]``: each layer matrix's output gains ((x A^T) B^T) scale, in
    float32; the Model's weights are not touched, so other sessions of it may use other
    adapters or none. Load an adapter once with ``lora.Adapter.load`` to share it.
    """

    def __init__(self, model: Model, n_ctx: int = 2048, n_batch: int = 64, n_threads: int | None = None,
                 kv_f16: bool = False, seed: int | None = None, context_policy: str = CONTEXT_POLICY, n_keep: int = 1,
                 system: str | None = None, template: str | None = None, adaptive_threads: bool = True,
                 swa_full: bool = False, batcher: Batcher | None = None, lora=None):
        for name, v, lo in (("n_ctx", n_ctx, 2), ("n_batch", n_batch, 1), ("n_keep", n_keep, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {v!r}")
            if v < lo:
                raise GuanacoError(f"{name} must be >= {lo}, got {v}")
        if n_ctx > MAX_CTX:
            raise GuanacoError(f"n_ctx={n_ctx} is above the limit {MAX_CTX}")
        if context_policy not in POLICIES:
            raise GuanacoError(f"context_policy must be one of {POLICIES}, got {context_policy!r}")
        engine = getattr(model, "_engine", None)
        if engine is None:
            raise ModelClosedError(f"{getattr(model, 'path', model)}: this Model is closed")
        model._check_usable()
        self.model = model
        self.n_ctx = int(n_ctx)
        self.n_batch = int(min(n_batch, n_ctx))
        n_threads = model.n_threads if n_threads is None else check_threads(n_threads)
        self.kv_f16 = bool(kv_f16)
        self.swa_full = bool(swa_full)
        self.context_policy = context_policy
        self.n_keep = int(n_keep)
        self.seed = seed
        self._state: State | None = State(engine, self.n_ctx, self.n_batch, self.kv_f16, n_threads, self.swa_full)
        # decoding times each token and runs the next on 1 or n_threads threads, whichever is
        # faster now (a core busy elsewhere makes a team slower than one thread); the
        # results are the same bits either way
        self._state.adaptive_threads = bool(adaptive_threads)
        # run-time LoRA adapters: this session's own tables; the model's weights stay shared
        self.lora = _lora.check(model, _lora.normalize(lora))
        if self.lora:
            self._state.set_lora(_lora.lora_set(model, self.lora, self.n_batch))
        if batcher is not None:
            if not isinstance(batcher, Batcher) or batcher.engine is not engine:
                raise InvalidArgumentError(f"batcher must be a Batcher of this Model (Model.batcher()), got "
                                           f"{batcher!r}", "batcher")
            self._state.attach(batcher)
        self.batcher = batcher
        self.sampler = Sampler(seed)
        self._template_source, self.template = chat_format(model, template)
        if system is None and self.template is not None:
            system = ""                     # the template's own default, if it has one
        self.conversation = Conversation() if system is None else Conversation(system=system)
        self._chat_first_turn = 0
        self._busy = threading.Lock()
        self._cancel_lock = threading.Lock()   # orders cancel() against the end of a call
        self._cancel_held = False              # hold_cancel(): every call is cancelled as it starts
        self._draining = None                  # the worker of an abandoned astream(), finishing
        self._pid = os.getpid()
        self._shared = 0                       # positions the last copy_prefix() copied in
        self.last_result = None
        # prompt_progress(done, total): for a prompt longer than one batch (generate, stream,
        # chat), called with 0 before the first batch and after each; the library never prints
        self.prompt_progress: Callable[[int, int], object] | None = None
        _LIVE.add(self)

    # -- properties ----------------------------------------------------------------
    @property
    def tokens(self) -> list[int]:
        """The ids whose K/V are in the cache, positions 0..n_past-1 (a copy)."""
        return self._state.tokens() if self._state is not None else []

    @property
    def n_past(self) -> int:
        return self._state.n_past if self._state is not None else 0

    def thread_stats(self) -> dict:
        """How decoding used its threads (adaptive_threads): tokens on one thread and on
        n_threads, seconds per token on each, which is the current setting, and how many
        times a prompt or a first token found a core busy (``busy_core_found``)."""
        return self._check_open().thread_stats()

    @property
    def n_vocab(self) -> int:
        return self.model.n_vocab

    @property
    def n_threads(self) -> int:
        """The threads each call may use (the engine's State holds it: the one place it is
        kept). Setting it changes what the next call runs on, and starts the thread governor
        afresh on the new count; not while a call runs (SessionBusyError)."""
        return self._check_open().n_threads

    @n_threads.setter
    def n_threads(self, n: int) -> None:
        n = check_threads(n)
        state = self._check_open()
        if not self._busy.acquire(blocking=False):
            raise SessionBusyError("n_threads cannot change while this Session runs a call")
        try:
            state.n_threads = n
        finally:
            self._busy.release()

    # -- busy / cancel ---------------------------------------------------------------
    def _check_open(self) -> State:
        # -> the State (the session's engine state), which close() drops
        if self._state is None:
            raise ModelClosedError("this Session is closed")
        return self._state

    def _enter(self, work: bool = True) -> State:
        # work=False: close(), which runs nothing and may come at exit or after the Model closed
        # (LLM.close(): a running call's session is closed as it comes back, the Model already shut)
        state = self._check_open()
        if not self._busy.acquire(blocking=False) and not (
                self._draining is not None and self._busy.acquire(timeout=DRAIN_TIMEOUT_S)):
            raise SessionBusyError("this Session is busy with another call (another thread, or a stream that is "
                                   "still open); use one Session per concurrent caller")
        self._draining = None
        try:
            if work:        # close() needs neither the weights nor threads: it also works after the Model's
                if _EXITING:
                    raise ModelClosedError("the interpreter is exiting: guanaco_rt starts no more calls")
                self.model._check_usable()
                if os.getpid() != self._pid or self.n_threads > 1:
                    self._fit_threads()
        except BaseException:
            self._busy.release()
            raise
        with self._cancel_lock:
            if self._cancel_held:
                state.cancel(True)
        return state

    def _fit_threads(self):
        # OpenMP's thread pool does not survive os.fork(): a child that used it with more
        # than one thread after the parent did would hang in libgomp (model.usable_threads)
        self._pid = os.getpid()
        n = usable_threads(self.n_threads)
        if n != self.n_threads:
            log.warning("guanaco_rt: this process was forked after OpenMP started; the Session runs on %d "
                        "thread(s) instead of %d", n, self.n_threads)
            self._state.n_threads = n          # under _enter's lock: not through the property

    def _leave(self):
        if self.batcher is not None:
            self._state.leave()       # its passes no longer wait for this session's tokens
            release_threads()         # a call that ran here alone (all logits) leaves no thread pool
                                      # beside the batcher's (model.release_threads)
        with self._cancel_lock:       # a cancel() that saw this call running lands before this clear
            self._state.cancel(False)
            self._busy.release()
        self.model.check_file()       # the file changed during the call: its result is garbage, raise instead

    def cancel(self) -> None:
        """Stop the running eval or generation within one layer's work. Any thread may call
        it; it does nothing when the session is idle. The session stays usable and its cache
        consistent up to the last complete token."""
        with self._cancel_lock:
            if self._state is not None and self._busy.locked():
                self._state.cancel(True)

    def hold_cancel(self, on: bool = True) -> None:
        """cancel() the running call, and every call that starts until ``hold_cancel(False)``:
        a request cancelled before its generation began (an API's CancelHandle, a client gone
        while it waited) ends as cancelled instead of running to its end. Any thread."""
        with self._cancel_lock:
            self._cancel_held = on
            if on and self._state is not None and self._busy.locked():
                self._state.cancel(True)

    # -- evaluation ------------------------------------------------------------------
    def _check_ids(self, ids, what="ids"):
        """A list, tuple or 1-D integer ndarray of token ids -> int32 array; anything else,
        or an id outside the vocab, is refused (str, bytes, floats, bools, nested lists)."""
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or ids.dtype.kind not in "iu":
                raise TypeError(f"{what} must be a 1-D integer array, got {ids.dtype} with shape {ids.shape}")
            arr = ids.astype(np.int64)
        elif isinstance(ids, (list, tuple)):
            for t in ids:
                if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                    raise TypeError(f"{what} must hold token ids (ints), got {t!r} ({type(t).__name__})")
                if not -2 ** 63 <= t < 2 ** 63:
                    raise InvalidArgumentError(f"{what}: token id {t} outside [0, {self.n_vocab})", what)
            arr = np.array(ids, dtype=np.int64) if ids else np.zeros(0, np.int64)
        else:
            raise TypeError(f"{what} must be a list, tuple or integer ndarray of token ids, "
                            f"got {type(ids).__name__}" + (" (pass text to generate()/stream())"
                                                           if isinstance(ids, (str, bytes)) else ""))
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_vocab):
            bad = int(arr[(arr < 0) | (arr >= self.n_vocab)][0])
            raise InvalidArgumentError(f"{what}: token id {bad} outside [0, {self.n_vocab})", what)
        return arr.astype(np.int32)

    def eval(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Evaluate ``ids`` after the tokens already in the cache.

        Returns float32 (n_vocab,) logits after the last token, or (len(ids), n_vocab)
        with ``all_logits``. ContextFullError if they do not fit (nothing evaluated);
        Cancelled if cancel() interrupted it (the cache keeps every complete batch).
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
        out = np.empty((n, self.n_vocab), dtype=np.float32) if all_logits else None
        done = self._state.prefill(arr, out)      # in C, batch after batch, without the GIL
        if done < n:
            raise Cancelled(f"evaluation cancelled after {done} of {n} tokens")
        return out if all_logits else self._state.logits()

    def _prefill(self, ids, timings):
        """Bring the cache to exactly ``ids`` reusing the longest cached prefix."""
        st = self._state
        common = common_prefix(st.tokens(), ids)
        timings.reused_tokens = common
        timings.shared_tokens = min(self._shared, common)
        self._shared = 0
        if common == len(ids) == st.n_past and st.has_logits:
            return
        common = min(common, len(ids) - 1)      # re-evaluate at least the last token
        st.truncate(common)
        timings.reused_tokens = common
        timings.shared_tokens = min(timings.shared_tokens, common)
        t0 = time.perf_counter()
        todo, cb = ids[common:], self.prompt_progress
        if cb is None or len(todo) <= self.n_batch:
            self._eval(todo)
        else:                                   # batch by batch, reporting (the same batches)
            cb(0, len(todo))
            for i in range(0, len(todo), self.n_batch):
                self._eval(todo[i:i + self.n_batch])
                cb(min(i + self.n_batch, len(todo)), len(todo))
        timings.prompt_tokens = len(ids) - common
        timings.prompt_ms = (time.perf_counter() - t0) * 1e3

    def copy_prefix(self, ids: Sequence[int], sources: Iterable[Session]) -> int:
        """Start from another session's cache: copy in the K/V entries of the longest prefix
        of ``ids`` that one of ``sources`` holds, when it is longer than what this session
        holds of it. ``sources``: Sessions; those closed, of another Model, KV type or LoRA
        adapters are skipped. They may be generating in other threads meanwhile: what they are
        about to overwrite is never read half-written. Returns how many positions of ``ids``
        this session now holds (n_past): a generate() on ``ids`` evaluates only the rest, as
        eval(ids[n_past:]) does, with the bits a whole evaluation gives (a position's K/V
        depend only on the tokens up to it). Only a source that already holds the positions
        helps: sessions that start on one prompt together each evaluate it. Models with
        sliding-window layers (Gemma 3) copy nothing. LLM and the server do this for each
        request across their sessions."""
        arr = self._check_ids(ids, "ids")
        lst = arr.tolist()
        try:
            sources = list(sources)
        except TypeError:
            raise InvalidArgumentError(f"sources must be an iterable of Sessions, got {type(sources).__name__}",
                                       "sources") from None
        for src in sources:
            if not isinstance(src, Session):
                raise InvalidArgumentError(f"sources must hold Sessions, got {type(src).__name__}", "sources")
        state = self._enter()
        try:
            own = common_prefix(state.tokens(), lst)
            best, most = None, own
            for src in sources:
                st = src._state if src is not self else None
                if st is None or src.model is not self.model or src.kv_f16 != self.kv_f16 or \
                        src._adapters() != self._adapters():
                    continue
                c = common_prefix(st.tokens(), lst)     # a guess: the copy looks again, under the source's lock
                if c > most:
                    best, most = st, c
            if best is None:
                return own
            got = state.copy_prefix(best, arr)
            self._shared = max(0, got - own)
            return got
        finally:
            self._leave()

    def _fit_prompt(self, ids, reserve):
        """Make a prompt fit n_ctx, by policy."""
        if len(ids) <= self.n_ctx - reserve:
            return ids
        if self.context_policy == "error" or len(ids) > self.n_ctx and self.n_keep >= self.n_ctx // 2:
            raise ContextFullError(f"prompt of {len(ids)} tokens does not fit n_ctx {self.n_ctx} "
                                   f"(with {reserve} reserved for generation)")
        keep = ids[:min(self.n_keep, len(ids) - 1)]      # the last prompt token always comes from the tail
        tail = max(1, self.n_ctx - reserve - len(keep))
        log.warning("prompt of %d tokens truncated to %d (n_keep %d + the last %d)",
                    len(ids), len(keep) + tail, len(keep), tail)
        return keep + ids[-tail:]

    # -- generation ------------------------------------------------------------------
    def _prompt_ids(self, prompt):
        if isinstance(prompt, str):
            return self.model.tokenize(prompt)
        return self._check_ids(prompt, "prompt").tolist()

    def _prepare(self, prompt, max_new_tokens, stop, params, constraint=None):
        """Check and convert a generation's arguments -> (prompt ids, sampler core, text
        stage, guide or None). Runs when generate/stream is called, so bad arguments (and a
        constraint that does not compile) raise right there."""
        self._check_open()
        ids = self._prompt_ids(prompt)
        if not ids:
            raise InvalidArgumentError("empty prompt: pass at least the BOS token", "prompt")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
            raise TypeError(f"max_new_tokens must be an int, got {max_new_tokens!r}")
        if max_new_tokens < 0:
            raise InvalidArgumentError(f"max_new_tokens must be >= 0, got {max_new_tokens}", "max_new_tokens")
        ids = self._fit_prompt(ids, min(max_new_tokens, self.n_ctx // 4))
        core = self.sampler.core(params, self.n_vocab, self.model.tokenizer)   # checks logit_bias ids
        stops = [stop] if isinstance(stop, str) else list(stop or [])   # one string is one stop
        if not all(isinstance(x, str) for x in stops):
            raise TypeError(f"stop must be a string or a list of strings, got {stop!r}")
        for i, x in enumerate(stops):
            problem = unicode_problem(x)
            if problem:
                raise InvalidArgumentError(f"stop[{i}] is not valid Unicode: {problem}", "stop")
        guide = constraint[0].guide(constraint[1]) if constraint is not None else None
        return ids, core, TextStage(self.model.tokenizer.byte_table, stops, len(ids) == 1), guide

    def _decode_loop(self, ids, core, text, max_new_tokens, params, piecewise, n_keep, view=None, guide=None):
        """Generator of text pieces; returns the GenerationResult. Holds the session.

        After the prompt, the loop (sampling, token text, stop strings, context room, the
        forward pass) runs in C without the GIL; with ``piecewise`` it comes back to
        Python once per piece of text, to hand the piece out, else only at the end (and
        when its output arrays fill up: after 1024 tokens, then each doubling).

        Under a constraint (``guide``) it comes back once per token: the guide consumes
        the token, and its next mask is computed on a worker thread while the forward pass
        of the token runs here; the first mask while the prompt is evaluated.
        """
        self._enter()
        try:
            timings = Timings(load_ms=self.model.load_time * 1e3)
            gen, logprobs, reason, emitted = [], [] if params.n_probs else None, None, []
            token_lps = [] if params.n_probs else None
            if guide is not None:
                guide.start_mask()
            try:
                self._prefill(ids, timings)
            except Cancelled:
                reason = "cancelled"
            except BaseException:
                if guide is not None:
                    guide.close()
                raise
            if guide is not None and reason is not None:
                guide.close()
            t0 = time.perf_counter()
            if reason is None:
                # the State's sequence is current whenever the loop hands a piece out
                tk = self.model.tokenizer
                eos, eot = tk.eos_id, getattr(tk, "eot_id", None)        # either ends the generation
                dec = Decoder(self._state, core, text, max_new_tokens, -1 if eos is None else eos,
                              self.context_policy == "shift", n_keep, -1 if eot is None else eot,
                              getattr(tk, "eog_ids", ()))                 # and so does any EOG token
                if view is not None:
                    view.decoder = dec              # the stream's view of the tokens so far
                if guide is not None:
                    dec.hold = True                 # back here after each token, before its forward pass
                    guide.budget, guide.logits = max_new_tokens, self._state.logits   # the budget close
                    core.set_mask(guide.mask())
                try:
                    while reason is None:
                        piece, reason = dec.run(piecewise)
                        if piece:
                            emitted.append(piece)
                            yield piece
                        if reason is None and dec.pending >= 0:
                            piece, reason = self._guided_step(dec, guide)
                            if piece:
                                emitted.append(piece)
                                yield piece
                finally:
                    if guide is not None:
                        guide.close()
                    if dec.n_shifts:
                        log.info("context shift: %d time(s), %d tokens dropped (n_keep %d), %d left",
                                 dec.n_shifts, dec.n_discarded, n_keep, self.n_past)
                gen, logprobs, token_lps = dec.generated(), dec.logprobs(), dec.token_logprobs()
                if guide is not None and reason == "length" and len(gen) == guide.n_consumed + 1:
                    # the last token is sampled but not held: if it completes the constraint, the
                    # generation ended by the constraint as much as by max_new_tokens
                    if guide.consume(gen[-1]):
                        reason = "stop"
            timings.generated_tokens = len(gen)
            timings.generate_ms = (time.perf_counter() - t0) * 1e3
            # the result's text is exactly what was streamed (the stop string held back)
            result = GenerationResult("".join(emitted), gen, reason, timings, logprobs, token_lps)
            if guide is not None:
                result.parsed = guide.parse(result.text)
                result.close_steps = guide.close_steps
            self.last_result = result
            if reason == "context_full":
                err = ContextFullError(f"context full: {self.n_past} tokens = n_ctx {self.n_ctx} "
                                       f"after {len(gen)} generated (context_policy='error'); "
                                       f"the text so far is in .result and Session.last_result")
                err.result = result
                raise err
            return result
        finally:
            self._leave()

    @staticmethod
    def _guided_step(dec, guide):
        # the held token: the constraint takes it; complete -> the generation ends ("stop"),
        # else its forward pass runs while a worker computes the next mask
        if guide.consume(dec.pending):
            return dec.finish()
        guide.start_mask()
        try:
            piece, reason = dec.eval_pending()
        finally:
            guide.wait()
        guide.mask()                        # raises if the engine failed
        return piece, reason

    def _params(self, params, kw):
        if params is not None and kw:
            raise TypeError("pass either params=SamplingParams(...) or keyword arguments, not both")
        return params if params is not None else SamplingParams.from_kwargs(**kw)

    def stream(self, prompt: Prompt, max_new_tokens: int = 128, stop: str | Iterable[str] | None = None,
               params: SamplingParams | None = None, *, json_schema: Schema = None, regex: str | None = None,
               grammar: str | None = None, choices: Sequence[str] | None = None, strict: bool = True,
               **sampling) -> TextStream:
        """Iterator of text pieces as they are generated (never a split UTF-8 character,
        never a piece of a stop string). ``.result`` holds the GenerationResult at the end.
        The constraint keywords are generate()'s."""
        return self._stream(prompt, max_new_tokens, stop, params, sampling, piecewise=True,
                            constraint=self.constraint(json_schema, regex, grammar, choices, strict))

    def constraint(self, json_schema: Schema = None, regex: str | None = None, grammar: str | None = None,
                   choices: Sequence[str] | None = None, strict: bool = True):
        """Compile the constraint of a generation call (see generate()) for this model's
        vocabulary -> (Constraint, pydantic type or None), or None when none is given.
        Compiled constraints are cached per (vocabulary, source). ConstraintError if it
        cannot be compiled."""
        return compile_constraint(self.model, json_schema=json_schema, regex=regex, grammar=grammar,
                                  choices=choices, strict=strict)

    def _stream(self, prompt, max_new_tokens, stop, params, sampling, piecewise, n_keep=None, constraint=None):
        params = self._params(params, sampling)
        ids, core, text, guide = self._prepare(prompt, max_new_tokens, stop, params, constraint)
        # more than the decode loop counts is more than any call can generate: no limit
        max_new_tokens = min(int(max_new_tokens), MAX_NEW_TOKENS)
        n_keep = self.n_keep if n_keep is None else n_keep
        # the loop gets the view, not the stream: no cycle, so dropping the stream closes the
        # loop (and frees the session) by reference counting alone
        view = StreamView()
        return TextStream(self._decode_loop(ids, core, text, max_new_tokens, params, piecewise, n_keep, view, guide),
                          view)

    def generate(self, prompt: Prompt, max_new_tokens: int = 128, stop: str | Iterable[str] | None = None,
                 params: SamplingParams | None = None, callback: Callable[[str], object] | None = None, *,
                 json_schema: Schema = None, regex: str | None = None, grammar: str | None = None,
                 choices: Sequence[str] | None = None, strict: bool = True, **sampling) -> GenerationResult:
        """Generate a continuation of ``prompt`` (text, or token ids starting with BOS).

        The prompt is the whole context: the longest prefix already in the cache is reused.
        ``callback(piece)`` is called with each text piece as it comes.

        At most one constraint shapes the text: ``json_schema`` (a dict, JSON text, or a
        pydantic model class), ``regex``, ``grammar`` (Lark or llama.cpp's GBNF) or
        ``choices`` (a list of strings). Each step samples only tokens the constraint allows
        (the mask applies before the sampling chain); when it is complete the generation
        ends with finish_reason "stop", and a JSON schema's value is in ``result.parsed``
        (the pydantic object for a model class). Stop strings, EOS and max_new_tokens end it
        as ever: then ``parsed`` is None if the text is incomplete. ``strict`` (as the OpenAI
        API's): a JSON schema keyword the engine does not implement is a ConstraintError;
        False ignores it.

        Under a constraint, the end of the text is kept within max_new_tokens: when the
        tokens left come near what the shortest completion needs, only tokens after which
        the constraint can still be completed in time stay allowed (the model chooses among
        them), so the text ends complete; ``result.close_steps`` counts the steps where that
        set the model's first choice aside. A constraint that cannot be completed in the
        tokens given still ends with finish_reason "length" and ``parsed`` None.
        """
        return self._generate(prompt, max_new_tokens, stop, params, callback, sampling,
                              constraint=self.constraint(json_schema, regex, grammar, choices, strict))

    def _generate(self, prompt, max_new_tokens, stop, params, callback, sampling, n_keep=None, constraint=None):
        # without a callback nobody waits for pieces: one call into C decodes everything
        # a callback that raises must not leave the session busy: its traceback keeps this
        # frame, and with it the stream, alive
        with self._stream(prompt, max_new_tokens, stop, params, sampling, callback is not None, n_keep,
                          constraint) as s:
            for piece in s:
                if callback is not None:
                    callback(piece)
        return s.result

    def astream(self, prompt: Prompt, max_new_tokens: int = 128, stop: str | Iterable[str] | None = None,
                params: SamplingParams | None = None, **sampling) -> AsyncTextStream:
        """Async iterator of text pieces (``async for``); the decode loop runs on a worker
        thread. Leaving the loop early -- break, an exception, a cancelled task -- cancels
        the generation at once, and the session's next call waits only for the token in
        flight. Arguments (stream()'s, the constraint keywords included) are checked here,
        when called."""
        return AsyncTextStream(self, self.stream(prompt, max_new_tokens, stop, params, **sampling))

    def _abandon(self, thread):
        # an astream() whose consumer left: stop it; the next _enter waits for its worker
        self._draining = thread
        self.cancel()

    # -- chat ------------------------------------------------------------------------
    def chat(self, message: str, max_new_tokens: int = 256, stop: str | Iterable[str] | None = None,
             params: SamplingParams | None = None, callback: Callable[[str], object] | None = None, *,
             json_schema: Schema = None, regex: str | None = None, grammar: str | None = None,
             choices: Sequence[str] | None = None, strict: bool = True, **sampling) -> ChatReply:
        """One chat turn: returns the assistant's reply (stripped), a str whose ``.result``
        is the GenerationResult and ``.parsed`` the value a ``json_schema`` constraint
        produced (the pydantic object for a model class; None without one, or when the
        reply is incomplete). The constraint keywords are generate()'s. The format is the
        session's template: Guanaco's ``### Human:`` turns, or the model's chat template.
        Messages (and the system text) are always text: one that spells a special token
        (``<|im_end|>``, ``</s>``) does not become that token. A chat template that does not
        parse, fails, renders nothing or goes over its limits is a ChatTemplateError.

        The whole conversation is the prompt; only the new tokens are evaluated. When it
        would not fit (with max_new_tokens reserved), the oldest turns are dropped under
        the "shift" policy, or ContextFullError is raised under "error".
        """
        if not isinstance(message, str):
            raise TypeError(f"message must be a str, got {type(message).__name__}")
        self._check_open()
        constraint = self.constraint(json_schema, regex, grammar, choices, strict)
        conv = self.conversation
        reserve = min(max_new_tokens, self.n_ctx // 2)
        first = self._chat_first_turn

        def fits(f):
            ids = self._chat_ids(message, f)
            return ids if len(ids) + reserve <= self.n_ctx else None

        ids = fits(first)
        if ids is None:
            if self.context_policy == "error" or fits(len(conv.turns)) is None:
                n = len(self._chat_ids(message, first if self.context_policy == "error" else len(conv.turns)))
                raise ContextFullError(f"chat prompt of {n} tokens + {reserve} reserved > n_ctx {self.n_ctx}")
            # fewer turns, shorter prompt: binary search for the first turn that makes it fit
            # (log2(turns) tokenizations instead of one per dropped turn)
            lo, hi = first + 1, len(conv.turns)
            while lo < hi:
                mid = (lo + hi) // 2
                if fits(mid) is None:
                    lo = mid + 1
                else:
                    hi = mid
            first = lo
            ids = fits(first)
        self._chat_first_turn = first
        # a context shift inside the reply keeps the system text
        if stop is None:
            stop = DEFAULT_STOP if self.template is None else []     # template models end their turn with an EOG token
        res = self._generate(ids, max_new_tokens, stop, params, callback, sampling, n_keep=self._chat_keep(),
                             constraint=constraint)
        reply = res.text.strip()
        if res.finish_reason != "cancelled":
            conv.add(message, reply)
        return ChatReply(reply, res)

    def chat_prompt(self, message: str) -> list[int]:
        """The token ids ``chat(message)`` would start from: the conversation so far and this
        user turn in the model's chat format, the assistant's turn opened. Message content is
        always text (never special tokens)."""
        return self._chat_ids(message, 0)

    def _chat_ids(self, message, first_turn):
        conv = self.conversation
        if self.template is None:           # Guanaco's turns: all of it is text, no special tokens
            return self.model.tokenize(conv.prompt(message, first_turn))
        return self.template.model_prompt_ids(self.model, conv.messages(message, first_turn))

    def _chat_keep(self):
        conv = self.conversation
        if self.template is None:
            return len(self.model.tokenize(conv.system_text()))
        if not conv.system:
            return 0
        return len(self.template.model_prompt_ids(self.model, conv.messages(), add_generation_prompt=False))

    # -- state -------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every evaluated token and the conversation (the cache is overwritten lazily)."""
        state = self._enter()
        try:
            state.truncate(0)
            self._shared = 0
            self.conversation.clear()
            self._chat_first_turn = 0
        finally:
            self._leave()

    def save_state(self) -> bytes:
        """A compact, versioned blob: the used KV entries (all n_past positions, a sliding-window
        layer's last ones), the tokens, the last logits, the sampler's RNG, the conversation,
        and the model's fingerprint."""
        state = self._enter()
        try:
            n = self.n_past
            logits = state.logits()
            k, v = state.export_kv()
            meta = {"n_past": n, "n_layer": self.model.hparams.n_layer, "n_embd": self.model.hparams.n_embd,
                    "n_vocab": self.n_vocab, "kv": "f16" if self.kv_f16 else "f32", "kv_rows": [len(a) for a in k],
                    "has_logits": logits is not None, "rng": self.sampler.state,
                    "system": self.conversation.system, "turns": self.conversation.turns,
                    "chat_first_turn": self._chat_first_turn}
            mj = json.dumps(meta).encode()
            parts = [STATE_MAGIC, struct.pack("<I", STATE_VERSION), self._weights_id(),
                     struct.pack("<Q", len(mj)), mj, np.asarray(self.tokens, "<i4").tobytes()]
            if logits is not None:
                parts.append(logits.astype("<f4").tobytes())
            parts += [a.tobytes() for a in k] + [a.tobytes() for a in v]
            return b"".join(parts)
        finally:
            self._leave()

    def load_state(self, blob: bytes | bytearray | memoryview) -> None:
        """Restore a save_state() blob; refused (StateError) if it is from another model,
        malformed, or larger than this session's n_ctx."""
        blob = memoryview(bytes(blob))
        state = self._enter()
        try:
            head = 4 + 4 + 32 + 8
            if len(blob) < head or bytes(blob[:4]) != STATE_MAGIC:
                raise StateError("not a guanaco_rt session state (bad magic)")
            version = struct.unpack_from("<I", blob, 4)[0]
            if version not in (2, STATE_VERSION):
                raise StateError(f"state version {version} is not supported (expected 2 or {STATE_VERSION})")
            if bytes(blob[8:40]) != self._weights_id():
                raise StateError("this state was saved from a different model file, or with other LoRA adapters "
                                 "(Session lora=)")
            (mlen,) = struct.unpack_from("<Q", blob, 40)
            if mlen > len(blob) - head:
                raise StateError(f"metadata length {mlen} runs past the end of the {len(blob)}-byte state")
            try:
                meta = json.loads(bytes(blob[head:head + mlen]))
                if not isinstance(meta, dict):
                    raise TypeError(f"metadata is a {type(meta).__name__}, not an object")
                n = _meta_int(meta, "n_past", 0, self.n_ctx)
                kvt = {"f16": np.float16, "f32": np.float32}[meta["kv"]]
                has_logits = meta["has_logits"]
                if not isinstance(has_logits, bool):
                    raise TypeError(f"has_logits is {has_logits!r}")
                system = meta.get("system", "")
                turns = meta.get("turns", [])
                if not isinstance(system, str) or not isinstance(turns, list) or not all(
                        isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t) for t in turns):
                    raise TypeError("system must be a string and turns a list of [message, reply] strings")
                first_turn = _meta_int(meta, "chat_first_turn", 0, len(turns), default=0)
                rows = meta["kv_rows"] if version >= 3 else [n] * self.model.hparams.n_layer
                if not isinstance(rows, list) or len(rows) != self.model.hparams.n_layer:
                    raise TypeError(f"kv_rows is {str(rows)[:80]!r}, not a list of {self.model.hparams.n_layer} "
                                    "row counts")
                for i, r in enumerate(rows):
                    _meta_int({f"kv_rows[{i}]": r}, f"kv_rows[{i}]", 0, n)
                np.random.PCG64().state = meta["rng"]      # checked on a scratch generator first
            except StateError:
                raise
            except (ValueError, KeyError, TypeError, OverflowError, RecursionError, AttributeError) as e:
                raise StateError(f"state metadata is malformed: {type(e).__name__}: {e}") from None
            hp = self.model.hparams
            if (meta.get("n_layer"), meta.get("n_embd"), meta.get("n_vocab")) != (hp.n_layer, hp.n_embd, hp.n_vocab):
                raise StateError("state shape does not match this model")
            n_kv = state.n_embd_kv
            window = state.kv_stats()["window"]
            if any(r != n for r, w in zip(rows, window) if not w) or len({r for r, w in zip(rows, window) if w}) > 1:
                raise StateError(f"state's kv_rows {rows[:8]}... do not fit this model's layers: {n} in each layer "
                                 "without a window, one number in the sliding-window ones")
            kv_bytes = sum(rows) * n_kv * np.dtype(kvt).itemsize
            logit_bytes = 4 * self.n_vocab if has_logits else 0
            need = head + mlen + 4 * n + logit_bytes + 2 * kv_bytes
            if len(blob) != need:
                raise StateError(f"state is {len(blob)} bytes, expected {need}")
            pos = head + mlen
            tokens = np.frombuffer(blob, "<i4", n, pos).tolist()
            if n and (min(tokens) < 0 or max(tokens) >= self.n_vocab):
                raise StateError("state holds token ids outside the vocab")
            pos += 4 * n
            logits = np.frombuffer(blob, "<f4", self.n_vocab, pos) if logit_bytes else None
            pos += logit_bytes
            own = np.float16 if self.kv_f16 else np.float32      # an f16 state loads into an f32 cache and back
            k: list[np.ndarray] = []
            v: list[np.ndarray] = []
            for arrs, at in ((k, pos), (v, pos + kv_bytes)):
                for r in rows:
                    arrs.append(np.frombuffer(blob, kvt, r * n_kv, at).reshape(r, n_kv).astype(own))
                    at += r * n_kv * np.dtype(kvt).itemsize
            # everything is checked: from here on nothing can fail half way
            state.import_kv(tokens, k, v, logits)
            self._shared = 0
            self.sampler.set_state(meta["rng"])
            self.conversation = Conversation(system=system, turns=[tuple(t) for t in turns])
            self._chat_first_turn = first_turn
        finally:
            self._leave()

    def _adapters(self):
        # the run-time adapters as a comparable key: their files' digests and scales
        return [(ad.digest, scale) for ad, scale in self.lora]

    def _weights_id(self):
        # the model's fingerprint, or with run-time adapters a hash of it and theirs (file
        # digest and scale): a state's K/V belong to the weights and adapters that made them
        if not self.lora:
            return self.model.fingerprint
        import hashlib
        h = hashlib.sha256(self.model.fingerprint)
        for ad, scale in self.lora:
            h.update(ad.digest + repr(scale).encode())
        return h.digest()

    def fork(self, **overrides) -> Session:
        """A new Session on the same model that starts from this one's evaluated prefix,
        conversation and sampler state. Keyword arguments override its settings."""
        kw = dict(n_ctx=self.n_ctx, n_batch=self.n_batch, n_threads=self.n_threads, kv_f16=self.kv_f16,
                  swa_full=self.swa_full,
                  adaptive_threads=self._check_open().adaptive_threads,
                  seed=self.seed, context_policy=self.context_policy, n_keep=self.n_keep,
                  template=self._template_source, batcher=self.batcher, lora=self.lora or None)
        kw.update(overrides)
        other = Session(self.model, **kw)
        other.load_state(self.save_state())
        return other

    def close(self) -> None:
        """Free the KV cache. The session cannot be used afterwards."""
        if self._state is not None:
            self._enter(work=False)
            self._busy.release()
            self._state = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc):
        self.close()
