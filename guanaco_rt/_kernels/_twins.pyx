# cython: language_level=3
"""Thin Python-callable twins of the engine's nogil kernels, for tests and benchmarks:
each checks its arguments, then runs the kernel the forward pass runs."""
from libc.stdint cimport uint8_t, int32_t, int64_t

import numpy as np

from guanaco_rt.errors import InvalidRequestError

from guanaco_rt._kernels._engine cimport KernelSet, tensor_t, quantize_rows, matmul_q, repack_r8, r8_parts, embed_rows
from guanaco_rt._kernels._ops cimport rmsnorm, rope, rope_freqs, softmax, silu_mul, attention, attention_threads
from guanaco_rt._kernels._governor cimport (gov_t, gov_last_t, gov_init, gov_next, gov_record, gov_threads,
                                            gov_probe_judge, gov_pick, gov_try_check, team_run_wait,
                                            load_gov_t, load_reset, load_next, load_record, load_busy, monotonic,
                                            pass_gov_t, pass_gov_init, pass_judge, cpu_seconds)
from libc.string cimport memset
from libc.math cimport sqrtf
from guanaco_rt._kernels._quants cimport type_traits_t, type_traits, row_size
from guanaco_rt._kernels.ggml_blocks cimport GGML_TYPE_Q8_1


cdef const type_traits_t* weight_traits(int t) except NULL:
    cdef const type_traits_t* tt = type_traits(t)
    if tt == NULL or tt.to_float == NULL or t == 9 or t == 15:   # Q8_1, Q8_K: activation formats only
        raise ValueError(f"type {t} is not a weight format")
    return tt


def vec_dot(KernelSet K, int t, const uint8_t[::1] w, const uint8_t[::1] yq, int n):
    """<w, y> for n weights of type t and an activation already in its vec_dot_type"""
    cdef const type_traits_t* tt = weight_traits(t)
    cdef const type_traits_t* vt = type_traits(tt.vec_dot_type)
    if n < 0 or n % tt.blck_size or n % vt.blck_size:
        raise ValueError(f"{n} elements is not a multiple of the block size")
    if w.shape[0] < row_size(tt, n) or yq.shape[0] < row_size(vt, n):
        raise ValueError("buffers too short for n elements")
    cdef float s = 0.0
    if n:
        with nogil:
            K.k.types[t].vec_dot(n, &s, &w[0], &yq[0])
    return s


