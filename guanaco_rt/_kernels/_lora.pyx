# cython: language_level=3
"""LoRA adapters applied at run time: out += ((x A^T) B^T) scale after a layer's matmul,
in float32, for the seven matrices of a LLaMA-shaped layer (wq wk wv wo w1 w3 w2).

Owns: the per-State adapter tables (lora_t) and the delta they add. Does not own reading
adapter files or checking them against a model (lora.py), nor merging them into weights
at load (lora.py and the Engine's ``overrides``). The token embeddings and the output
matrix have no adapter here.

Several adapters on one matrix are one adapter of their summed rank (lora.py stacks their
A rows and B columns, each B column scaled by its adapter's scale over the first's), so
the forward pass makes one call per matrix whatever their number.

Precision: float32 throughout (x.A: dots in 16 float32 partial sums; B: row updates). The delta is a small correction
to a matmul whose activations the engine quantizes to 8 bits; float32 rounding of
x.A and of the B sum (relative ~1e-7 of the delta) is orders of magnitude below that (see
the LoRA tests: run-time adapters are as close to the float64 reference as the base model).
"""
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free
from cython.parallel cimport prange

import numpy as np

from guanaco_rt._kernels._ops cimport team_threads


cdef inline float dot_f32(const float* a, const float* b, int64_t n) noexcept nogil:
    # sum a[i] b[i] in 16 independent float32 partial sums (vectorizable without reassociation)
    cdef float acc[16]
    cdef float s = 0
    cdef int64_t i, n16 = n // 16 * 16
    cdef int j
    for j in range(16):
        acc[j] = 0
    for i in range(0, n16, 16):
        for j in range(16):
            acc[j] += a[i + j] * b[i + j]
    for i in range(n16, n):
        s += a[i] * b[i]
    for j in range(16):
        s += acc[j]
    return s


cdef inline void axpy_rows(float* out, int64_t out_stride, const float* tmp, const lora_w_t* w, int nt,
                           int64_t lo, int64_t hi) noexcept nogil:
    # out[t, lo:hi] += sum_k (scale tmp[t, k]) Bt[k, lo:hi] for the nt tokens   # OUT: out
    cdef int t, k
    cdef int64_t j
    cdef float cf
    cdef float* o
    cdef const float* b
    for t in range(nt):
        o = out + t * out_stride
        for k in range(w.r):
            cf = w.scale * tmp[t * w.r + k]
            b = w.bt + k * w.ne1
            for j in range(lo, hi):
                o[j] += cf * b[j]


cdef bint lora_has(const lora_t* a, int layer, int which) noexcept nogil:
    return a != NULL and a.w[layer * LORA_N + which].r > 0


cdef void lora_add(const lora_t* a, int layer, int which, float* out, int64_t out_stride, const float* x, int n_tok,
                   int nth) noexcept nogil:
    # out (n_tok rows of out_stride) += scale * ((x A^T) B^T), x (n_tok, ne0) contiguous   # OUT: out
    # Nothing when a is NULL or the matrix has no adapter. Tokens go tmp_rows at a time
    # through a.tmp; step 1 splits the rank rows over threads, step 2 slices of the outputs.
    cdef const lora_w_t* w
    cdef int t0, nt, t, k, r, c
    cdef int64_t per
    cdef float* tmp
    if a == NULL:
        return
    w = &a.w[layer * LORA_N + which]
    r = w.r
    if r == 0:
        return
    tmp = a.tmp
    t0 = 0
    while t0 < n_tok:
        nt = min(a.tmp_rows, n_tok - t0)
        # tmp (nt, r) = x A^T
        if team_threads(nth, r, w.ne0, nt) > 1:
            for k in prange(r, schedule='static', num_threads=nth):
                for t in range(nt):
                    tmp[t * r + k] = dot_f32(x + (t0 + t) * w.ne0, w.a + k * w.ne0, w.ne0)
        else:
            for k in range(r):
                for t in range(nt):
                    tmp[t * r + k] = dot_f32(x + (t0 + t) * w.ne0, w.a + k * w.ne0, w.ne0)
        # out (nt, ne1) += scale * tmp B^T, as r row updates out += (scale tmp[t, k]) Bt[k]:
        # contiguous over the outputs, so the compiler vectorizes them (a dot over r, 8 long
        # at r 8, would not), each thread a slice of the outputs
        if team_threads(nth, w.ne1, r, nt) > 1:
            per = (w.ne1 + nth - 1) // nth
            for c in prange(nth, schedule='static', num_threads=nth):
                axpy_rows(out + t0 * out_stride, out_stride, tmp, w, nt, c * per, min(w.ne1, c * per + per))
        else:
            axpy_rows(out + t0 * out_stride, out_stride, tmp, w, nt, 0, w.ne1)
        t0 = t0 + nt


