# cython: language_level=3
# The elementwise operations and attention of a layer (see _ops.pyx).
from libc.stdint cimport uint16_t, int64_t

from guanaco_rt._kernels._isa cimport isa_kernels_t

cdef enum:
    PARALLEL_MIN_WORK = 1 << 16   # multiply-adds (or elements) below which a loop runs on one thread

cdef inline int team_threads(int nth, int64_t rows, int64_t cols, int64_t n_tok) noexcept nogil:
    # the threads for a loop of rows x cols x n_tok multiply-adds (elements: cols = n_tok = 1)
    # on up to nth: small work runs on one, where a fork/join would cost more than it saves.
    # The one place this is decided; int64, since a 7B layer's attention over 8192 positions
    # in a batch of 64 is 2^31 multiply-adds, which a product of ints wrapped to < 0
    return 1 if rows * cols * n_tok < PARALLEL_MIN_WORK else nth

cdef inline void* kv_layer(void* cache, int64_t off, int f16) noexcept nogil:
    return <void*>((<uint16_t*>cache) + off) if f16 else <void*>((<float*>cache) + off)

cdef void rmsnorm(float* out, const float* x, const float* w, int n, float eps) noexcept nogil
cdef void rope(float* x, int n_head, int head_dim, int n_rot, const double* freqs, int pos, int neox) noexcept nogil
cdef void rope_freqs(double* out, int n_rot, double base) noexcept nogil
cdef void softmax(float* x, int n) noexcept nogil
cdef void silu_mul(float* a, const float* b, int64_t n) noexcept nogil
cdef void gelu_mul(float* a, const float* b, int64_t n) noexcept nogil
cdef void store_kv(void* cache, int64_t off, const float* src, int64_t n, int f16) noexcept nogil
cdef void attention(const isa_kernels_t* K, float* out, const float* q, const void* k_cache, const void* v_cache,
                    float* att, int n_tok, int n_past, int n_head, int n_head_kv, int head_dim, int n_ctx, int f16,
                    int nth, float scale, int n_swa) noexcept nogil
cdef void attention_head(const isa_kernels_t* K, float* out, const float* q, const void* k_cache,
                         const void* v_cache, float* a, int h, int n_tok, int n_past, int n_head, int n_head_kv,
                         int head_dim, int f16, float scale, int n_swa) noexcept nogil
cdef int attention_threads(int nth, int n_head, int head_dim, int n_past, int n_tok) noexcept nogil
cdef void add_bias(float* x, const float* b, int n_tok, int n) noexcept nogil
cdef void head_norm(float* x, const float* w, int n_head, int head_dim, float eps) noexcept nogil
cdef void add_residual(float* x, float* y, const float* post_norm, int n_tok, int E, float eps) noexcept nogil
