# The LLaMA forward pass over the type-traits table: matmul with prange over
# output rows, RMSNorm, RoPE (ggml mode 0), softmax, SiLU gate, causal attention
# over the KV cache. Everything here runs without the GIL and allocates nothing
# per token: the buffers live in state_t, sized once by State.
import numpy as np

cdef extern from "_platform.h":
    int gr_openmp_enabled() nogil
    int gr_omp_max_threads() nogil
    int gr_cpu_has_avx2() nogil

cdef struct tensor_t:
    const uint8_t* data   # (ne1 rows of nb1 bytes), in the read-only mmap
    int type
    int64_t ne0           # row length (input dim)
    int64_t ne1           # rows (output dim)
    int64_t nb1           # bytes per row

cdef struct layer_t:
    tensor_t wq, wk, wv, wo      # (n_embd rows of n_embd)
    tensor_t w1, w3              # (n_ff rows of n_embd)
    tensor_t w2                  # (n_embd rows of n_ff)
    const float* attention_norm  # (n_embd,)
    const float* ffn_norm        # (n_embd,)

cdef struct model_t:
    int n_vocab, n_embd, n_head, n_layer, n_rot, n_ff, head_dim
    float eps
    tensor_t tok_embeddings      # (n_vocab rows of n_embd)
    tensor_t output              # (n_vocab rows of n_embd)
    const float* norm            # (n_embd,)
    layer_t* layers              # (n_layer,)
    double* freqs                # (n_rot/2,) 10000^(-2i/n_rot)

cdef struct state_t:
    int n_ctx, n_batch, nth, kv_f16
    void* k_cache        # (n_layer, n_ctx, n_embd) f32 or f16
    void* v_cache        # (n_layer, n_ctx, n_embd) f32 or f16
    float* x             # (n_batch, n_embd) residual stream
    float* xb            # (n_batch, n_embd) normed block input, then attention output
    float* xb2           # (n_batch, n_embd) block output before the residual add
    float* q             # (n_batch, n_embd)
    float* k             # (n_batch, n_embd) new keys before they enter the cache
    float* v             # (n_batch, n_embd) new values
    float* att           # (n_head, n_ctx) attention scores, one row per head
    float* hb            # (n_batch, n_ff)
    float* hb2           # (n_batch, n_ff)
    uint8_t* act         # (n_batch, act_stride) quantized activations
    int64_t act_stride
    const float* act_src # what act holds: source buffer, type, rows, row length
    int act_type, act_ntok
    int64_t act_n
    int* cancel          # (1,) set from another thread to stop at the next layer

cdef enum:
    PARALLEL_MIN_WORK = 1 << 16   # weights x tokens below which a matmul runs on one thread

# ---- matmul --------------------------------------------------------------------
cdef void quantize_rows(uint8_t* out, int64_t out_stride, const float* x, int64_t n, int n_tok,
                        int vt, int nth) noexcept nogil:
    # x (n_tok, n) -> out (n_tok rows of out_stride bytes) in activation type vt. One token
    # stays on one thread: microseconds of work, less than what a fork/join can cost
    cdef int t
    cdef from_float_fn quant = FROM_FLOAT[vt]
    if n_tok > 1 and nth > 1:
        for t in prange(n_tok, schedule='static', num_threads=nth):
            quant(x + t * n, out + t * out_stride, n)
    else:
        for t in range(n_tok):
            quant(x + t * n, out + t * out_stride, n)