cdef class LoraSet:
    """One State's adapters: for each (layer, which) at most one (A, B, scale). Built by
    lora.py from checked adapters; a State takes it with ``set_lora``. Its scratch makes
    it usable by one State at a time (the State's own lock covers that).

    entries: [(layer, which, A float32 (r, ne0), B float32 (ne1, r), scale), ...] (B is kept
    transposed, a copy per LoraSet);
    shape: (n_layer, n_embd, n_embd_q, n_embd_kv, n_ff) of the model it is for;
    tmp_rows: how many tokens the scratch holds at once."""

    def __cinit__(self, tuple shape, list entries, int tmp_rows=64):
        cdef int layer, which, r_max = 1
        cdef float[:, ::1] A, B
        cdef lora_w_t* w
        self.lt.w = NULL
        n_layer = shape[0]
        if n_layer < 1 or tmp_rows < 1:
            raise ValueError(f"LoraSet: n_layer {n_layer} and tmp_rows {tmp_rows} must be >= 1")
        self.n_layer = n_layer
        self.shape = shape
        self.arrays = []
        self.lt.n_layer = n_layer
        self.lt.w = <lora_w_t*>calloc(n_layer * LORA_N, sizeof(lora_w_t))
        if self.lt.w == NULL:
            raise MemoryError()
        for layer, which, a, b, scale in entries:
            if not (0 <= layer < n_layer and 0 <= which < LORA_N):
                raise ValueError(f"LoraSet: (layer {layer}, matrix {which}) outside ({n_layer}, {LORA_N})")
            A = np.ascontiguousarray(a, np.float32)
            B = np.ascontiguousarray(np.asarray(b, np.float32).T)       # (r, ne1)
            if A.shape[0] < 1 or A.shape[0] != B.shape[0]:
                raise ValueError(f"LoraSet: layer {layer} matrix {which}: A {np.shape(a)} and B {np.shape(b)} ranks "
                                 "differ")
            w = &self.lt.w[layer * LORA_N + which]
            if w.r:
                raise ValueError(f"LoraSet: layer {layer} matrix {which} given twice")
            w.a, w.bt, w.r, w.scale = &A[0, 0], &B[0, 0], A.shape[0], scale
            w.ne0, w.ne1 = A.shape[1], B.shape[1]
            r_max = max(r_max, w.r)
            self.arrays += [A, B]
        self.tmp_buf = np.zeros((tmp_rows, r_max), np.float32)
        self.lt.tmp = &self.tmp_buf[0, 0]
        self.lt.tmp_rows, self.lt.r_max = tmp_rows, r_max

    def __dealloc__(self):
        free(self.lt.w)

    cdef lora_t* ptr(self):
        return &self.lt

    def add(self, int layer, int which, float[:, ::1] out, const float[:, ::1] x, int n_threads=1):
        """The test twin of lora_add: out (n_tok, ne1) += the delta of x (n_tok, ne0)."""
        cdef const lora_w_t* w
        if not (0 <= layer < self.n_layer and 0 <= which < LORA_N):
            raise ValueError(f"(layer {layer}, matrix {which}) outside ({self.n_layer}, {LORA_N})")
        w = &self.lt.w[layer * LORA_N + which]
        if w.r and (x.shape[1] != w.ne0 or out.shape[1] != w.ne1 or out.shape[0] != x.shape[0]):
            raise ValueError(f"x {tuple(x.shape)[:2]} / out {tuple(out.shape)[:2]} do not fit ({w.ne0} -> {w.ne1})")
        if x.shape[0] == 0:
            return
        with nogil:
            lora_add(&self.lt, layer, which, &out[0, 0], out.shape[1], &x[0, 0], x.shape[0], n_threads)
