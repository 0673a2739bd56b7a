# cython: language_level=3
"""The elementwise operations and attention of a layer, compiled once for every ISA:
RMSNorm, RoPE (ggml mode 0 or NEOX), softmax, the SiLU and GELU gates, causal attention
(with a sliding window) over the KV cache, and the families' additions (biases, per-head
norms, post-norms). The matmuls and the forward pass that strings these together are in
_engine.pyx; attention's inner loops (q.k, a*v) come from the ISA unit's kernel table.
"""
from libc.stdint cimport uint16_t, int64_t
from libc.string cimport memcpy
from libc.math cimport sqrtf, expf, tanhf, cos, sin, pow
from cython.parallel cimport prange

from guanaco_rt._kernels._isa cimport isa_kernels_t
from guanaco_rt._kernels._quants cimport fp32_to_fp16


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

cdef void rope(float* x, int n_head, int head_dim, int n_rot, const double* freqs, int pos, int neox) noexcept nogil:
    # in each head rotate the pairs (x[a], x[b]) by the angle pos * freqs[i] (rope_freqs),
    # i < n_rot/2: ggml mode 0 (LLaMA) pairs adjacent elements, a = 2i, b = 2i + 1; NEOX
    # (Qwen, Phi-3, Gemma: HF's rotate_half) pairs the halves, a = i, b = i + n_rot/2
    cdef int h, i, a, b
    cdef double theta, c, sn
    cdef float x0, x1
    cdef float* p
    for i in range(n_rot // 2):
        theta = pos * freqs[i]
        c = cos(theta)
        sn = sin(theta)
        if neox:
            a, b = i, i + n_rot // 2
        else:
            a, b = 2 * i, 2 * i + 1
        for h in range(n_head):
            p = x + h * head_dim
            x0 = p[a]
            x1 = p[b]
            p[a] = <float>(x0 * c - x1 * sn)
            p[b] = <float>(x0 * sn + x1 * c)

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

cdef void gelu_mul(float* a, const float* b, int64_t n) noexcept nogil:
    # a = gelu(a) * b, gelu's tanh form (ggml_gelu, HF gelu_pytorch_tanh):
    # gelu(z) = z/2 (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))
    cdef int64_t i
    cdef float z
    for i in range(n):
        z = a[i]
        a[i] = 0.5 * z * (1.0 + tanhf(0.7978845608028654 * z * (1.0 + 0.044715 * z * z))) * b[i]

cdef void rope_freqs(double* out, int n_rot, double base) noexcept nogil:
    # the RoPE frequencies, the one place they are computed: out[i] = base^(-2i/n_rot), i < n_rot/2
    cdef int i
    for i in range(n_rot // 2):
        out[i] = pow(base, -2.0 * i / n_rot)

# ---- attention -----------------------------------------------------------------------
cdef void store_kv(void* cache, int64_t off, const float* src, int64_t n, int f16) noexcept nogil:
    cdef int64_t i
    cdef uint16_t* h
    if f16:
        h = (<uint16_t*>cache) + off
        for i in range(n):
            h[i] = fp32_to_fp16(src[i])
    else:
        memcpy((<float*>cache) + off, src, n * 4)

cdef void attention(const isa_kernels_t* K, float* out, const float* q, const void* k_cache, const void* v_cache,
                    float* att, int n_tok, int n_past, int n_head, int n_head_kv, int head_dim, int n_ctx, int f16,
                    int nth, float scale, int n_swa) noexcept nogil:
    # out (n_tok, n_head * head_dim) = per head softmax(scale q k^T) v over positions lo..pos,
    # pos = n_past + t (causal), lo = 0, or with a sliding window (n_swa > 0) the last n_swa:
    # lo = max(0, pos + 1 - n_swa), as llama.cpp's mask (pos - p >= n_swa is masked) and HF's.
    # k_cache, v_cache: this layer's (n_ctx, n_embd_kv), positions
    # up to n_past + n_tok - 1 filled; query head h reads KV head h / (n_head / n_head_kv)
    # (grouped-query attention; n_head_kv == n_head is plain multi-head). att: (n_head,
    # n_ctx) scratch, a row per head.
    cdef int h
    nth = attention_threads(nth, n_head, head_dim, n_past, n_tok)
    for h in prange(n_head, schedule='static', num_threads=nth):
        attention_head(K, out, q, k_cache, v_cache, att + h * n_ctx, h, n_tok, n_past, n_head, n_head_kv, head_dim,
                       f16, scale, n_swa)

cdef void attention_head(const isa_kernels_t* K, float* out, const float* q, const void* k_cache,
                         const void* v_cache, float* a, int h, int n_tok, int n_past, int n_head, int n_head_kv,
                         int head_dim, int f16, float scale, int n_swa) noexcept nogil:
    # attention()'s query head h, every token, with a (n_ctx,) its scratch row: the one body of
    # attention() and of the engine's batch over several sequences (forward_seqs), each
    # head's result the same bits whoever runs it
    cdef int t, pos, lo
    cdef int n_embd = n_head * head_dim
    cdef int n_embd_kv = n_head_kv * head_dim
    cdef int kvh = h // (n_head // n_head_kv)
    cdef float* o
    for t in range(n_tok):
        pos = n_past + t
        lo = max(0, pos + 1 - n_swa) if n_swa > 0 else 0
        K.kv_scores(a, q + t * n_embd + h * head_dim, k_cache, <int64_t>lo * n_embd_kv + kvh * head_dim,
                    n_embd_kv, pos + 1 - lo, head_dim, scale, f16)
        softmax(a, pos + 1 - lo)
        o = out + t * n_embd + h * head_dim
        K.kv_mix(o, a, v_cache, <int64_t>lo * n_embd_kv + kvh * head_dim, n_embd_kv, pos + 1 - lo, head_dim, f16)

cdef int attention_threads(int nth, int n_head, int head_dim, int n_past, int n_tok) noexcept nogil:
    # attention's team: n_tok queries against n_past + n_tok positions, each a q.k and an a*v
    # over n_head heads of head_dim
    return team_threads(nth, <int64_t>n_head * head_dim, <int64_t>n_past + n_tok, n_tok)

# ---- what the families add (NULL: the family has none) ----------------------------
cdef void add_bias(float* x, const float* b, int n_tok, int n) noexcept nogil:
    # x (n_tok, n) += b (n,), when there is one
    cdef int t, i
    if b != NULL:
        for t in range(n_tok):
            for i in range(n):
                x[t * n + i] += b[i]

cdef void head_norm(float* x, const float* w, int n_head, int head_dim, float eps) noexcept nogil:
    # each head of x (n_head, head_dim) RMS-normed in place with w (head_dim,), when there is one
    cdef int h
    if w != NULL:
        for h in range(n_head):
            rmsnorm(x + h * head_dim, x + h * head_dim, w, head_dim, eps)

cdef void add_residual(float* x, float* y, const float* post_norm, int n_tok, int E, float eps) noexcept nogil:
    # x (n_tok, E) += y, y RMS-normed first with post_norm (E,) when there is one
    cdef int64_t i
    cdef int t
    if post_norm != NULL:
        for t in range(n_tok):
            rmsnorm(y + t * E, y + t * E, post_norm, E, eps)
    for i in range(<int64_t>n_tok * E):
        x[i] += y[i]