def matmul_twin(KernelSet K, int t, const uint8_t[::1] w, int64_t ne0, int64_t ne1, const float[:, ::1] x,
                int n_threads=1, bint interleave=False, bint interleaved=False):
    """W (ne1 rows of ne0, type t) @ x (n_tok, ne0)^T -> (n_tok, ne1), activations quantized as the engine does.
    ``interleave``: W's rows interleaved 8 at a time first, as the engine does at load (the
    kernel set must have 8-row kernels for t, and ne1 be at least 8: the last ne1 % 8 rows stay
    as they are and run on the one-row kernels); ``interleaved``: w
    already is (repack_twin's output), for timing the kernels alone"""
    cdef const type_traits_t* tt = weight_traits(t)
    cdef const type_traits_t* vt = type_traits(tt.vec_dot_type)
    if x.shape[1] != ne0:
        raise ValueError(f"x has rows of {x.shape[1]}, W of {ne0}")
    if ne0 < 1 or ne1 < 1 or ne0 % tt.blck_size or ne0 % vt.blck_size:
        raise ValueError("row length is not a multiple of the block size")
    if w.shape[0] < row_size(tt, ne0) * ne1:
        raise ValueError(f"{w.shape[0]} bytes < {row_size(tt, ne0) * ne1} needed")
    cdef int n_tok = x.shape[0]
    cdef int64_t qs = act_stride(tt.vec_dot_type, vt, ne0)
    out = np.zeros((n_tok, ne1), dtype=np.float32)
    act = np.zeros(max(1, n_tok * qs), dtype=np.uint8)
    cdef float[:, ::1] o = out
    cdef uint8_t[::1] a = act
    cdef tensor_t W
    cdef const tensor_t* wp = &W
    cdef float* op
    cdef uint8_t[::1] pk
    W.data = &w[0]
    W.tt = tt
    W.type = t
    W.ne0 = ne0
    W.ne1 = ne1
    W.nb1 = row_size(tt, ne0)
    W.r8 = 0
    if interleave or interleaved:
        if K.k.types[t].dot_r8 == NULL or ne1 < 8:
            raise ValueError(f"no 8-row kernels for type {t} in {K.isa}, or {ne1} rows < 8")
        if not interleaved:
            packed = np.empty(W.nb1 * ne1, np.uint8)
            pk = packed
            repack_r8(&pk[0], W.data, t, ne0 // tt.blck_size, W.nb1, ne1, 1)
            W.data = &pk[0]
        W.r8 = 1
    if n_tok:
        with nogil:
            quantize_rows(&K.k, &a[0], qs, &x[0, 0], ne0, n_tok, tt.vec_dot_type, max(1, n_threads))
            op = &o[0, 0]
            matmul_q(&K.k, &op, &wp, 1, &a[0], qs, n_tok, max(1, n_threads), False)
    return out


def repack_twin(int t, const uint8_t[::1] w, int64_t ne0, int64_t ne1, int n_threads=1):
    """W (ne1 >= 8 rows of ne0, of a type with an interleaved layout) with each whole 8 rows interleaved and
    the last ne1 % 8 as they are, as the engine does at load"""
    cdef const type_traits_t* tt = weight_traits(t)
    cdef int size[5]
    cdef int step[5]
    if (r8_parts(t, size, step) == 0 or ne1 < 8 or ne0 < 1 or ne0 % tt.blck_size
            or w.shape[0] != row_size(tt, ne0) * ne1):
        raise ValueError(f"type {t}, shape ({ne0}, {ne1}), {w.shape[0]} bytes: not an interleavable tensor")
    out = np.empty(w.shape[0], np.uint8)
    cdef uint8_t[::1] o = out
    with nogil:
        repack_r8(&o[0], &w[0], t, ne0 // tt.blck_size, row_size(tt, ne0), ne1, max(1, n_threads))
    return out


def embedding_twin(int t, const uint8_t[::1] w, int64_t ne0, int64_t ne1, const int32_t[::1] rows,
                   bint interleave=False):
    """The rows ``rows`` of W (ne1 rows of ne0, type t, as the file has them), dequantized by the
    engine's token lookup (embed_rows) -> (len(rows), ne0) float32. ``interleave``: from W's
    interleaved copy (repack_r8, as a tied output's embeddings are at load)"""
    cdef const type_traits_t* tt = weight_traits(t)
    cdef int size[5]
    cdef int step[5]
    cdef int i
    cdef tensor_t W
    if ne0 < 1 or ne1 < 1 or ne0 % tt.blck_size or w.shape[0] != row_size(tt, ne0) * ne1:
        raise ValueError(f"type {t}, shape ({ne0}, {ne1}), {w.shape[0]} bytes: not a matrix of that shape")
    if interleave and (r8_parts(t, size, step) == 0 or ne1 < 8):
        raise ValueError(f"type {t}, {ne1} rows: not an interleavable tensor")
    for i in range(rows.shape[0]):
        if not 0 <= rows[i] < ne1:
            raise ValueError(f"row {rows[i]} outside [0, {ne1})")
    W.tt = tt
    W.type = t
    W.ne0 = ne0
    W.ne1 = ne1
    W.nb1 = row_size(tt, ne0)
    W.data = &w[0]
    W.r8 = 0
    cdef uint8_t[::1] pk
    if interleave:
        pk = np.empty(w.shape[0], np.uint8)
        repack_r8(&pk[0], &w[0], t, ne0 // tt.blck_size, W.nb1, ne1, 1)
        W.data = &pk[0]
        W.r8 = 1
    out = np.zeros((rows.shape[0], ne0), np.float32)
    cdef float[:, ::1] o = out
    cdef uint8_t[::1] scratch = np.zeros(W.nb1, np.uint8)
    if rows.shape[0]:
        with nogil:
            embed_rows(&o[0, 0], &W, &rows[0], rows.shape[0], &scratch[0])
    return out


def quantize_twin(KernelSet K, int vt, const float[:, ::1] x, int n_threads=1):
    """x (n_tok, n) -> n_tok rows of activation format vt, by K's quantizer (the engine's path)"""
    cdef const type_traits_t* tt = type_traits(vt)
    if tt == NULL or tt.from_float == NULL:
        raise ValueError(f"type {vt} is not an activation format")
    if x.shape[1] < 1 or x.shape[1] % tt.blck_size:
        raise ValueError(f"row length {x.shape[1]} is not a multiple of {tt.blck_size}")
    cdef int64_t qs = act_stride(vt, tt, x.shape[1])
    out = np.zeros((x.shape[0], qs), dtype=np.uint8)
    cdef uint8_t[:, ::1] o = out
    if x.shape[0]:
        with nogil:
            quantize_rows(&K.k, &o[0, 0], qs, &x[0, 0], x.shape[1], x.shape[0], vt, max(1, n_threads))
    return np.ascontiguousarray(out[:, :row_size(tt, x.shape[1])])


cdef int64_t act_stride(int vt, const type_traits_t* tt, int64_t n):
    # bytes per activation row: q8_1 rows keep room for a group's packed scales (pack_q8_1_x4)
    return row_size(tt, n) + (n if vt == GGML_TYPE_Q8_1 else 0)


def rmsnorm_twin(const float[::1] x, const float[::1] w, float eps):
    if x.shape[0] != w.shape[0] or x.shape[0] == 0:
        raise ValueError("x and w must have the same non-zero length")
    out = np.empty(x.shape[0], dtype=np.float32)
    cdef float[::1] o = out
    rmsnorm(&o[0], &x[0], &w[0], x.shape[0], eps)
    return out


def rope_twin(float[:, ::1] x, int n_head, int n_rot, int n_past, double base=10000.0, bint neox=False):
    """in place on x (n_tok, n_embd); token t sits at position n_past + t; neox: rotate halves"""
    if n_head < 1 or x.shape[1] % n_head or n_rot < 0 or n_rot > x.shape[1] // n_head or n_rot % 2:
        raise ValueError("bad rope shape")
    cdef int hd = x.shape[1] // n_head
    cdef double[::1] f = np.zeros(max(1, n_rot // 2), np.float64)
    rope_freqs(&f[0], n_rot, base)
    cdef int t
    for t in range(x.shape[0]):
        rope(&x[t, 0], n_head, hd, n_rot, &f[0], n_past + t, neox)


def softmax_twin(float[::1] x):
    if x.shape[0]:
        softmax(&x[0], x.shape[0])


def silu_mul_twin(float[::1] a, const float[::1] b):
    if a.shape[0] != b.shape[0]:
        raise ValueError("length mismatch")
    if a.shape[0]:
        silu_mul(&a[0], &b[0], a.shape[0])


def attention_twin(KernelSet K, const float[:, ::1] q, k_cache, v_cache, int n_past, int n_head, int n_threads=1,
                   n_head_kv=None, int n_swa=0):
    """q (n_tok, n_embd); k_cache, v_cache (n_ctx, n_embd_kv) float32 or float16, filled up
    to n_past + n_tok -> (n_tok, n_embd); n_swa > 0: each query sees the last n_swa positions"""
    cdef int n_tok = q.shape[0]
    cdef int E = q.shape[1]
    cdef int hkv = n_head if n_head_kv is None else n_head_kv
    if n_head < 1 or hkv < 1 or E % n_head or n_head % hkv or n_tok < 1 or n_past < 0:
        raise ValueError("bad attention shapes")
    cdef int n_ctx = k_cache.shape[0]
    cdef int Ekv = E // n_head * hkv
    if k_cache.shape != (n_ctx, Ekv) or v_cache.shape != (n_ctx, Ekv) or n_past + n_tok > n_ctx:
        raise ValueError("bad attention shapes")
    if k_cache.dtype != v_cache.dtype or k_cache.dtype not in (np.float16, np.float32):
        raise ValueError("caches must both be float32 or float16")
    cdef int f16 = k_cache.dtype == np.float16
    cdef const uint8_t[::1] kc = np.ascontiguousarray(k_cache).reshape(-1).view(np.uint8)
    cdef const uint8_t[::1] vc = np.ascontiguousarray(v_cache).reshape(-1).view(np.uint8)
    out = np.zeros((n_tok, E), dtype=np.float32)
    cdef float[:, ::1] o = out
    cdef float[:, ::1] a = np.zeros((n_head, n_ctx), dtype=np.float32)
    with nogil:
        attention(&K.k, &o[0, 0], &q[0, 0], &kc[0], &vc[0], &a[0, 0], n_tok, n_past, n_head, hkv, E // n_head,
                  n_ctx, f16, max(1, n_threads), 1.0 / sqrtf(<float>(E // n_head)), n_swa)
    return out


def governor_twin(int n_threads, timings, probe=None):
    """The thread governor fed with made-up timings: for each (s on one thread, s on
    n_threads) pair, the threads it runs that token on. -> (threads per token, setting of
    the prompt batches after each token). probe: (s the team waited on run queues, s of
    work), judged first, as a prompt's look for a busy core is."""
    cdef gov_t g
    cdef int use
    cdef double dt
    memset(&g, 0, sizeof(gov_t))
    gov_init(&g, NULL, n_threads, 1)
    if probe is not None:
        gov_probe_judge(&g, g.n, probe[0], probe[1])
    used, prompt = [], []
    for one, multi in timings:
        use = gov_next(&g)
        dt = one if use == 1 else multi
        gov_record(&g, use, dt)
        used.append(use)
        prompt.append(gov_threads(&g))
    return used, prompt


def gov_pick_twin(bint one, double t_one, double t_multi):
    """The governor's choice after a measurement: True for one thread, given the current
    setting and the seconds per unit of work on one thread and on n threads (0: unknown)."""
    return bool(gov_pick(one, t_one, t_multi))


def governor_calls_twin(int n_threads, calls, bint load_found_busy=False, double age=0.0):
    """Successive calls, each on a new State of one Engine (sharing its record of the last
    best setting), fed with made-up timings as governor_twin. calls: a list of calls, each
    a list of (s on one thread, s on n_threads) per decoded token. load_found_busy: the
    load's interleaving found a core busy (load_busy). age: seconds that pass between
    calls (the record's age when the next one starts). -> per call (threads its prompt
    starts on, threads per token)."""
    cdef gov_last_t last
    cdef gov_t g
    cdef int use
    memset(&last, 0, sizeof(gov_last_t))
    if load_found_busy:
        last.known = 1
        last.one = 1
        last.at = monotonic() - age
    out = []
    for timings in calls:
        if out:
            last.at -= age
        memset(&g, 0, sizeof(gov_t))
        gov_init(&g, &last, n_threads, 1)
        prompt = gov_threads(&g)
        used = []
        for one, multi in timings:
            use = gov_next(&g)
            gov_record(&g, use, one if use == 1 else multi)
            used.append(use)
        out.append((prompt, used))
    return out


def gov_try_twin(int n_threads, bint one, double t_one, double t_multi, int n_layer, layer_times):
    """A try of the other setting, abandoned once behind the current one's pace: the governor
    on n_threads, on one thread (one) or on n_threads, with seconds per token t_one and
    t_multi on each, starts a token that tries the other setting; layer_times[i] is the
    seconds since the token's start when layer i + 1 ends. -> (threads the token starts on,
    threads after each layer, seconds per token the governor then records for the try, its
    setting afterwards: True for one thread)."""
    cdef gov_t g
    cdef int nth, l = 0
    if n_threads < 2 or n_layer < 1 or t_one <= 0 or t_multi <= 0 or len(layer_times) > n_layer:
        raise InvalidRequestError(f"a try needs n_threads >= 2 ({n_threads}), n_layer >= 1 ({n_layer}), paces > 0 "
                                  f"({t_one}, {t_multi}) and at most n_layer layer times ({len(layer_times)})")
    memset(&g, 0, sizeof(gov_t))
    gov_init(&g, NULL, n_threads, 1)
    g.one = one
    g.t_one = t_one
    g.t_multi = t_multi
    g.countdown = 0                       # the next token tries the other setting
    nth = gov_next(&g)
    start = nth
    # the state gov_token_start leaves, with the clock left out: the layer times stand in
    g.try_dt = 0
    g.try_pace = (t_one if one else t_multi) / n_layer
    g.try_keep = 1 if one else n_threads
    after = []
    el = 0.0
    for el in layer_times:
        l += 1
        if g.try_pace > 0:
            nth = gov_try_check(&g, nth, l, n_layer, el)
        after.append(nth)
    dt = g.try_dt if g.try_dt > 0 else el
    gov_record(&g, start, dt)
    return start, after, dt, bool(g.one)


def pass_governor_twin(int n_threads, int n_cpu, others):
    """A batcher's passes fed with made-up figures: others[i] = the CPUs other processes kept
    busy over window i, as /proc/stat less this process reads. -> (the threads the passes
    run on after each window, busy_core_found)."""
    cdef pass_gov_t pg
    pass_gov_init(&pg)
    used = []
    for o in others:
        if n_threads > 1:
            pass_judge(&pg, n_threads, n_cpu, o)
        used.append(1 if pg.one else n_threads)
    return used, pg.busy_found


def cpu_seconds_twin():
    """(the machine's busy CPU seconds, this process's), as the passes' governor reads them;
    None when /proc cannot be read."""
    cdef double busy = 0, ours = 0
    if cpu_seconds(&busy, &ours) != 0:
        return None
    return busy, ours


def attention_threads_twin(int n_threads, int n_head, int head_dim, int n_past, int n_tok):
    """The threads attention() runs on for n_tok queries after n_past positions, n_head heads of
    head_dim, given n_threads (1: the work is too small for a team)."""
    if n_threads < 1 or n_head < 1 or head_dim < 1 or n_past < 0 or n_tok < 1:
        raise InvalidRequestError(f"bad attention sizes: n_threads {n_threads}, n_head {n_head}, "
                                  f"head_dim {head_dim}, n_past {n_past}, n_tok {n_tok}")
    return attention_threads(n_threads, n_head, head_dim, n_past, n_tok)


def load_governor_twin(int n_threads, timings):
    """The load's interleaving threads fed with made-up timings: for each tensor, (s per
    byte on one thread, s per byte on n_threads). -> (threads per tensor, whether it
    reports a busy core to the Engine's States (load_busy))."""
    cdef load_gov_t lg
    cdef int use
    load_reset(&lg, n_threads)
    used = []
    for one, multi in timings:
        use = load_next(&lg)
        load_record(&lg, use, one if use == 1 else multi, 1.0)
        used.append(use)
    return used, bool(load_busy(&lg))


def team_run_wait_twin(int n_threads):
    """ns a team of n_threads OpenMP threads has waited on run queues, summed (-1: unreadable)"""
    with nogil:
        w = team_run_wait(max(1, n_threads))
    return w
