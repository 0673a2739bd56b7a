# cython: language_level=3
"""The decode loop in C: sample -> token bytes -> incremental UTF-8 -> stop strings ->
context room -> forward, token after token, without the GIL. Python only takes
the text out between calls (Session.stream hands each piece to its caller).

Text stages work on bytes. The UTF-8 stage emits only whole, valid characters,
each undecodable byte as one U+FFFD (EF BF BD) as SentencePiece's decode does,
so the stop stage sees valid UTF-8: a byte match is a character match, and a
held-back suffix that starts a stop string starts at a character boundary.
"""
from libc.stdint cimport uint8_t, int32_t, int64_t
from libc.stdlib cimport realloc, free
from libc.string cimport memcpy, memcmp, memmove

import threading

cimport cython

import numpy as np
from cpython.exc cimport PyErr_CheckSignals

from guanaco_rt._kernels._engine cimport State, state_t, model_t, shift_kv, monotonic, step_one, batch_leave
from guanaco_rt._kernels._sampling cimport SamplerCore, sample_token

cdef int buf_put(bytebuf_t* b, const uint8_t* src, int64_t n) noexcept nogil:
    # append n bytes; -1 when out of memory (nothing appended)
    cdef int64_t cap
    cdef uint8_t* q
    if b.n + n > b.cap:
        cap = max(b.n + n, 2 * b.cap, 64)
        q = <uint8_t*>realloc(b.p, cap)
        if q == NULL:
            return -1
        b.p = q
        b.cap = cap
    if n:
        memcpy(b.p + b.n, src, n)
    b.n += n
    return 0

cdef void buf_free(bytebuf_t* b) noexcept nogil:
    free(b.p)
    b.p = NULL
    b.n = b.cap = 0


cdef bytes _pybytes(bytebuf_t* b):
    out = b.p[:b.n] if b.n else b""
    b.n = 0
    return out

# ---- incremental UTF-8 ------------------------------------------------------------------

cdef uint8_t REPLACEMENT[3]
REPLACEMENT[0] = 0xEF
REPLACEMENT[1] = 0xBF
REPLACEMENT[2] = 0xBD

cdef inline int _utf8_len(uint8_t b0) noexcept nogil:
    if b0 < 0x80:
        return 1
    if 0xC2 <= b0 <= 0xDF:
        return 2
    if 0xE0 <= b0 <= 0xEF:
        return 3
    if 0xF0 <= b0 <= 0xF4:
        return 4
    return 0

cdef inline bint _utf8_cont_ok(uint8_t b0, int j, uint8_t b) noexcept nogil:
    # may b be byte j (>= 1) of a sequence led by b0? (no overlongs, surrogates, > U+10FFFF)
    if j == 1:
        if b0 == 0xE0:
            return 0xA0 <= b <= 0xBF
        if b0 == 0xED:
            return 0x80 <= b <= 0x9F
        if b0 == 0xF0:
            return 0x90 <= b <= 0xBF
        if b0 == 0xF4:
            return 0x80 <= b <= 0x8F
    return 0x80 <= b <= 0xBF

cdef int utf8_feed(utf8_t* u, const uint8_t* data, int64_t n, bint final, bytebuf_t* out) noexcept nogil:
    # u.pend ++ data (n,) -> whole characters appended to out; an incomplete valid tail
    # waits in u.pend unless final (then each of its bytes is one U+FFFD). -1: out of memory
    cdef int64_t total = u.n_pend + n, i = 0
    cdef int k, j
    cdef uint8_t seq[4]
    cdef uint8_t b0
    while i < total:
        b0 = u.pend[i] if i < u.n_pend else data[i - u.n_pend]
        k = _utf8_len(b0)
        if k == 0:
            if buf_put(out, REPLACEMENT, 3):
                return -1
            i += 1
            continue
        seq[0] = b0
        j = 1
        while j < k and i + j < total:
            seq[j] = u.pend[i + j] if i + j < u.n_pend else data[i + j - u.n_pend]
            if not _utf8_cont_ok(b0, j, seq[j]):
                break
            j += 1
        if j == k:
            if buf_put(out, seq, k):
                return -1
            i += k
        elif i + j == total and not final:
            break                       # valid so far: wait for the rest
        else:
            if buf_put(out, REPLACEMENT, 3):
                return -1
            i += 1
    # keep the unconsumed tail (< 4 bytes, possibly from the old pend)
    k = <int>(total - i)
    for j in range(k):
        seq[j] = u.pend[i + j] if i + j < u.n_pend else data[i + j - u.n_pend]
    for j in range(k):
        u.pend[j] = seq[j]
    u.n_pend = k
    return 0