cdef void rows_q(float* out, int64_t out_stride, const tensor_t* W, int64_t lo, int64_t hi,
                 const uint8_t* xq, int64_t xq_stride, int n_tok) noexcept nogil:
    # rows lo..hi-1 of W (ne1, ne0) @ xq (n_tok, ne0)^T -> out (n_tok, ne1), rows of out
    # out_stride apart. Each weight row is read once and dotted with every token while in L1.
    cdef int64_t i
    cdef int t, t4
    cdef vec_dot_fn dot = VEC_DOT[W.type]
    cdef vec_dot_x4_fn dot4 = VEC_DOT_X4[W.type]
    cdef int n = <int>W.ne0
    cdef int n4 = (n_tok // 4) * 4 if dot4 != NULL else 0
    for i in range(lo, hi):
        for t4 in range(0, n4, 4):
            dot4(n, out + t4 * out_stride + i, out_stride, W.data + i * W.nb1, xq + t4 * xq_stride, xq_stride)
        for t in range(n4, n_tok):
            dot(n, out + t * out_stride + i, W.data + i * W.nb1, xq + t * xq_stride)

cdef void matmul_q(float** outs, int64_t out_stride, const tensor_t** Ws, int nw, const uint8_t* xq,
                   int64_t xq_stride, int n_tok, int nth) noexcept nogil:
    # Ws[w] @ xq -> outs[w] for the nw tensors that share the input xq (wq/wk/wv, w1/w3):
    # one parallel region for all of them, thread c taking slice c of each tensor's rows.
    # (Each fork/join can cost tens of microseconds when libgomp throttles its spinning,
    # which it does once more of its threads exist than cores: e.g. sessions driven from
    # several Python threads.)
    cdef int c, w
    cdef int64_t per, work = 0
    for w in range(nw):
        work += Ws[w].ne0 * Ws[w].ne1 * n_tok
    if work < PARALLEL_MIN_WORK * nw:
        nth = 1
    if nth == 1:
        for w in range(nw):
            rows_q(outs[w], out_stride, Ws[w], 0, Ws[w].ne1, xq, xq_stride, n_tok)
        return
    for c in prange(nth, schedule='static', num_threads=nth):
        for w in range(nw):
            per = (Ws[w].ne1 + nth - 1) // nth
            if c * per < Ws[w].ne1:
                rows_q(outs[w], out_stride, Ws[w], c * per, min(Ws[w].ne1, (c + 1) * per), xq, xq_stride, n_tok)

cdef void matmul_n(state_t* s, float** outs, int64_t out_stride, const tensor_t** Ws, int nw, const float* x,
                   int n_tok) noexcept nogil:
    # Ws[w] @ x (n_tok, ne0) -> outs[w] (n_tok, Ws[w].ne1), quantizing x once per activation
    # type; tensors that pair with different activation types run one after the other
    cdef int vt = VEC_DOT_TYPE[Ws[0].type], w
    for w in range(1, nw):
        if VEC_DOT_TYPE[Ws[w].type] != vt or Ws[w].ne0 != Ws[0].ne0:
            for w in range(nw):
                matmul_n(s, &outs[w], out_stride, &Ws[w], 1, x, n_tok)
            return
    if not (s.act_src == x and s.act_type == vt and s.act_ntok == n_tok and s.act_n == Ws[0].ne0):
        quantize_rows(s.act, s.act_stride, x, Ws[0].ne0, n_tok, vt, s.nth)
        s.act_src = x
        s.act_type = vt
        s.act_ntok = n_tok
        s.act_n = Ws[0].ne0
    matmul_q(outs, out_stride, Ws, nw, s.act, s.act_stride, n_tok, s.nth)

cdef inline void matmul(state_t* s, float* out, int64_t out_stride, const tensor_t* W, const float* x,
                        int n_tok) noexcept nogil:
    # W @ x (n_tok, W.ne0) -> out (n_tok, W.ne1)
    matmul_n(s, &out, out_stride, &W, 1, x, n_tok)

# ---- elementwise ---------------------------------------------------------------
cdef void rmsnorm(float* out, const float* x, const float* w, int n, float eps) noexcept nogil:
    # out = x / sqrt(mean(x^2) + eps) * w
    cdef double ss = 0.0
    cdef int i
    cdef float scale
    for i in range(n):
        ss += x[i] * x[i]
    scale = 1.0 / sqrtf(<float>(ss / n) + eps)
    for i in range(n):
        out[i] = x[i] * scale * w[i]

cdef void rope(float* x, int n_head, int head_dim, int n_rot, const double* freqs, int pos) noexcept nogil:
    # ggml mode 0: in each head rotate adjacent pairs (x[2i], x[2i+1]), 2i < n_rot,
    # by the angle pos * 10000^(-2i/n_rot)
    cdef int h, i
    cdef double theta, c, sn
    cdef float x0, x1
    cdef float* p
    for i in range(n_rot // 2):
        theta = pos * freqs[i]
        c = cos(theta)
        sn = sin(theta)
        for h in range(n_head):
            p = x + h * head_dim + 2 * i
            x0 = p[0]
            x1 = p[1]
            p[0] = <float>(x0 * c - x1 * sn)
            p[1] = <float>(x0 * sn + x1 * c)

cdef void softmax(float* x, int n) noexcept nogil:
    cdef float mx = x[0]
    cdef double total = 0.0
    cdef int i
    cdef float inv
    for i in range(1, n):
        if x[i] > mx:
            mx = x[i]
    for i in range(n):
        x[i] = expf(x[i] - mx)
        total += x[i]
    inv = <float>(1.0 / total)
    for i in range(n):
        x[i] *= inv

cdef void silu_mul(float* a, const float* b, int64_t n) noexcept nogil:
    # a = silu(a) * b, silu(z) = z / (1 + e^-z)
    cdef int64_t i
    for i in range(n):
        a[i] = a[i] / (1.0 + expf(-a[i])) * b[i]

cdef void silu_mul_par(float* a, const float* b, int64_t n, int nth) noexcept nogil:
    cdef int64_t c, per
    if nth < 2 or n < PARALLEL_MIN_WORK:      # one token's n_ff: on one thread (see matmul_q)
        silu_mul(a, b, n)
        return
    per = (n + nth - 1) // nth
    for c in prange(nth, schedule='static', num_threads=nth):
        if c * per < n:
            silu_mul(a + c * per, b + c * per, min(per, n - c * per))

# ---- attention -----------------------------------------------------------------
cdef void store_kv(void* cache, int64_t off, const float* src, int64_t n, int f16) noexcept nogil:
    cdef int64_t i
    cdef uint16_t* h
    if f16:
        h = (<uint16_t*>cache) + off
        for i in range(n):
            h[i] = fp32_to_fp16(src[i])
    else:
        memcpy((<float*>cache) + off, src, n * 4)

cdef void attention(float* out, const float* q, const void* k_cache, const void* v_cache, float* att,
                    int n_tok, int n_past, int n_head, int head_dim, int n_ctx, int f16, int nth) noexcept nogil:
    # out (n_tok, n_embd) = per head softmax(q k^T / sqrt(head_dim)) v over positions 0..pos,
    # pos = n_past + t (causal). k_cache, v_cache: this layer's (n_ctx, n_embd), positions
    # up to n_past + n_tok - 1 filled. att: (n_head, n_ctx) scratch, a row per head.
    cdef int h, t, p, pos
    cdef int n_embd = n_head * head_dim
    cdef float scale = 1.0 / sqrtf(<float>head_dim)
    cdef float* a
    cdef float* o
    if n_head * (n_past + n_tok) * head_dim * n_tok < PARALLEL_MIN_WORK:
        nth = 1
    for h in prange(n_head, schedule='static', num_threads=nth):
        a = att + h * n_ctx
        for t in range(n_tok):
            pos = n_past + t
            for p in range(pos + 1):
                a[p] = kv_dot(q + t * n_embd + h * head_dim, k_cache, <int64_t>p * n_embd + h * head_dim,
                              head_dim, f16) * scale
            softmax(a, pos + 1)
            o = out + t * n_embd + h * head_dim
            memset(o, 0, head_dim * sizeof(float))
            for p in range(pos + 1):
                kv_axpy(o, a[p], v_cache, <int64_t>p * n_embd + h * head_dim, head_dim, f16)

# ---- forward -------------------------------------------------------------------
cdef int forward(const model_t* m, state_t* s, const int32_t* tokens, int n_tok, int n_past,
                 float* logits, int all_logits) noexcept nogil:
    # tokens (n_tok,) at positions n_past.. -> logits (n_tok or 1, n_vocab); the KV cache
    # gains n_tok entries. Returns 0, or 1 when cancelled (the cache past n_past is then
    # partly written but n_past must not advance).
    cdef int E = m.n_embd
    cdef int t, l, first
    cdef int64_t i, kv_off, layer_off = <int64_t>s.n_ctx * E
    cdef const layer_t* L
    cdef float* outs[3]
    cdef const tensor_t* ws[3]
    for t in range(n_tok):
        TO_FLOAT[m.tok_embeddings.type](m.tok_embeddings.data + tokens[t] * m.tok_embeddings.nb1,
                                         s.x + t * E, E)
    for l in range(m.n_layer):
        if s.cancel[0]:
            return 1
        L = &m.layers[l]
        # attention block
        for t in range(n_tok):
            rmsnorm(s.xb + t * E, s.x + t * E, L.attention_norm, E, m.eps)
        s.act_src = NULL
        outs[0], outs[1], outs[2] = s.q, s.k, s.v
        ws[0], ws[1], ws[2] = &L.wq, &L.wk, &L.wv
        matmul_n(s, outs, E, ws, 3, s.xb, n_tok)
        for t in range(n_tok):
            rope(s.q + t * E, m.n_head, m.head_dim, m.n_rot, m.freqs, n_past + t)
            rope(s.k + t * E, m.n_head, m.head_dim, m.n_rot, m.freqs, n_past + t)
        kv_off = l * layer_off + <int64_t>n_past * E
        store_kv(s.k_cache, kv_off, s.k, <int64_t>n_tok * E, s.kv_f16)
        store_kv(s.v_cache, kv_off, s.v, <int64_t>n_tok * E, s.kv_f16)
        if s.kv_f16:
            attention(s.xb, s.q, (<uint16_t*>s.k_cache) + l * layer_off, (<uint16_t*>s.v_cache) + l * layer_off,
                      s.att, n_tok, n_past, m.n_head, m.head_dim, s.n_ctx, 1, s.nth)
        else:
            attention(s.xb, s.q, (<float*>s.k_cache) + l * layer_off, (<float*>s.v_cache) + l * layer_off,
                      s.att, n_tok, n_past, m.n_head, m.head_dim, s.n_ctx, 0, s.nth)
        s.act_src = NULL
        matmul(s, s.xb2, E, &L.wo, s.xb, n_tok)
        for i in range(<int64_t>n_tok * E):
            s.x[i] += s.xb2[i]
        # feed-forward block
        for t in range(n_tok):
            rmsnorm(s.xb + t * E, s.x + t * E, L.ffn_norm, E, m.eps)
        s.act_src = NULL
        outs[0], outs[1] = s.hb, s.hb2
        ws[0], ws[1] = &L.w1, &L.w3
        matmul_n(s, outs, m.n_ff, ws, 2, s.xb, n_tok)
        silu_mul_par(s.hb, s.hb2, <int64_t>n_tok * m.n_ff, s.nth)
        s.act_src = NULL
        matmul(s, s.xb2, E, &L.w2, s.hb, n_tok)
        for i in range(<int64_t>n_tok * E):
            s.x[i] += s.xb2[i]
    if s.cancel[0]:
        return 1
    first = 0 if all_logits else n_tok - 1
    for t in range(first, n_tok):
        rmsnorm(s.xb + t * E, s.x + t * E, m.norm, E, m.eps)
    s.act_src = NULL
    matmul(s, logits, m.n_vocab, &m.output, s.xb + first * E, n_tok - first)
    s.act_src = NULL
    return 0

cdef void shift_kv(const model_t* m, state_t* s, int n_keep, int n_discard, int n_past) noexcept nogil:
    cdef int E = m.n_embd
    cdef int l, p
    cdef int64_t src, dst, layer_off = <int64_t>s.n_ctx * E
    cdef float* tmp = s.k          # (E,) scratch: the first row of the new-keys buffer
    for l in range(m.n_layer):
        for p in range(n_keep + n_discard, n_past):
            src = l * layer_off + <int64_t>p * E
            dst = src - <int64_t>n_discard * E
            if s.kv_f16:
                TO_FLOAT[GGML_TYPE_F16](<const uint16_t*>s.k_cache + src, tmp, E)
            else:
                memcpy(tmp, <float*>s.k_cache + src, E * sizeof(float))
            rope(tmp, m.n_head, m.head_dim, m.n_rot, m.freqs, -n_discard)
            store_kv(s.k_cache, dst, tmp, E, s.kv_f16)
            if s.kv_f16:
                memmove(<uint16_t*>s.v_cache + dst, <uint16_t*>s.v_cache + src, E * 2)
            else:
                memmove(<float*>s.v_cache + dst, <float*>s.v_cache + src, E * 4)

# ---- Python-facing objects ----------------------------------------------------------
cdef tensor_t _tensor(tuple spec):
    # spec = (address, type, ne0, ne1), validated by the loader
    cdef tensor_t t
    t.data = <const uint8_t*><size_t>spec[0]
    t.type = spec[1]
    t.ne0 = spec[2]
    t.ne1 = spec[3]
    t.nb1 = row_size(t.type, t.ne0)
    return t

cdef class Engine:
    """The model's weights as C pointers into the caller's read-only buffer.

    ``tensors`` maps each tensor name to (address, ggml type, ne0, ne1); ``keepalive``
    is whatever owns that memory. Read-only, shared by any number of States.
    """
    cdef model_t m
    cdef object keepalive
    cdef object freqs_arr

    def __cinit__(self, dict hparams, dict tensors, object keepalive, float eps=1e-6):
        cdef int l
        cdef double[::1] fr
        self.keepalive = keepalive
        self.m.layers = NULL
        self.m.n_vocab = hparams["n_vocab"]
        self.m.n_embd = hparams["n_embd"]
        self.m.n_head = hparams["n_head"]
        self.m.n_layer = hparams["n_layer"]
        self.m.n_rot = hparams["n_rot"]
        self.m.n_ff = hparams["n_ff"]
        self.m.head_dim = self.m.n_embd // self.m.n_head
        self.m.eps = eps
        self.m.tok_embeddings = _tensor(tensors["tok_embeddings.weight"])
        self.m.output = _tensor(tensors["output.weight"])
        self.m.norm = <const float*><size_t>tensors["norm.weight"][0]
        self.freqs_arr = np.array([10000.0 ** (-2.0 * i / self.m.n_rot) for i in range(self.m.n_rot // 2)],
                                  dtype=np.float64)
        fr = self.freqs_arr
        self.m.freqs = &fr[0]
        self.m.layers = <layer_t*>malloc(self.m.n_layer * sizeof(layer_t))
        if self.m.layers == NULL:
            raise MemoryError()
        for l in range(self.m.n_layer):
            p = f"layers.{l}."
            self.m.layers[l].wq = _tensor(tensors[p + "attention.wq.weight"])
            self.m.layers[l].wk = _tensor(tensors[p + "attention.wk.weight"])
            self.m.layers[l].wv = _tensor(tensors[p + "attention.wv.weight"])
            self.m.layers[l].wo = _tensor(tensors[p + "attention.wo.weight"])
            self.m.layers[l].w1 = _tensor(tensors[p + "feed_forward.w1.weight"])
            self.m.layers[l].w2 = _tensor(tensors[p + "feed_forward.w2.weight"])
            self.m.layers[l].w3 = _tensor(tensors[p + "feed_forward.w3.weight"])
            self.m.layers[l].attention_norm = <const float*><size_t>tensors[p + "attention_norm.weight"][0]
            self.m.layers[l].ffn_norm = <const float*><size_t>tensors[p + "ffn_norm.weight"][0]

    def __dealloc__(self):
        free(self.m.layers)


cdef class State:
    """One session's KV cache and scratch buffers, sized once (n_ctx, n_batch)."""
    cdef state_t s
    cdef readonly Engine engine
    cdef readonly object k_cache    # (n_layer, n_ctx, n_embd) float32 or float16
    cdef readonly object v_cache
    cdef object bufs
    cdef object cancel_arr

    def __cinit__(self, Engine engine, int n_ctx, int n_batch, bint kv_f16=False, int n_threads=1):
        cdef model_t* m = &engine.m
        cdef int E = m.n_embd
        cdef int64_t max_in = max(m.n_embd, m.n_ff)
        self.engine = engine
        kvt = np.float16 if kv_f16 else np.float32
        self.k_cache = np.zeros((m.n_layer, n_ctx, E), dtype=kvt)
        self.v_cache = np.zeros((m.n_layer, n_ctx, E), dtype=kvt)
        self.s.n_ctx = n_ctx
        self.s.n_batch = n_batch
        self.s.nth = max(1, n_threads)
        self.s.kv_f16 = kv_f16
        self.s.k_cache = <void*><size_t>self.k_cache.ctypes.data
        self.s.v_cache = <void*><size_t>self.v_cache.ctypes.data
        # activations of any type take at most 4 bytes per element (f32 for f16 weights)
        self.s.act_stride = max_in * 4
        self.bufs = {
            "x": np.zeros((n_batch, E), np.float32), "xb": np.zeros((n_batch, E), np.float32),
            "xb2": np.zeros((n_batch, E), np.float32), "q": np.zeros((n_batch, E), np.float32),
            "k": np.zeros((n_batch, E), np.float32), "v": np.zeros((n_batch, E), np.float32),
            "att": np.zeros((m.n_head, n_ctx), np.float32),
            "hb": np.zeros((n_batch, m.n_ff), np.float32), "hb2": np.zeros((n_batch, m.n_ff), np.float32),
            "act": np.zeros(n_batch * self.s.act_stride, np.uint8),
        }
        self.s.x = <float*><size_t>self.bufs["x"].ctypes.data
        self.s.xb = <float*><size_t>self.bufs["xb"].ctypes.data
        self.s.xb2 = <float*><size_t>self.bufs["xb2"].ctypes.data
        self.s.q = <float*><size_t>self.bufs["q"].ctypes.data
        self.s.k = <float*><size_t>self.bufs["k"].ctypes.data
        self.s.v = <float*><size_t>self.bufs["v"].ctypes.data
        self.s.att = <float*><size_t>self.bufs["att"].ctypes.data
        self.s.hb = <float*><size_t>self.bufs["hb"].ctypes.data
        self.s.hb2 = <float*><size_t>self.bufs["hb2"].ctypes.data
        self.s.act = <uint8_t*><size_t>self.bufs["act"].ctypes.data
        self.s.act_src = NULL
        self.cancel_arr = np.zeros(1, dtype=np.intc)
        self.s.cancel = <int*><size_t>self.cancel_arr.ctypes.data

    @property
    def n_threads(self):
        return self.s.nth

    @n_threads.setter
    def n_threads(self, int n):
        self.s.nth = max(1, n)

    def set_cancel(self, bint flag):
        # a plain int store; the forward pass reads it between layers
        self.cancel_arr[0] = 1 if flag else 0

    @property
    def cancelled(self):
        return bool(self.cancel_arr[0])

    def shift(self, int n_keep, int n_discard, int n_past):
        """Drop cache positions [n_keep, n_keep + n_discard): move the later ones down and
        re-rotate their keys by -n_discard positions (RoPE angles add), as if they had been
        evaluated n_discard positions earlier. Values only move."""
        if not (0 <= n_keep and 0 < n_discard and n_keep + n_discard <= n_past <= self.s.n_ctx):
            raise ValueError(f"bad shift: n_keep={n_keep} n_discard={n_discard} n_past={n_past}")
        with nogil:
            shift_kv(&self.engine.m, &self.s, n_keep, n_discard, n_past)

    def forward(self, const int32_t[::1] tokens, int n_past, float[:, ::1] logits, bint all_logits):
        """Evaluate tokens (n <= n_batch) at n_past; returns 0, or 1 if cancelled.

        logits: (n, n_vocab) if all_logits else (1, n_vocab). The caller has checked
        the token ids and n_past + n <= n_ctx.
        """
        cdef int n = tokens.shape[0]
        cdef int rc
        if n < 1 or n > self.s.n_batch:
            raise ValueError(f"batch of {n} tokens outside [1, {self.s.n_batch}]")
        if n_past < 0 or n_past + n > self.s.n_ctx:
            raise ValueError(f"positions {n_past}..{n_past + n} outside the context of {self.s.n_ctx}")
        if logits.shape[0] != (n if all_logits else 1) or logits.shape[1] != self.engine.m.n_vocab:
            raise ValueError("logits buffer has the wrong shape")
        with nogil:
            rc = forward(&self.engine.m, &self.s, &tokens[0], n, n_past, &logits[0, 0], all_logits)
        return rc

# ---- thin Python twins of the kernels, for tests and benchmarks -----------------------
def block_sizes():
    return {"q4_0": sizeof(block_q4_0), "q4_1": sizeof(block_q4_1), "q5_0": sizeof(block_q5_0),
            "q5_1": sizeof(block_q5_1), "q8_0": sizeof(block_q8_0), "q8_1": sizeof(block_q8_1),
            "q2_K": sizeof(block_q2_K), "q3_K": sizeof(block_q3_K), "q4_K": sizeof(block_q4_K),
            "q5_K": sizeof(block_q5_K), "q6_K": sizeof(block_q6_K), "q8_K": sizeof(block_q8_K)}

def _check_type(int t):
    if not (0 <= t < GGML_TYPE_COUNT) or TYPE_SIZE[t] == 0:
        raise ValueError(f"unknown ggml type {t}")

def _check_len(int t, int64_t n, int64_t nbytes):
    if n % BLCK_SIZE[t]:
        raise ValueError(f"{n} elements is not a multiple of the block size {BLCK_SIZE[t]}")
    if nbytes < row_size(t, n):
        raise ValueError(f"{nbytes} bytes < {row_size(t, n)} needed for {n} elements")

def vec_dot_type(int t):
    _check_type(t)
    return VEC_DOT_TYPE[t]

def dequantize(int t, const uint8_t[::1] data, int64_t n):
    """n weights of type t -> float32 (n,)"""
    _check_type(t)
    _check_len(t, n, data.shape[0])
    out = np.empty(n, dtype=np.float32)
    cdef float[::1] o = out
    if n:
        with nogil:
            TO_FLOAT[t](&data[0], &o[0], n)
    return out

def quantize(int t, const float[::1] x):
    """float32 (n,) -> bytes of activation type t (F32, Q8_0, Q8_1, Q8_K)"""
    _check_type(t)
    if FROM_FLOAT[t] == NULL:
        raise ValueError(f"type {t} is not an activation format")
    cdef int64_t n = x.shape[0]
    if n % BLCK_SIZE[t]:
        raise ValueError(f"{n} elements is not a multiple of the block size {BLCK_SIZE[t]}")
    out = np.zeros(row_size(t, n), dtype=np.uint8)
    cdef uint8_t[::1] o = out
    if n:
        with nogil:
            FROM_FLOAT[t](&x[0], &o[0], n)
    return out

def vec_dot(int t, const uint8_t[::1] w, const uint8_t[::1] yq, int n):
    """<w, y> for n weights of type t and an activation already in VEC_DOT_TYPE[t]"""
    _check_type(t)
    if VEC_DOT[t] == NULL:
        raise ValueError(f"type {t} is not a weight format")
    _check_len(t, n, w.shape[0])
    _check_len(VEC_DOT_TYPE[t], n, yq.shape[0])
    cdef float s = 0.0
    if n:
        with nogil:
            VEC_DOT[t](n, &s, &w[0], &yq[0])
    return s

def matmul_twin(int t, const uint8_t[::1] w, int64_t ne0, int64_t ne1, const float[:, ::1] x, int n_threads=1):
    """W (ne1 rows of ne0, type t) @ x (n_tok, ne0)^T -> (n_tok, ne1), activations quantized as the engine does"""
    _check_type(t)
    if VEC_DOT[t] == NULL:
        raise ValueError(f"type {t} is not a weight format")
    if x.shape[1] != ne0:
        raise ValueError(f"x has rows of {x.shape[1]}, W of {ne0}")
    _check_len(t, ne0 * ne1, w.shape[0])
    if ne0 % BLCK_SIZE[t]:
        raise ValueError("row length is not a multiple of the block size")
    cdef int n_tok = x.shape[0]
    cdef int vt = VEC_DOT_TYPE[t]
    cdef int64_t qs = row_size(vt, ne0)
    out = np.zeros((n_tok, ne1), dtype=np.float32)
    act = np.zeros(max(1, n_tok * qs), dtype=np.uint8)
    cdef float[:, ::1] o = out
    cdef uint8_t[::1] a = act
    cdef tensor_t W
    cdef const tensor_t* wp = &W
    cdef float* op
    W.data = &w[0]
    W.type = t
    W.ne0 = ne0
    W.ne1 = ne1
    W.nb1 = row_size(t, ne0)
    if n_tok:
        with nogil:
            quantize_rows(&a[0], qs, &x[0, 0], ne0, n_tok, vt, n_threads)
            op = &o[0, 0]
            matmul_q(&op, ne1, &wp, 1, &a[0], qs, n_tok, n_threads)
    return out

def rmsnorm_twin(const float[::1] x, const float[::1] w, float eps):
    if x.shape[0] != w.shape[0] or x.shape[0] == 0:
        raise ValueError("x and w must have the same non-zero length")
    out = np.empty(x.shape[0], dtype=np.float32)
    cdef float[::1] o = out
    rmsnorm(&o[0], &x[0], &w[0], x.shape[0], eps)
    return out

def rope_twin(float[:, ::1] x, int n_head, int n_rot, int n_past):
    """in place on x (n_tok, n_embd); token t sits at position n_past + t"""
    cdef int hd = x.shape[1] // n_head
    if x.shape[1] % n_head or n_rot > hd or n_rot % 2:
        raise ValueError("bad rope shape")
    fr = np.array([10000.0 ** (-2.0 * i / n_rot) for i in range(n_rot // 2)], dtype=np.float64)
    cdef double[::1] f = fr
    cdef int t
    for t in range(x.shape[0]):
        rope(&x[t, 0], n_head, hd, n_rot, &f[0] if n_rot else NULL, n_past + t)

def softmax_twin(float[::1] x):
    if x.shape[0]:
        softmax(&x[0], x.shape[0])

def silu_mul_twin(float[::1] a, const float[::1] b):
    if a.shape[0] != b.shape[0]:
        raise ValueError("length mismatch")
    if a.shape[0]:
        silu_mul(&a[0], &b[0], a.shape[0])

def attention_twin(const float[:, ::1] q, k_cache, v_cache, int n_past, int n_head, int n_threads=1):
    """q (n_tok, n_embd); k_cache, v_cache (n_ctx, n_embd) float32 or float16, filled up
    to n_past + n_tok -> (n_tok, n_embd)"""
    cdef int n_tok = q.shape[0]
    cdef int E = q.shape[1]
    cdef int n_ctx = k_cache.shape[0]
    if E % n_head or k_cache.shape != (n_ctx, E) or v_cache.shape != (n_ctx, E) or n_past + n_tok > n_ctx:
        raise ValueError("bad attention shapes")
    if k_cache.dtype != v_cache.dtype or k_cache.dtype not in (np.float16, np.float32):
        raise ValueError("caches must both be float32 or float16")
    kc = np.ascontiguousarray(k_cache)
    vc = np.ascontiguousarray(v_cache)
    cdef int f16 = kc.dtype == np.float16
    out = np.zeros((n_tok, E), dtype=np.float32)
    att = np.zeros((n_head, n_ctx), dtype=np.float32)
    cdef float[:, ::1] o = out
    cdef float[:, ::1] a = att
    cdef size_t kp = kc.ctypes.data, vp = vc.ctypes.data
    with nogil:
        attention(&o[0, 0], &q[0, 0], <const void*>kp, <const void*>vp, &a[0, 0], n_tok, n_past, n_head,
                  E // n_head, n_ctx, f16, n_threads)
    return out

def fp16_from_f32(const float[::1] x):
    out = np.empty(x.shape[0], dtype=np.uint16)
    cdef uint16_t[::1] o = out
    cdef int64_t i
    for i in range(x.shape[0]):
        o[i] = fp32_to_fp16(x[i])
    return out

def openmp_enabled():
    return bool(gr_openmp_enabled())

def omp_max_threads():
    return gr_omp_max_threads()

def cpu_has_avx2():
    return bool(gr_cpu_has_avx2())
