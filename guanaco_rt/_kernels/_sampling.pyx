# cython: language_level=3
"""The sampling chain in C, so the decode loop can run without the GIL.

llama.cpp's 2023 order and semantics: logit bias -> repetition penalty over the
last repeat_last_n tokens (positive logits divided, negative multiplied) ->
frequency and presence penalties -> DRY (today's llama.cpp's "don't repeat
yourself" penalty, see dry_penalty) -> greedy if temperature <= 0, else top-k ->
typical-p -> top-p -> min-p -> temperature -> one draw. Every step works in
float64 on candidates kept sorted best first (ties: lower id first, as a stable
sort). The draw takes one double from the session's NumPy PCG64 through its
C interface (bitgen_t), exactly as Generator.choice(p=...) would: cdf, divide
by its last entry, first index whose cdf exceeds the uniform.
tests/reference.py holds the same chain in NumPy; the two are tested equal.
"""
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport realloc, free
from libc.string cimport memcpy, memset
from libc.math cimport exp, log, pow, fabs, isfinite, INFINITY
from cpython.pycapsule cimport PyCapsule_GetPointer

import numpy as np

# ---- ordering ---------------------------------------------------------------------
cdef inline bint _better(const double* v, int32_t a, int32_t b) noexcept nogil:
    # the total order of a stable descending sort: larger value first, then lower index
    return v[a] > v[b] or (v[a] == v[b] and a < b)

cdef void _sift_down(const double* v, int32_t* h, int n, int i) noexcept nogil:
    # h is a heap whose root is the WORST kept index
    cdef int l, w
    cdef int32_t tmp
    while True:
        l = 2 * i + 1
        w = i
        if l < n and _better(v, h[w], h[l]):
            w = l
        if l + 1 < n and _better(v, h[w], h[l + 1]):
            w = l + 1
        if w == i:
            return
        tmp = h[i]
        h[i] = h[w]
        h[w] = tmp
        i = w