# ---- stop strings -------------------------------------------------------------------------

cdef int64_t _find(const uint8_t* hay, int64_t nh, const uint8_t* needle, int64_t nn) noexcept nogil:
    cdef int64_t i
    for i in range(nh - nn + 1):
        if hay[i] == needle[0] and memcmp(hay + i, needle, nn) == 0:
            return i
    return -1

cdef int stops_push(stops_t* st, const uint8_t* data, int64_t n, bytebuf_t* out) noexcept nogil:
    # text (n,) -> out gets what can no longer be part of a stop string. Returns 1 when a
    # stop string is complete (out gets the text before the earliest one; the rest is
    # dropped), 0 otherwise, -1 when out of memory.
    cdef bytebuf_t* h = &st.held
    cdef int64_t best = -1, at, hold = 0, ls, k, cut
    cdef int i
    if st.n == 0:
        return buf_put(out, data, n)
    if buf_put(h, data, n):
        return -1
    for i in range(st.n):
        at = _find(h.p, h.n, st.blob + st.offs[i], st.offs[i + 1] - st.offs[i])
        if at >= 0 and (best < 0 or at < best):
            best = at
    if best >= 0:
        h.n = 0
        return 1 if buf_put(out, h.p, best) == 0 else -1
    for i in range(st.n):
        ls = st.offs[i + 1] - st.offs[i]
        k = min(ls - 1, h.n)
        while k > hold:                 # the longest tail of held that begins stop i
            if memcmp(h.p + h.n - k, st.blob + st.offs[i], k) == 0:
                hold = k
                break
            k -= 1
    cut = h.n - hold
    if buf_put(out, h.p, cut):
        return -1
    memmove(h.p, h.p + cut, hold)
    h.n = hold
    return 0

cdef int stops_flush(stops_t* st, bytebuf_t* out) noexcept nogil:
    cdef int rc = buf_put(out, st.held.p, st.held.n)
    st.held.n = 0
    return rc

# ---- token -> text ----------------------------------------------------------------------

cdef int text_push(text_t* T, int32_t tok) noexcept nogil:
    # -> 1 stopped, 0, -1 out of memory
    cdef const uint8_t* b = T.voc.blob + T.voc.offs[tok]
    cdef int64_t n = T.voc.offs[tok + 1] - T.voc.offs[tok]
    if T.strip and n:
        if T.voc.normal[tok] and b[0] == 32:
            b += 1
            n -= 1
        T.strip = False
    T.chars.n = 0
    if utf8_feed(&T.u8, b, n, False, &T.chars):
        return -1
    return stops_push(&T.stops, T.chars.p, T.chars.n, &T.out)

cdef int text_finish(text_t* T) noexcept nogil:
    # end of generation (not at a stop): undecodable tail bytes, then the held text
    cdef int rc
    T.chars.n = 0
    if utf8_feed(&T.u8, NULL, 0, True, &T.chars):
        return -1
    rc = stops_push(&T.stops, T.chars.p, T.chars.n, &T.out)
    if rc == 0:
        rc = -1 if stops_flush(&T.stops, &T.out) else 0
    return rc


