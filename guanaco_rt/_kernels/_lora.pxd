# cython: language_level=3
# LoRA adapters applied at run time, per State (see _lora.pyx).
from libc.stdint cimport int64_t

cdef enum:
    LORA_WQ = 0                  # which matrix of a layer: attention wq, wk, wv, wo,
    LORA_WK = 1
    LORA_WV = 2
    LORA_WO = 3
    LORA_W1 = 4                  # feed_forward w1 (gate), w3 (up), w2 (down)
    LORA_W3 = 5
    LORA_W2 = 6
    LORA_N = 7

cdef struct lora_w_t:
    const float* a               # (r, ne0) A: one row per rank, over the matrix's input
    const float* bt              # (r, ne1) B transposed: one row per rank, over the outputs
    int r                        # the rank; 0: this matrix has no adapter
    float scale                  # alpha / r times the user's scale
    int64_t ne0, ne1             # the adapted matrix's shape (input, output)

cdef struct lora_t:
    int n_layer
    lora_w_t* w                  # (n_layer, LORA_N)
    float* tmp                   # (tmp_rows, r_max) scratch: x.A of up to tmp_rows tokens
    int tmp_rows, r_max

cdef bint lora_has(const lora_t* a, int layer, int which) noexcept nogil
cdef void lora_add(const lora_t* a, int layer, int which, float* out, int64_t out_stride, const float* x, int n_tok,
                   int nth) noexcept nogil

cdef class LoraSet:
    cdef lora_t lt
    cdef list arrays             # the A and B arrays lt.w points into (kept alive)
    cdef float[:, ::1] tmp_buf
    cdef readonly int n_layer
    cdef readonly tuple shape    # (n_layer, n_embd, n_embd_q, n_embd_kv, n_ff) it was built for
    cdef lora_t* ptr(self)