cdef int top_heap(int32_t* out, const double* v, int n, int k) noexcept nogil:
    # v (n,) -> out (k,): the indices of the k best values, best first, as the first k
    # of a stable descending argsort; O(n log k) through a k-heap. Returns k (<= n).
    cdef int i, e
    cdef int32_t tmp
    if k > n:
        k = n
    for i in range(k):
        out[i] = i
    for i in range(k // 2 - 1, -1, -1):
        _sift_down(v, out, k, i)
    for i in range(k, n):
        if _better(v, i, out[0]):
            out[0] = i
            _sift_down(v, out, k, 0)
    for e in range(k - 1, 0, -1):      # heap sort: the worst goes to the end
        tmp = out[0]
        out[0] = out[e]
        out[e] = tmp
        _sift_down(v, out, e, 0)
    return k

cdef inline uint64_t _desc_key(double d) noexcept nogil:
    # a uint64 whose ascending order is d's descending order (-0.0 ties with 0.0)
    cdef uint64_t u
    d += 0.0
    memcpy(&u, &d, 8)
    u = (~u) if (u >> 63) else (u | (<uint64_t>1 << 63))
    return ~u

cdef int32_t* radix_desc(const double* v, int n, uint64_t* key, int32_t* idx) noexcept nogil:
    # v (n,) -> a stable descending argsort (ties keep index order) by LSD radix on 8-bit
    # digits, skipping digits every key shares. key (2n,) and idx (2n,) are scratch; the
    # result is idx or idx + n, returned.
    cdef uint64_t* ka = key
    cdef uint64_t* kb = key + n
    cdef uint64_t* kt
    cdef int32_t* ia = idx
    cdef int32_t* ib = idx + n
    cdef int32_t* it
    cdef int64_t count[256]
    cdef int64_t pos, c
    cdef int i, shift, d
    for i in range(n):
        ka[i] = _desc_key(v[i])
        ia[i] = i
    for shift in range(0, 64, 8):
        memset(count, 0, sizeof(count))
        for i in range(n):
            count[(ka[i] >> shift) & 255] += 1
        if count[(ka[0] >> shift) & 255] == n:
            continue                    # one digit value: this pass would not move anything
        pos = 0
        for d in range(256):
            c = count[d]
            count[d] = pos
            pos += c
        for i in range(n):
            d = (ka[i] >> shift) & 255
            kb[count[d]] = ka[i]
            ib[count[d]] = ia[i]
            count[d] += 1
        kt = ka
        ka = kb
        kb = kt
        it = ia
        ia = ib
        ib = it
    return ia

cdef int top_sorted(sampler_t* S, int32_t* out, const double* v, int n, int k) noexcept nogil:
    # the first k (<= n) of a stable descending argsort of v (n,) -> out; returns k.
    # A k-heap when k is small, else a full radix sort.
    if k > n:
        k = n
    if k <= 128 or <int64_t>k * 16 < n:
        return top_heap(out, v, n, k)
    memcpy(out, radix_desc(v, n, S.key, S.tmp), k * sizeof(int32_t))
    return k

cdef double _log_sum_exp(const double* c, int n, double m) noexcept nogil:
    # log(sum(exp(c - m))), m = max(c)
    cdef double s = 0.0
    cdef int i
    for i in range(n):
        s += exp(c[i] - m)
    return log(s)

cdef double _max(const double* c, int n) noexcept nogil:
    cdef double m = c[0]
    cdef int i
    for i in range(1, n):
        if c[i] > m:
            m = c[i]
    return m

cdef void _softmax(double* pr, const double* c, int n) noexcept nogil:
    # c (n,) -> pr (n,) = exp(log_softmax(c))
    cdef double m = _max(c, n)
    cdef double lse = _log_sum_exp(c, n, m)
    cdef int i
    for i in range(n):
        pr[i] = exp(c[i] - m - lse)

cdef int _compact(sampler_t* S, int n, const double* keep) noexcept nogil:
    # keep candidates i with keep[i] != 0, in order
    cdef int i, j = 0
    for i in range(n):
        if keep[i] != 0:
            S.ids[j] = S.ids[i]
            S.c[j] = S.c[i]
            j += 1
    return j


# ---- the chain ------------------------------------------------------------------------
cdef void penalize(sampler_t* S, const float* logits, const int32_t* hist, int n_hist) noexcept nogil:
    # logits (n_vocab,), hist (n_hist,) the tokens so far -> S.x (n_vocab,)
    cdef const sparams_t* p = &S.p
    cdef double* x = S.x
    cdef int i, start, c
    cdef uint32_t w
    if p.allowed == NULL:
        for i in range(S.n_vocab):
            x[i] = logits[i]
    else:                           # a constraint's mask: the tokens it does not allow are banned
        for start in range(0, S.n_vocab, 32):
            w = p.allowed[start >> 5]
            c = min(start + 32, S.n_vocab)
            if w == 0xFFFFFFFFu:
                for i in range(start, c):
                    x[i] = logits[i]
            elif w == 0:
                for i in range(start, c):
                    x[i] = -INFINITY
            else:
                for i in range(start, c):
                    x[i] = logits[i] if (w >> (i - start)) & 1 else -INFINITY
    for i in range(p.n_bias):
        x[p.bias_ids[i]] += p.bias_vals[i]
    if p.repeat_last_n > 0 and n_hist > 0 and (
            p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0):
        repeat_penalties(S, hist, n_hist)
    if p.dry_multiplier != 0.0 and p.dry_base >= 1.0 and p.dry_last_n != 0:
        dry_penalty(S, hist, n_hist)

cdef void repeat_penalties(sampler_t* S, const int32_t* hist, int n_hist) noexcept nogil:
    # S.x (n_vocab,) # IN/OUT: the repetition, frequency and presence penalties over the
    # last repeat_last_n tokens of hist (n_hist,)
    cdef const sparams_t* p = &S.p
    cdef double* x = S.x
    cdef int i, start, c
    cdef int32_t t
    cdef double v
    start = n_hist - p.repeat_last_n if n_hist > p.repeat_last_n else 0
    for i in range(start, n_hist):
        S.cnt[hist[i]] += 1
    for i in range(start, n_hist):
        t = hist[i]
        c = S.cnt[t]
        if c == 0:                  # this id was already penalized
            continue
        S.cnt[t] = 0
        if p.repetition_penalty != 1.0:
            v = x[t]
            x[t] = v * p.repetition_penalty if v <= 0 else v / p.repetition_penalty
        x[t] -= c * p.frequency_penalty + p.presence_penalty

# ln(FLT_MAX): llama.cpp caps DRY's exponent so that dry_base^exponent stays a finite float
cdef double DRY_MAX_LOG = 88.7228391

cdef void dry_penalty(sampler_t* S, const int32_t* hist, int n_hist) noexcept nogil:
    # S.x (n_vocab,) # IN/OUT: the DRY ("don't repeat yourself") penalty of the window w, the
    # last dry_last_n tokens of hist (n_hist,). If the window ends with a sequence of n tokens
    # that also occurred earlier, the token that followed that earlier copy would make the
    # repeat n + 1 long; when n >= dry_allowed_length it loses
    #     dry_multiplier * dry_base ** (n - dry_allowed_length)
    # (n the longest such repeat for that token; the exponent capped so the power stays a
    # finite float32). Repeats do not reach back past the last sequence breaker, and a
    # breaker is never penalized. The suffix matches come from one Z-function pass over
    # the reversed window: O(window).
    cdef const sparams_t* p = &S.p
    cdef int n = n_hist if p.dry_last_n < 0 else min(p.dry_last_n, n_hist)
    cdef int allowed = p.dry_allowed_length, lim, k, zk, l, r, m, e, max_exp
    cdef const int32_t* w = hist + n_hist - n           # the window, oldest first
    cdef int32_t* z
    cdef int32_t t
    if n <= allowed or n < 2:
        return
    lim = n                         # how far back a repeat may reach: to the last breaker
    for k in range(n):
        if p.dry_breaker[w[n - 1 - k]]:
            lim = k
            break
    if lim < allowed:
        return
    if n > S.z_cap:
        z = <int32_t*>realloc(S.z, n * sizeof(int32_t))
        if z == NULL:
            return                  # out of memory: no DRY this step rather than a crash
        S.z = z
        S.z_cap = n
    z = S.z
    # z[k]: how many tokens the reversed window and the reversed window shifted by k share
    # from their start = the length of the repeat of the window's tail that ends at w[n-1-k].
    # [l, r) is the rightmost stretch already known to match the start (the Z-box).
    z[0] = n
    l = r = 0
    for k in range(1, n):
        zk = min(r - k, z[k - l]) if k < r else 0
        while k + zk < n and w[n - 1 - zk] == w[n - 1 - k - zk]:
            zk += 1
        z[k] = zk
        if k + zk > r:
            l = k
            r = k + zk
    # the token after each earlier copy, w[n-k], would extend a repeat of min(z[k], lim)
    for k in range(1, n):
        m = min(z[k], lim)
        if m >= allowed and S.dmax[w[n - k]] < m + 1:
            S.dmax[w[n - k]] = m + 1
    max_exp = <int>(DRY_MAX_LOG / log(p.dry_base)) if p.dry_base > 1.000001 else 0
    for k in range(1, n):
        t = w[n - k]
        if S.dmax[t] == 0:
            continue
        e = S.dmax[t] - 1 - allowed
        S.dmax[t] = 0                # back to all zero; a token seen twice is penalized once
        if p.dry_breaker[t]:
            continue
        if max_exp > 0 and e > max_exp:
            e = max_exp
        S.x[t] -= p.dry_multiplier * pow(p.dry_base, e)

cdef int top_logprobs(sampler_t* S, int32_t* top_ids, double* top_lp) noexcept nogil:
    # S.x -> the n_probs most likely ids and their log-probabilities, before any filter
    cdef int n = S.n_vocab, i, k
    cdef double m = _max(S.x, n)
    cdef double lse = _log_sum_exp(S.x, n, m)
    S.lp_norm = m + lse
    for i in range(n):
        S.pr[i] = S.x[i] - S.lp_norm
    k = top_sorted(S, top_ids, S.pr, n, S.p.n_probs)
    for i in range(k):
        top_lp[i] = S.pr[top_ids[i]]
    return k

cdef int32_t sample_token(sampler_t* S, const float* logits, const int32_t* hist, int n_hist,
                          int32_t* top_ids, double* top_lp) noexcept nogil:
    # logits (n_vocab,) after hist (n_hist,) -> the next token, or -1 when every token is
    # banned (-inf); top_ids/top_lp (n_probs,) # OUT
    cdef const sparams_t* p = &S.p
    cdef int n = S.n_vocab, nc, i, keep, best
    cdef double m, lse, ent, cum, thr, u, total
    penalize(S, logits, hist, n_hist)
    if p.n_probs > 0:
        top_logprobs(S, top_ids, top_lp)
    if p.temperature <= 0:
        best = 0
        for i in range(1, n):
            if S.x[i] > S.x[best]:
                best = i
        return best if isfinite(S.x[best]) else -1      # -1: every token is banned
    nc = top_sorted(S, S.ids, S.x, n, p.top_k if p.top_k > 0 else n)
    for i in range(nc):
        S.c[i] = S.x[S.ids[i]]
        S.sh[i] = isfinite(S.c[i])
    nc = _compact(S, nc, S.sh)          # banned (-inf) candidates leave
    if nc == 0:
        return -1
    if p.typical_p < 1.0 and nc > 1:
        # keep the most typical candidates (surprise closest to the entropy) until their
        # mass reaches typical_p, then restore the logit order
        m = S.c[0]
        lse = _log_sum_exp(S.c, nc, m)
        ent = 0.0
        for i in range(nc):
            S.pr[i] = exp(S.c[i] - m - lse)
            ent -= S.pr[i] * (S.c[i] - m - lse)
        for i in range(nc):
            S.sh[i] = -fabs(-(S.c[i] - m - lse) - ent)
        top_sorted(S, S.perm, S.sh, nc, nc)
        cum = 0.0
        keep = nc
        for i in range(nc):
            cum += S.pr[S.perm[i]]
            if cum >= p.typical_p:
                keep = i + 1
                break
        for i in range(nc):
            S.sh[i] = 0.0
        for i in range(keep):
            S.sh[S.perm[i]] = 1.0
        nc = _compact(S, nc, S.sh)
    if p.top_p < 1.0 and nc > 1:
        _softmax(S.pr, S.c, nc)
        cum = 0.0
        for i in range(nc):
            cum += S.pr[i]
            if cum >= p.top_p:
                nc = i + 1
                break
    if p.min_p > 0 and nc > 1:
        _softmax(S.pr, S.c, nc)
        thr = p.min_p * S.pr[0]
        for i in range(nc):
            S.sh[i] = S.pr[i] >= thr
        nc = _compact(S, nc, S.sh)
    if not (isfinite(S.c[0] / p.temperature) and isfinite(S.c[nc - 1] / p.temperature)):
        return S.ids[0]                 # a temperature so small the logits overflow: the limit, greedy
    for i in range(nc):
        S.sh[i] = S.c[i] / p.temperature
    _softmax(S.pr, S.sh, nc)
    total = 0.0
    for i in range(nc):
        total += S.pr[i]
    cum = 0.0
    for i in range(nc):
        cum += S.pr[i] / total
        S.pr[i] = cum
    u = S.rng.next_double(S.rng.state)
    for i in range(nc):
        if S.pr[i] / S.pr[nc - 1] > u:
            return S.ids[i]
    return S.ids[nc - 1]


# ---- the Python-facing sampler ----------------------------------------------------
cdef class SamplerCore:
    """The chain's buffers and settings for one vocabulary, drawing from ``bit_generator``
    (a NumPy BitGenerator the caller owns; its state is the sampler's state)."""

    def __cinit__(self, int n_vocab, object bit_generator, double temperature, int top_k, double top_p,
                  double min_p, double typical_p, double repetition_penalty, int repeat_last_n,
                  double frequency_penalty, double presence_penalty, dict logit_bias, int n_probs,
                  double dry_multiplier=0.0, double dry_base=1.75, int dry_allowed_length=2, int dry_last_n=-1,
                  dry_breakers=()):
        if n_vocab < 1:
            raise ValueError(f"n_vocab must be >= 1, got {n_vocab}")
        self.bitgen = bit_generator
        self.S.rng = <bitgen_t*>PyCapsule_GetPointer(bit_generator.capsule, "BitGenerator")
        self.S.n_vocab = n_vocab
        keys = sorted(logit_bias, key=int)
        ids = np.array([int(t) for t in keys], dtype=np.int32)
        vals = np.array([float(logit_bias[t]) for t in keys], dtype=np.float64)
        if ids.size and (ids.min() < 0 or ids.max() >= n_vocab):
            bad = int(ids.min() if ids.min() < 0 else ids.max())
            raise ValueError(f"logit_bias token id {bad} outside [0, {n_vocab})")
        if np.isnan(vals).any() or np.isposinf(vals).any():
            raise ValueError("logit_bias values must be finite or -inf (to ban a token)")
        self.bias_ids = ids if ids.size else np.zeros(1, np.int32)
        self.bias_vals = vals if vals.size else np.zeros(1, np.float64)
        self.S.p.temperature = temperature
        self.S.p.top_k = top_k
        self.S.p.top_p = top_p
        self.S.p.min_p = min_p
        self.S.p.typical_p = typical_p
        self.S.p.repetition_penalty = repetition_penalty
        self.S.p.repeat_last_n = repeat_last_n
        self.S.p.frequency_penalty = frequency_penalty
        self.S.p.presence_penalty = presence_penalty
        self.S.p.n_bias = ids.size
        self.S.p.bias_ids = &self.bias_ids[0]
        self.S.p.bias_vals = &self.bias_vals[0]
        self.S.p.n_probs = min(n_probs, n_vocab)
        # DRY: dry_breakers are the ids of the sequence-breaker tokens
        self.S.p.dry_multiplier = dry_multiplier
        self.S.p.dry_base = dry_base
        self.S.p.dry_allowed_length = dry_allowed_length
        self.S.p.dry_last_n = dry_last_n
        brk = np.asarray(list(dry_breakers), dtype=np.int64)
        if brk.size and (brk.min() < 0 or brk.max() >= n_vocab):
            raise ValueError(f"DRY sequence-breaker token id {int(brk.min() if brk.min() < 0 else brk.max())} "
                             f"outside [0, {n_vocab})")
        flags = np.zeros(n_vocab, np.uint8)
        flags[brk] = 1
        self.dry_breaker = flags
        self.S.p.dry_breaker = &self.dry_breaker[0]
        self.dmax = np.zeros(n_vocab, np.int32)
        self.S.dmax = &self.dmax[0]
        self.x, self.c, self.pr, self.sh = [np.zeros(n_vocab, np.float64) for _ in range(4)]
        self.ids, self.perm, self.cnt = [np.zeros(n_vocab, np.int32) for _ in range(3)]
        self.tmp = np.zeros(2 * n_vocab, np.int32)
        self.key = np.zeros(2 * n_vocab, np.uint64)
        self.S.x, self.S.c, self.S.pr, self.S.sh = &self.x[0], &self.c[0], &self.pr[0], &self.sh[0]
        self.S.ids, self.S.perm, self.S.cnt = &self.ids[0], &self.perm[0], &self.cnt[0]
        self.S.tmp = &self.tmp[0]
        self.S.key = &self.key[0]

    def __dealloc__(self):
        free(self.S.z)

    @property
    def n_probs(self):
        return self.S.p.n_probs

    def set_mask(self, mask):
        """Constrain the chain from the next token on: ``mask`` is a C-contiguous int32 or
        uint32 array of ``(n_vocab + 31) // 32`` words, token i allowed when bit i % 32 of word
        i // 32 is set (llguidance's bitmask layout); None lifts the constraint. The array is
        read at each draw, not copied: whoever fills it must not do so during one."""
        cdef uint32_t[::1] words
        if mask is None:
            self.S.p.allowed = NULL
            self.mask = None
            return
        arr = np.asarray(mask)
        if arr.dtype not in (np.int32, np.uint32) or arr.ndim != 1 or arr.shape[0] != (self.S.n_vocab + 31) // 32:
            raise ValueError(f"mask must be a 1-D int32/uint32 array of {(self.S.n_vocab + 31) // 32} words, "
                             f"got {arr.dtype} {arr.shape}")
        words = arr.view(np.uint32)
        self.mask = arr
        self.S.p.allowed = &words[0]

    @property
    def n_vocab(self):
        return self.S.n_vocab

    cdef _check(self, const float[::1] logits, const int32_t[::1] hist):
        if logits.shape[0] != self.S.n_vocab:
            raise ValueError(f"logits have {logits.shape[0]} entries, the vocab {self.S.n_vocab}")
        h = np.asarray(hist)
        if h.size and (h.min() < 0 or h.max() >= self.S.n_vocab):
            raise ValueError(f"history holds token ids outside [0, {self.S.n_vocab})")

    # thin Python twins of penalize() and sample_token(), for tests
    def penalize(self, const float[::1] logits, const int32_t[::1] hist):
        """float32 (n_vocab,) logits after ``hist`` -> float64 (n_vocab,) with bias and penalties."""
        self._check(logits, hist)
        with nogil:
            penalize(&self.S, &logits[0], &hist[0] if hist.shape[0] else NULL, hist.shape[0])
        return np.array(self.x)

    def sample(self, const float[::1] logits, const int32_t[::1] hist):
        """-> (token id, [(id, logprob)] of the top n_probs, or None)"""
        self._check(logits, hist)
        cdef int k = max(1, self.S.p.n_probs)
        cdef int32_t[::1] ti = np.zeros(k, np.int32)
        cdef double[::1] tl = np.zeros(k, np.float64)
        cdef int32_t tok
        with nogil:
            tok = sample_token(&self.S, &logits[0], &hist[0] if hist.shape[0] else NULL, hist.shape[0],
                               &ti[0], &tl[0])
        top = None
        if self.S.p.n_probs:
            top = [(int(ti[i]), float(tl[i])) for i in range(self.S.p.n_probs)]
        return int(tok), top