cdef class TextStage:
    """Token ids (or text) -> text to emit, through the UTF-8 and stop stages.

    Owns a text_t and the arrays its pointers point into. The Decoder drives it
    without the GIL; its methods are the stages' Python-callable twins.
    """

    def __cinit__(self, tuple vocab_table, stops=(), bint strip=False):
        blob, offs, normal = vocab_table
        blob = np.append(np.asarray(blob, np.uint8).reshape(-1), np.uint8(0))   # never empty
        offs = np.ascontiguousarray(offs, np.int64)
        normal = np.ascontiguousarray(normal, np.uint8)
        n = offs.shape[0] - 1
        if n < 1 or normal.shape[0] != n or offs[0] != 0 or (np.diff(offs) < 0).any() or offs[n] >= blob.shape[0]:
            raise ValueError("vocab table must be (blob, offsets (n_vocab + 1,) ascending within blob, "
                             "normal flags (n_vocab,))")
        sb = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in stops]
        sb = [s for s in sb if s]
        soffs = np.zeros(len(sb) + 1, np.int64)
        soffs[1:] = np.cumsum([len(s) for s in sb])
        self.blob, self.offs, self.normal = blob, offs, normal
        self.sblob = np.frombuffer(b"".join(sb) + b"\0", np.uint8)
        self.soffs = soffs
        self.T.voc.blob = &self.blob[0]
        self.T.voc.offs = &self.offs[0]
        self.T.voc.normal = &self.normal[0]
        self.T.voc.n_vocab = n
        self.T.stops.blob = &self.sblob[0]
        self.T.stops.offs = &self.soffs[0]
        self.T.stops.n = len(sb)
        self.T.strip = strip

    def __dealloc__(self):
        buf_free(&self.T.chars)
        buf_free(&self.T.out)
        buf_free(&self.T.stops.held)

    cdef str take(self):
        # everything ready so far, as text (always whole UTF-8 characters)
        return _pybytes(&self.T.out).decode("utf-8")

    cdef _result(self, int rc):
        if rc < 0:
            raise MemoryError("out of memory in the text stage")
        return self.take(), rc == 1

    def push_token(self, int tok):
        """-> (text now safe to emit, stopped)"""
        if not 0 <= tok < self.T.voc.n_vocab:
            raise ValueError(f"token id {tok} outside [0, {self.T.voc.n_vocab})")
        return self._result(text_push(&self.T, tok))

    def push_bytes(self, const uint8_t[::1] data):
        """Raw bytes through the UTF-8 and stop stages -> (text, stopped)"""
        self.T.chars.n = 0
        if utf8_feed(&self.T.u8, &data[0] if data.shape[0] else NULL, data.shape[0], False, &self.T.chars):
            raise MemoryError("out of memory in the text stage")
        return self._result(stops_push(&self.T.stops, self.T.chars.p, self.T.chars.n, &self.T.out))

    def push_text(self, str text):
        return self.push_bytes(text.encode("utf-8"))

    def finish(self):
        """End of the stream: undecodable tail bytes as U+FFFD, then held text -> (text, stopped)"""
        return self._result(text_finish(&self.T))


# ---- the decode loop ------------------------------------------------------------------------
cdef double SIGNAL_POLL_S = 0.05     # how often the main thread's loop lets Python run signal handlers

cdef enum:
    DEC_RUNNING = 0          # text is ready; call run() again
    DEC_LENGTH = 1           # max_new tokens sampled
    DEC_EOS = 2
    DEC_STOP = 3             # a stop string completed
    DEC_CANCELLED = 4
    DEC_CONTEXT_FULL = 5     # policy "error" and no room for the next token
    DEC_NOMEM = 6
    DEC_NO_CANDIDATES = 7    # every token banned (logit_bias -inf): nothing left to sample
    DEC_INTERRUPTED = 8      # a signal handler raised (Ctrl-C): run() re-raises it
    DEC_DONE = 9             # the caller ended it (a constraint that reached its end): text flushed

FINISH_REASONS = {DEC_LENGTH: "length", DEC_EOS: "eos", DEC_STOP: "stop", DEC_CANCELLED: "cancelled",
                  DEC_CONTEXT_FULL: "context_full", DEC_NO_CANDIDATES: "no_candidates", DEC_DONE: "stop"}

cdef class Decoder:
    """One generation on a State: ``run()`` samples, decodes text, matches stop strings,
    makes room in the context and evaluates each new token, all without the GIL, until
    the generation ends (or, with ``until_text``, until text is ready).

    It works on the State's own sequence (tokens, n_past, logits): every evaluated token
    joins it as it goes, so the State is current whenever run() returns. The token that
    ends generation by length or stop is sampled but not evaluated, so the logits always
    follow the sequence's last token.

    With ``hold`` set, run() returns after each sampled token, before its forward pass:
    the caller reads ``pending`` (a constraint consumes it and starts the next mask), then
    eval_pending() runs the forward pass without the GIL while the mask is computed, or
    finish() ends the generation there.
    """

    def __cinit__(self, State state, SamplerCore sampler, TextStage text, int max_new, int eos_id, bint shift,
                  int n_keep, int eot_id=-1, eog_ids=()):
        if sampler.S.n_vocab != state.engine.m.n_vocab or text.T.voc.n_vocab != state.engine.m.n_vocab:
            raise ValueError("sampler, vocab table and model disagree on n_vocab")
        if state.s.n_past < 1 or not state.s.have_logits:
            raise ValueError("the state has no logits to sample from: evaluate the prompt first")
        if max_new < 0:
            raise ValueError(f"max_new must be >= 0, got {max_new}")
        if n_keep < 0:
            raise ValueError(f"n_keep must be >= 0, got {n_keep}")
        self.st, self.sampler, self.text = state, sampler, text
        self._grow(min(max(1, max_new), 1024))
        self.max_new = max_new
        self.eos_id = eos_id
        self.eot_id = eot_id          # end of turn (chat models): ends generation as EOS does; -1 none
        # every other end-of-generation token (the vocabulary's EOG set: <|im_end|>, <end_of_turn>, ...)
        self.eog = np.zeros(state.engine.m.n_vocab, np.uint8)
        for i in eog_ids:
            if not 0 <= i < state.engine.m.n_vocab:
                raise ValueError(f"end-of-generation token id {i} outside [0, {state.engine.m.n_vocab})")
            self.eog[i] = 1
        self.shift = shift
        self.n_keep = n_keep
        self.status = DEC_RUNNING
        self.pending = -1

    def __dealloc__(self):
        # abandoned while running (a stream its reader dropped): the batcher stops waiting for it
        if self.st is not None and self.status == DEC_RUNNING and self.st.s.batch != NULL:
            batch_leave(self.st.s.batch, &self.st.s)

    cdef _grow(self, int cap):
        # output arrays of cap tokens, keeping what is there; the loop pauses when they are full
        cdef int k = max(1, self.sampler.S.p.n_probs)
        gen = np.zeros(cap, np.int32)
        top_ids = np.zeros((cap, k), np.int32)
        top_lp = np.zeros((cap, k), np.float64)
        tok_lp = np.zeros(cap, np.float64)
        if self.n_gen:
            gen[:self.n_gen] = self.gen[:self.n_gen]
            top_ids[:self.n_gen] = self.top_ids[:self.n_gen]
            top_lp[:self.n_gen] = self.top_lp[:self.n_gen]
            tok_lp[:self.n_gen] = self.tok_lp[:self.n_gen]
        self.gen, self.top_ids, self.top_lp, self.tok_lp = gen, top_ids, top_lp, tok_lp
        self.cap = cap

    cdef int _finish(self, int reason) noexcept nogil:
        cdef int rc
        if reason != DEC_STOP and reason != DEC_CONTEXT_FULL:
            rc = text_finish(&self.text.T)
            if rc < 0:
                reason = DEC_NOMEM
            elif rc == 1:
                reason = DEC_STOP
        self.status = reason
        if self.st.s.batch != NULL:         # a batcher's passes no longer wait for this sequence
            batch_leave(self.st.s.batch, &self.st.s)
        return reason

    @cython.nonecheck(False)      # self is never None here, and a check would need the GIL
    cdef int _loop(self, bint until_text) noexcept nogil:
        cdef state_t* s = &self.st.s
        cdef const model_t* m = &self.st.engine.m
        cdef int rc, keep, discard
        cdef int32_t tok
        cdef double now
        while True:
            if self.steps >= self.max_new:
                return self._finish(DEC_LENGTH)
            if s.cancel or (m.file_fault != NULL and m.file_fault[0]):
                return self._finish(DEC_CANCELLED)
            if self.poll_signals:
                now = monotonic()
                if now >= self.next_poll:
                    self.next_poll = now + SIGNAL_POLL_S
                    if self._signals():
                        return self._finish(DEC_INTERRUPTED)
            if self.n_gen == self.cap:
                return DEC_RUNNING              # run() grows the output arrays
            tok = sample_token(&self.sampler.S, s.logits, s.tokens, s.n_past,
                               &self.top_ids[self.n_gen, 0], &self.top_lp[self.n_gen, 0])
            self.steps += 1
            if tok < 0:
                return self._finish(DEC_NO_CANDIDATES)
            if tok == self.eos_id or tok == self.eot_id or self.eog[tok]:
                return self._finish(DEC_EOS)
            self.gen[self.n_gen] = tok
            if self.sampler.S.p.n_probs > 0:
                self.tok_lp[self.n_gen] = self.sampler.S.x[tok] - self.sampler.S.lp_norm
            self.n_gen += 1
            rc = text_push(&self.text.T, tok)
            if rc < 0:
                return self._finish(DEC_NOMEM)
            if rc == 1:
                return self._finish(DEC_STOP)
            if self.steps >= self.max_new:
                return self._finish(DEC_LENGTH)
            if s.n_past == s.n_ctx:             # no room for tok: the policy decides
                if not self.shift:
                    return self._finish(DEC_CONTEXT_FULL)
                keep = max(0, min(self.n_keep, s.n_past - 2))
                discard = max(1, (s.n_past - keep) // 2)
                shift_kv(m, s, keep, discard)
                self.n_shifts += 1
                self.n_discarded += discard
            if self.hold:
                self.pending = tok
                return DEC_RUNNING
            if step_one(m, s, tok):
                return self._finish(DEC_CANCELLED)
            if until_text and self.text.T.out.n > 0:
                return DEC_RUNNING

    cdef int _signals(self) noexcept with gil:
        # Ctrl-C and other handlers run only when Python gets control: on the main thread the
        # loop hands it over every SIGNAL_POLL_S (signals are only delivered there)
        try:
            PyErr_CheckSignals()
        except BaseException as e:
            self.interrupt = e
            return 1
        return 0

    def run(self, bint until_text=False):
        """Decode until the end, or until text is ready (``until_text``). Returns
        (text, finish reason or None while running). Releases the GIL throughout, except
        for a signal check every 50 ms on the main thread; an exception a signal handler
        raises (KeyboardInterrupt) is raised here, with the State consistent."""
        cdef int status = self.status
        self.poll_signals = threading.current_thread() is threading.main_thread()
        if self.pending >= 0:
            raise RuntimeError("a held token is waiting: call eval_pending() or finish() first")
        if status == DEC_RUNNING:
            if self.n_gen == self.cap:
                self._grow(min(2 * self.cap, self.max_new))
            with nogil:
                status = self._loop(until_text)
        if status == DEC_NOMEM:
            raise MemoryError("out of memory while decoding")
        if status == DEC_INTERRUPTED:
            raise self.interrupt
        return self.text.take(), FINISH_REASONS.get(status)

    def eval_pending(self):
        """The forward pass of the held token (``hold``), without the GIL. Returns (text,
        None), or (text, "cancelled") when cancel() stopped it."""
        cdef int32_t tok = self.pending
        cdef int rc
        if tok < 0 or self.status != DEC_RUNNING:
            raise RuntimeError("no held token to evaluate")
        self.pending = -1
        with nogil:
            rc = step_one(&self.st.engine.m, &self.st.s, tok)
        if rc:
            self._finish(DEC_CANCELLED)
        if self.status == DEC_NOMEM:
            raise MemoryError("out of memory while decoding")
        return self.text.take(), FINISH_REASONS.get(self.status)

    def finish(self):
        """End the generation now, with finish reason "stop" (a held token stays generated and
        unevaluated, as a token that completes a stop string). Returns (text, "stop")."""
        if self.status == DEC_RUNNING:
            self.pending = -1
            self._finish(DEC_DONE)
        if self.status == DEC_NOMEM:
            raise MemoryError("out of memory while decoding")
        return self.text.take(), FINISH_REASONS.get(self.status)

    def generated(self):
        return np.asarray(self.gen[:self.n_gen]).tolist()

    def logprobs(self):
        cdef int k = self.sampler.S.p.n_probs
        if k == 0:
            return None
        ids = np.asarray(self.top_ids[:self.n_gen, :k]).tolist()
        lps = np.asarray(self.top_lp[:self.n_gen, :k]).tolist()
        return [list(zip(i, lp)) for i, lp in zip(ids, lps)]

    def token_logprobs(self):
        """The log-probability of each generated token (before the sampling filters), or
        None unless n_probs > 0."""
        if self.sampler.S.p.n_probs == 0:
            return None
        return np.asarray(self.tok_lp[:self.n_gen]).tolist()
