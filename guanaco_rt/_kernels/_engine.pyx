# cython: language_level=3
"""The forward pass of every family, compiled once for every ISA: matmul with prange over
output rows, the SiLU / GELU gate fused into it, the layer loop that strings together the
elementwise operations and attention of _ops.pyx, and the State that owns one sequence
(tokens, n_past, logits, KV cache). A family's differences are fields of model_t and
layer_t (NULL or 0 where it has none), not copies of forward().

The ISA-specific inner loops (dot products, attention's q.k and a*v) come from a
KernelSet: an ISA unit's table with the generic unit's entries filling its gaps. How
many threads each call runs on is the thread governor's (_governor.pyx): a call asks it
at its start, after each layer and at its end, and runs on the threads it answers.
Everything here runs without the GIL and allocates nothing per token: the buffers
live in state_t, sized once by State. Integer addresses never cross into Python:
buffers are typed memoryviews, the kernel table a capsule.
"""
from libc.stdint cimport uint8_t, uint16_t, int32_t, int64_t
from libc.string cimport memcpy, memmove, memset
from libc.math cimport sqrtf
from libc.stdlib cimport malloc, free
from posix.unistd cimport getpid
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME
from cython.parallel cimport prange
from cpython.pycapsule cimport PyCapsule_GetPointer
from guanaco_rt._kernels._mapguard cimport GuardedBuffer

import mmap
import threading

import numpy as np

from guanaco_rt.errors import ModelClosedError

from guanaco_rt._kernels.ggml_blocks cimport (GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1,
                                              GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q8_0, GGML_TYPE_Q3_K,
                                              GGML_TYPE_Q2_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K,
                                              GGML_TYPE_Q8_1, GGML_TYPE_COUNT, block_q8_1, QK8_1, GGML_TYPE_IQ4_NL,
                                              GGML_TYPE_IQ4_XS)
from guanaco_rt._kernels._common cimport (gr_openmp_enabled, gr_omp_max_threads, gr_omp_release, gr_cpu_has_avx2,
                                          gr_cpu_features, GR_CPU_FEATURE_NAMES)
from guanaco_rt._kernels._isa cimport isa_kernels_t, vec_dot_fn, vec_dot_x4_fn, dot_r8_fn, ISA_CAPSULE
from guanaco_rt._kernels._quants cimport type_traits_t, type_traits, row_size, from_float_fn
from guanaco_rt._kernels._lora cimport (LoraSet, lora_add, lora_has, LORA_WQ, LORA_WK, LORA_WV, LORA_WO, LORA_W1,
                                        LORA_W3, LORA_W2)
from guanaco_rt._kernels._ops cimport (team_threads, kv_layer, rmsnorm, rope, rope_freqs, silu_mul, gelu_mul,
                                       store_kv, attention_head, add_bias, head_norm, add_residual)
from guanaco_rt._kernels._governor cimport (gov_init, gov_set_threads, gov_reset, gov_prompt_start, gov_prompt_end,
                                            gov_token_start, gov_token_end, gov_layer_done, gov_last_one,
                                            gov_last_note, load_gov_t, load_reset, load_next, load_record, load_busy,
                                            pass_gov_init, pass_threads)

cdef enum:
    ROW_TILE = 32                 # rows of a one-row-layout matrix per pass over a batch (rows_q)

cdef double GATHER_SHARE = 0.25   # a batcher's pass waits for late members up to this share of the last one


# ---- the kernel set ------------------------------------------------------------------
cdef class KernelSet:
    """An ISA unit's kernel table, its gaps filled along its chain of fallback units
    (isa_list.py: avx512 -> avx2 -> generic). A type's one-row pair (vec_dot, vec_dot_x4)
    comes whole from the first unit of the chain that has its vec_dot, its 8-row pair
    (dot_r8, dot_r8_x4) whole from the first that has its dot_r8: the two kernels of a pair
    give the same bits only within one unit, and a matrix always runs on one pair."""

    def __cinit__(self, str isa, list chain):
        # chain: [(unit name, its table's capsule), ...], the unit first and generic last
        cdef const isa_kernels_t* u
        cdef int t, have_row, have_r8
        self.isa = isa
        self.chain = tuple(name for name, _ in chain)
        self.tables = tuple(cap for _, cap in chain)
        self.sources = {}
        memset(&self.k, 0, sizeof(isa_kernels_t))
        # the tables are read through their capsules (kept alive in self.tables): no address
        # becomes a Python integer
        self.k.name = (<const isa_kernels_t*>PyCapsule_GetPointer(self.tables[0], ISA_CAPSULE)).name
        for t in range(GGML_TYPE_COUNT):
            have_row = have_r8 = 0
            for i, cap in enumerate(self.tables):
                u = <const isa_kernels_t*>PyCapsule_GetPointer(cap, ISA_CAPSULE)
                if not have_row and u.types[t].vec_dot != NULL:
                    self.k.types[t].vec_dot = u.types[t].vec_dot
                    self.k.types[t].vec_dot_x4 = u.types[t].vec_dot_x4
                    self.sources[(t, "vec_dot")] = self.chain[i]
                    have_row = 1
                if not have_r8 and u.types[t].dot_r8 != NULL:
                    self.k.types[t].dot_r8 = u.types[t].dot_r8
                    self.k.types[t].dot_r8_x4 = u.types[t].dot_r8_x4
                    self.sources[(t, "dot_r8")] = self.chain[i]
                    have_r8 = 1
                if self.k.types[t].quantize == NULL:
                    self.k.types[t].quantize = u.types[t].quantize
            if self.k.types[t].quantize == NULL and type_traits(t) != NULL:
                self.k.types[t].quantize = type_traits(t).from_float
        for cap in self.tables:
            u = <const isa_kernels_t*>PyCapsule_GetPointer(cap, ISA_CAPSULE)
            if self.k.kv_scores == NULL:
                self.k.kv_scores = u.kv_scores
            if self.k.kv_mix == NULL:
                self.k.kv_mix = u.kv_mix

    def __repr__(self):
        return f"KernelSet({self.isa!r})"

    def interleaves(self, int ttype):
        """Whether matrices of this ggml type (of 8 rows or more) get their rows interleaved at load (8-row kernels)."""
        return 0 <= ttype < GGML_TYPE_COUNT and self.k.types[ttype].dot_r8 != NULL


# ---- matmul --------------------------------------------------------------------------
cdef void quantize_rows(const isa_kernels_t* K, uint8_t* out, int64_t out_stride, const float* x, int64_t n,
                        int n_tok, int vt, int nth) noexcept nogil:
    # x (n_tok, n) -> out (n_tok rows of out_stride bytes) in activation format vt. One token
    # stays on one thread: microseconds of work, less than what a fork/join can cost
    cdef int t
    cdef from_float_fn quantize = K.types[vt].quantize
    if n_tok > 1 and nth > 1:
        for t in prange(n_tok, schedule='static', num_threads=nth):
            quantize(x + t * n, out + t * out_stride, n)
    else:
        for t in range(n_tok):
            quantize(x + t * n, out + t * out_stride, n)
    if vt == GGML_TYPE_Q8_1:
        for t in range(0, n_tok - 3, 4):
            pack_q8_1_x4(out + t * out_stride, out_stride, n // QK8_1)

cdef void pack_q8_1_x4(uint8_t* rows, int64_t stride, int64_t nb) noexcept nogil:
    # the scales of 4 q8_1 rows, per block [d0 d1 d2 d3 s0 s1 s2 s3], written after the blocks
    # of the first row (the layout _isa.pxd gives vec_dot_x4): a 4-row kernel loads them at once
    cdef float* dst = <float*>(rows + nb * sizeof(block_q8_1))
    cdef const block_q8_1* y
    cdef int64_t i
    cdef int t
    for t in range(4):
        y = <const block_q8_1*>(rows + t * stride)
        for i in range(nb):
            dst[8 * i + t] = y[i].d
            dst[8 * i + 4 + t] = y[i].s

cdef int r8_parts(int type, int* size, int* step) noexcept nogil:
    # the fields of one block in the file's order: (bytes, bytes per row and step), as
    # ggml_types._r8_parts and the x8 structs of ggml_blocks.h; returns how many (0: the type
    # has no interleaved layout)
    if type == GGML_TYPE_Q4_0 or type == GGML_TYPE_IQ4_NL:      # d, qs
        size[0], step[0], size[1], step[1] = 2, 2, 16, 4
        return 2
    if type == GGML_TYPE_Q8_0:                                  # d, qs
        size[0], step[0], size[1], step[1] = 2, 2, 32, 4
        return 2
    if type == GGML_TYPE_IQ4_XS:                                # d, scales_h, scales_l, qs
        size[0], step[0], size[1], step[1], size[2], step[2], size[3], step[3] = 2, 2, 2, 2, 4, 4, 128, 4
        return 4
    if type == GGML_TYPE_Q4_1:                                  # d, m, qs
        size[0], step[0], size[1], step[1], size[2], step[2] = 2, 2, 2, 2, 16, 4
        return 3
    if type == GGML_TYPE_Q5_0:                                  # d, qh, qs
        size[0], step[0], size[1], step[1], size[2], step[2] = 2, 2, 4, 4, 16, 4
        return 3
    if type == GGML_TYPE_Q5_1:                                  # d, m, qh, qs
        size[0], step[0], size[1], step[1], size[2], step[2], size[3], step[3] = 2, 2, 2, 2, 4, 4, 16, 4
        return 4
    if type == GGML_TYPE_Q3_K:                                  # hmask, qs, scales, d
        size[0], step[0], size[1], step[1], size[2], step[2], size[3], step[3] = 32, 4, 64, 4, 12, 4, 2, 2
        return 4
    if type == GGML_TYPE_Q2_K:                                  # scales (pairs), qs, d, dmin
        size[0], step[0], size[1], step[1], size[2], step[2], size[3], step[3] = 16, 2, 64, 4, 2, 2, 2, 2
        return 4
    if type == GGML_TYPE_Q4_K:                                  # d, dmin, scales, qs
        size[0], step[0], size[1], step[1], size[2], step[2], size[3], step[3] = 2, 2, 2, 2, 12, 4, 128, 4
        return 4
    if type == GGML_TYPE_Q5_K:                                  # d, dmin, scales, qh, qs
        size[0], step[0], size[1], step[1], size[2], step[2], size[3], step[3] = 2, 2, 2, 2, 12, 4, 32, 4
        size[4], step[4] = 128, 4
        return 5
    if type == GGML_TYPE_Q6_K:                                  # ql, qh, scales (pairs), d
        size[0], step[0], size[1], step[1], size[2], step[2], size[3], step[3] = 128, 4, 64, 4, 16, 2, 2, 2
        return 4
    return 0

cdef inline void r8_move(uint8_t* grp, uint8_t* blk, int r, int n, const int* size, const int* step,
                         bint put) noexcept nogil:
    # one block of row r between the file's order (blk) and its group's interleaved block
    # (grp), as ggml_blocks.h lays out block_q4_0x8 ... block_q6_Kx8: field f of row r, in
    # steps of step_f bytes, at 8 * (its offset in a block) + 8 * step_f * k + step_f * r.
    # put: blk -> grp (repack_r8), else grp -> blk (gather_r8). The one place the layout is
    # walked; the sizes are constant, so each memcpy is one move
    cdef int f, k, at = 0
    for f in range(n):
        if step[f] == 4:
            for k in range(size[f] // 4):
                if put:
                    memcpy(grp + 8 * at + 32 * k + 4 * r, blk + at + 4 * k, 4)
                else:
                    memcpy(blk + at + 4 * k, grp + 8 * at + 32 * k + 4 * r, 4)
        else:
            for k in range(size[f] // 2):
                if put:
                    memcpy(grp + 8 * at + 16 * k + 2 * r, blk + at + 2 * k, 2)
                else:
                    memcpy(blk + at + 2 * k, grp + 8 * at + 16 * k + 2 * r, 2)
        at = at + size[f]

cdef void repack_r8(uint8_t* dst, const uint8_t* src, int type, int64_t nb, int64_t nb1, int64_t ne1,
                    int nth) noexcept nogil:
    # W (ne1 rows of nb1 bytes: nb blocks of an r8_parts type) -> dst: each whole 8 rows
    # interleaved (r8_move), group g's nb blocks at dst + 8 g nb1, so the groups take exactly
    # the bytes of the rows they replace; the last ne1 % 8 rows (the tail) follow as the file
    # has them, where they were
    cdef int size[5]
    cdef int step[5]
    cdef int n = r8_parts(type, size, step)
    cdef int64_t g, i, bs = 0, rows = ne1 // 8 * 8
    cdef int f, r
    for f in range(n):
        bs += size[f]
    for g in prange(ne1 // 8, schedule='static', num_threads=nth):
        for i in range(nb):
            for r in range(8):
                r8_move(dst + (g * nb + i) * 8 * bs, <uint8_t*>src + (8 * g + r) * nb1 + i * bs, r, n, size, step,
                        True)
    if ne1 > rows and dst != src:
        memcpy(dst + rows * nb1, src + rows * nb1, (ne1 - rows) * nb1)

cdef void gather_r8(uint8_t* dst, const tensor_t* W, int64_t row) noexcept nogil:
    # row `row` of W (r8: its groups interleaved by repack_r8) -> dst (nb1 bytes), in the
    # file's order; a tail row is a copy
    cdef int size[5]
    cdef int step[5]
    cdef int n = r8_parts(W.type, size, step)
    cdef int64_t i, g = row // 8, nb = W.ne0 // W.tt.blck_size, bs = W.nb1 // nb
    if row >= W.ne1 // 8 * 8:
        memcpy(dst, W.data + row * W.nb1, W.nb1)
        return
    for i in range(nb):
        r8_move(<uint8_t*>W.data + (g * nb + i) * 8 * bs, dst + i * bs, <int>(row % 8), n, size, step, False)

cdef void embed_rows(float* out, const tensor_t* W, const int32_t* tokens, int n_tok, uint8_t* scratch) noexcept nogil:
    # the rows `tokens` of W (n_vocab rows of ne0), dequantized -> out (n_tok, ne0). An
    # interleaved W (a tied output's) is read row by row through scratch (nb1 bytes): the
    # row's fields gathered back into the file's order, then dequantized as the file's row
    cdef int t
    for t in range(n_tok):
        if W.r8:
            gather_r8(scratch, W, tokens[t])
            W.tt.to_float(scratch, out + t * W.ne0, W.ne0)
        else:
            W.tt.to_float(W.data + tokens[t] * W.nb1, out + t * W.ne0, W.ne0)

cdef void rows_q(const isa_kernels_t* K, float* out, const tensor_t* W, int64_t lo, int64_t hi,
                 const uint8_t* xq, int64_t xq_stride, int n_tok) noexcept nogil:
    # rows lo..hi-1 of W (ne1, ne0) @ xq (n_tok, ne0)^T -> out (n_tok, ne1). Each weight row
    # (or interleaved group of 8) is read once and dotted with every token while in cache.
    # An interleaved W's groups (lo a multiple of 8, hi too or ne1) run on the 8-row kernels,
    # its tail rows (the last ne1 % 8, as the file has them) on the one-row ones.
    # One-row layouts go ROW_TILE rows at a time, each 4 tokens
    # against all of them: a batch's activations (64 tokens of a 7B layer: 278-748 KB) fill
    # the L2, and a pass over them per row left the 4-token kernel waiting on them. 7B q8_0
    # prompt 7.99 -> 9.05 tok/s (4 alternating pairs; 8 rows +11%, 32 +13% on one matrix).
    # An interleaved group already uses each token's load 8 times; tiling those did not help.
    cdef int64_t i, i0, i1, k, g_end
    cdef int t, t4, t_end
    cdef vec_dot_fn dot = K.types[W.type].vec_dot
    cdef vec_dot_x4_fn dot4 = K.types[W.type].vec_dot_x4
    cdef dot_r8_fn r8 = K.types[W.type].dot_r8, r8x4 = K.types[W.type].dot_r8_x4
    cdef int n = <int>W.ne0
    cdef int64_t out_stride = W.ne1
    cdef int n4 = (n_tok // 4) * 4
    if W.r8:
        g_end = min(hi, W.ne1 // 8 * 8)
        # 3 tokens past the groups of 4 (passes of 7, 11 sequences): one more 4-token call on
        # the last 4, the first of them again (the same bits), for 3 one-token calls: 960 ns
        # an 8-row q4_K group of 4096 against 1410 (one core, in L1)
        t_end = n_tok - 4 if n_tok - n4 == 3 and n4 else n4
        for i in range(lo, g_end, 8):
            for t4 in range(0, n4, 4):
                r8x4(n, out + t4 * out_stride + i, out_stride, W.data + i * W.nb1, xq + t4 * xq_stride, xq_stride)
            if t_end != n4:
                r8x4(n, out + t_end * out_stride + i, out_stride, W.data + i * W.nb1, xq + t_end * xq_stride,
                     xq_stride)
            else:
                for t in range(n4, n_tok):
                    r8(n, out + t * out_stride + i, out_stride, W.data + i * W.nb1, xq + t * xq_stride, xq_stride)
        lo = max(lo, g_end)
    if dot4 == NULL:
        n4 = 0
    for k in range(0, (hi - lo + ROW_TILE - 1) // ROW_TILE):
        i0 = lo + k * ROW_TILE
        i1 = min(i0 + ROW_TILE, hi)
        for t4 in range(0, n4, 4):
            for i in range(i0, i1):
                dot4(n, out + t4 * out_stride + i, out_stride, W.data + i * W.nb1, xq + t4 * xq_stride, xq_stride)
        for t in range(n4, n_tok):
            for i in range(i0, i1):
                dot(n, out + t * out_stride + i, W.data + i * W.nb1, xq + t * xq_stride)

cdef void matmul_q(const isa_kernels_t* K, float** outs, const tensor_t** Ws, int nw,
                   const uint8_t* xq, int64_t xq_stride, int n_tok, int nth, int glu) noexcept nogil:
    # Ws[w] @ xq -> outs[w] for the nw <= 3 tensors that share the input xq (wq/wk/wv, w1/w3):
    # one parallel region for all of them, over chunks of rows (whole groups of 8) that the
    # threads take as they come, 8 per thread and tensor. Not fixed slices: on a shared
    # machine one core often runs slower for a while, and a fixed half would make the other
    # wait at the join. Each row's result does not depend on who computes it.
    # (Each fork/join can cost tens of microseconds when libgomp throttles its spinning,
    # which it does once more of its threads exist than cores: e.g. sessions driven from
    # several Python threads.)
    # glu (nw == 2, w1/w3 of equal ne1; GLU_SILU or GLU_GELU): then also outs[0] = silu(outs[0])
    # * outs[1] (or gelu's), each
    # chunk of rows of both tensors in one task that gates its rows as it finishes. A separate
    # gate after the join ran on one thread while the other waited (11008 expf a token, 2% of
    # 7B q4_0 generation); per element it is the same silu_mul, so the result is too.
    cdef int c, w, k
    cdef int64_t lo, hi, work = 0, total = 0
    cdef int64_t rows[3]
    cdef int64_t chunks[3]
    for w in range(nw):
        work += Ws[w].ne0 * Ws[w].ne1 * n_tok
    nth = team_threads(nth, work // nw, 1, 1)    # the tensors' mean
    if nth == 1:
        for w in range(nw):
            rows_q(K, outs[w], Ws[w], 0, Ws[w].ne1, xq, xq_stride, n_tok)
        if glu:
            gate_rows(outs, Ws[0].ne1, 0, Ws[0].ne1, n_tok, glu)
        return
    for w in range(nw):
        rows[w] = ((Ws[w].ne1 + 8 * nth - 1) // (8 * nth) + 7) // 8 * 8
        chunks[w] = (Ws[w].ne1 + rows[w] - 1) // rows[w]
        total += chunks[w]
    if glu:
        total = chunks[0]
    for c in prange(total, schedule='dynamic', num_threads=nth):
        w = 0
        k = c
        while k >= chunks[w]:
            k = k - chunks[w]
            w = w + 1
        lo = k * rows[w]
        hi = min(Ws[w].ne1, lo + rows[w])
        rows_q(K, outs[w], Ws[w], lo, hi, xq, xq_stride, n_tok)
        if glu:
            rows_q(K, outs[1], Ws[1], lo, hi, xq, xq_stride, n_tok)
            gate_rows(outs, Ws[0].ne1, lo, hi, n_tok, glu)

cdef inline void gate_rows(float** outs, int64_t ne1, int64_t lo, int64_t hi, int n_tok, int glu) noexcept nogil:
    # rows lo..hi-1 of every token: outs[0] = silu(outs[0]) * outs[1] (GLU_GELU: gelu's), both (n_tok, ne1)
    cdef int t
    for t in range(n_tok):
        if glu == GLU_GELU:
            gelu_mul(outs[0] + t * ne1 + lo, outs[1] + t * ne1 + lo, hi - lo)
        else:
            silu_mul(outs[0] + t * ne1 + lo, outs[1] + t * ne1 + lo, hi - lo)

cdef void gate_par(float* a, const float* b, int64_t n, int nth, int glu) noexcept nogil:
    # a = silu(a) * b (GLU_GELU: gelu_mul) on up to nth threads
    cdef int64_t c, per
    cdef float* ab[2]
    ab[0], ab[1] = a, <float*>b
    nth = team_threads(nth, n, 1, 1)          # one token's n_ff: on one thread (see matmul_q)
    if nth < 2:
        gate_rows(ab, n, 0, n, 1, glu)
        return
    per = (n + nth - 1) // nth
    for c in prange(nth, schedule='static', num_threads=nth):
        if c * per < n:
            gate_rows(ab, n, c * per, min(n, c * per + per), 1, glu)

cdef void matmul_n(const model_t* m, state_t* s, float** outs, const tensor_t** Ws, int nw,
                   const float* x, int n_tok, int glu) noexcept nogil:
    # Ws[w] @ x (n_tok, ne0) -> outs[w] (n_tok, Ws[w].ne1), quantizing x once for all of them,
    # and with glu the gate outs[0] = silu(outs[0]) * outs[1] (see matmul_q); tensors that
    # pair with different activation formats run one after the other
    cdef int vt = Ws[0].tt.vec_dot_type, w, u
    for w in range(1, nw):
        if Ws[w].tt.vec_dot_type != vt or Ws[w].ne0 != Ws[0].ne0:
            for u in range(nw):
                matmul_n(m, s, &outs[u], &Ws[u], 1, x, n_tok, GLU_NONE)
            if glu:
                gate_par(outs[0], outs[1], <int64_t>n_tok * Ws[0].ne1, s.nth, glu)
            return
    quantize_rows(m.k, s.act, s.act_stride, x, Ws[0].ne0, n_tok, vt, s.nth)
    matmul_q(m.k, outs, Ws, nw, s.act, s.act_stride, n_tok, s.nth, glu)

cdef inline void matmul(const model_t* m, state_t* s, float* out, const tensor_t* W, const float* x,
                        int n_tok) noexcept nogil:
    # W @ x (n_tok, W.ne0) -> out (n_tok, W.ne1)
    matmul_n(m, s, &out, &W, 1, x, n_tok, GLU_NONE)

# ---- forward -------------------------------------------------------------------------
cdef int forward(const model_t* m, state_t* s, const int32_t* tokens, int n_tok, float* logits,
                 bint all_logits) noexcept nogil:
    # tokens (n_tok <= n_batch,) at positions n_past.. -> logits (n_tok or 1, n_vocab). On
    # success the tokens join the sequence (n_past += n_tok) and 0 is returned; 1 when
    # cancelled: the cache past n_past is then partly written, the sequence unchanged (unless
    # the sliding-window layers needed swa_refill first: then it is the tokens that refill did).
    # forward_seqs() with the one sequence, on its own buffers and threads.
    cdef seq_t q
    if swa_stale(s) and swa_refill(m, s):
        return 1
    q.s = s
    q.tokens = tokens
    q.n_tok = n_tok
    q.all_logits = logits if all_logits else NULL
    forward_seqs(m, s, &q, 1, NULL)
    return q.rc

cdef int forward_seqs(const model_t* m, state_t* w, seq_t* seqs, int n_seq, float* out) noexcept nogil:
    # The next tokens of n_seq sequences (seqs[i].s, none swa_stale), each at its own
    # positions, in one pass over the weights: the rows of all of them (sum of n_tok <=
    # w.n_batch) go through every matmul together, on w's buffers and w.nth threads;
    # RoPE, the KV cache and attention are each sequence's own. A token's result does not
    # depend on what else is in the pass (every kernel gives each row the bits it gives it
    # alone), so a sequence gets the same logits alone or in any batch.
    # The last token's logits go to each s.logits, through out (n_seq, n_vocab) when n_seq
    # > 1; a sequence with all_logits (only alone) gets every token's there too.
    # seqs[i].rc: 0, or 1 when cancelled (s.cancel, or the file changed): that sequence is
    # then unchanged past n_past. Returns how many were evaluated.
    # Each family's differences are fields of model_t / layer_t, NULL or 0 where it has none
    # (LLaMA: all of them): biases, Q/K norms, post-norms, embedding scale, RoPE mode and
    # per-layer frequencies, sliding window, GLU kind.
    cdef int E = m.n_embd, Ekv = m.n_embd_kv, Eq = m.n_embd_q
    cdef int T = 0, t, l, i, live = n_seq, first, rows
    cdef int64_t k
    cdef const layer_t* L
    cdef state_t* S
    cdef float* outs[3]
    cdef const tensor_t* ws[3]
    cdef float* dst
    for i in range(n_seq):
        S = seqs[i].s
        seqs[i].rc = 0
        seqs[i].off = T
        seqs[i].n_past = S.n_past
        kv_will_write(S, S.n_past)
        T += seqs[i].n_tok
        swa_room(m, S, seqs[i].n_tok)
        S.have_logits = 0
        embed_rows(w.x + <int64_t>seqs[i].off * E, &m.tok_embeddings, seqs[i].tokens, seqs[i].n_tok, w.emb_row)
    if m.embd_scale != 1.0:
        for k in range(<int64_t>T * E):
            w.x[k] *= m.embd_scale
    for l in range(m.n_layer):
        for i in range(n_seq):
            if seqs[i].rc == 0 and (seqs[i].s.cancel or (m.file_fault != NULL and m.file_fault[0])):
                seqs[i].rc = 1
                live -= 1
        if live == 0:
            return 0
        L = &m.layers[l]
        # attention block
        for t in range(T):
            rmsnorm(w.xb + t * E, w.x + t * E, L.attention_norm, E, m.eps)
        outs[0], outs[1], outs[2] = w.q, w.k, w.v
        ws[0], ws[1], ws[2] = &L.wq, &L.wk, &L.wv
        matmul_n(m, w, outs, ws, 3, w.xb, T, GLU_NONE)
        for i in range(n_seq):          # each sequence's own run-time adapters (LoRA), if any
            lora_rows(&seqs[i], l, LORA_WQ, w.q, Eq, w.xb, E, w.nth)
            lora_rows(&seqs[i], l, LORA_WK, w.k, Ekv, w.xb, E, w.nth)
            lora_rows(&seqs[i], l, LORA_WV, w.v, Ekv, w.xb, E, w.nth)
        add_bias(w.q, L.bq, T, Eq)
        add_bias(w.k, L.bk, T, Ekv)
        add_bias(w.v, L.bv, T, Ekv)
        for i in range(n_seq):
            S = seqs[i].s
            for t in range(seqs[i].off, seqs[i].off + seqs[i].n_tok):
                head_norm(w.q + t * Eq, L.q_norm, m.n_head, m.head_dim, m.eps)
                head_norm(w.k + t * Ekv, L.k_norm, m.n_head_kv, m.head_dim, m.eps)
                rope(w.q + t * Eq, m.n_head, m.head_dim, m.n_rot, L.freqs, seqs[i].n_past + t - seqs[i].off,
                     m.rope_neox)
                rope(w.k + t * Ekv, m.n_head_kv, m.head_dim, m.n_rot, L.freqs, seqs[i].n_past + t - seqs[i].off,
                     m.rope_neox)
            # a sliding-window layer's row of position p is p - swa_base: attention over n_past - b
            # positions sees the same window, rows lo - b.., as it would over all of them
            seqs[i].base = S.swa_base if L.n_swa else 0
            k = S.kv_off[l] + <int64_t>(seqs[i].n_past - seqs[i].base) * Ekv
            store_kv(S.k_cache, k, w.k + <int64_t>seqs[i].off * Ekv, <int64_t>seqs[i].n_tok * Ekv, S.kv_f16)
            store_kv(S.v_cache, k, w.v + <int64_t>seqs[i].off * Ekv, <int64_t>seqs[i].n_tok * Ekv, S.kv_f16)
        attention_seqs(m, seqs, n_seq, l, w.xb, w.q, w.nth)
        matmul(m, w, w.xb2, &L.wo, w.xb, T)
        for i in range(n_seq):
            lora_rows(&seqs[i], l, LORA_WO, w.xb2, E, w.xb, Eq, w.nth)
        add_residual(w.x, w.xb2, L.attn_post_norm, T, E, m.eps)
        # feed-forward block
        for t in range(T):
            rmsnorm(w.xb + t * E, w.x + t * E, L.ffn_norm, E, m.eps)
        outs[0], outs[1] = w.hb, w.hb2
        ws[0], ws[1] = &L.w1, &L.w3
        if lora_gate(seqs, n_seq, l):     # an adapter on w1 or w3: its delta goes in before the gate
            matmul_n(m, w, outs, ws, 2, w.xb, T, GLU_NONE)
            for i in range(n_seq):
                lora_rows(&seqs[i], l, LORA_W1, w.hb, m.n_ff, w.xb, E, w.nth)
                lora_rows(&seqs[i], l, LORA_W3, w.hb2, m.n_ff, w.xb, E, w.nth)
            gate_par(w.hb, w.hb2, <int64_t>T * m.n_ff, w.nth, m.glu)
        else:
            matmul_n(m, w, outs, ws, 2, w.xb, T, m.glu)     # hb = silu(w1 @ xb) * (w3 @ xb), or gelu's
        matmul(m, w, w.xb2, &L.w2, w.hb, T)
        for i in range(n_seq):
            lora_rows(&seqs[i], l, LORA_W2, w.xb2, E, w.hb, m.n_ff, w.nth)
        add_residual(w.x, w.xb2, L.ffn_post_norm, T, E, m.eps)
        w.nth = gov_layer_done(&w.gov, w.nth, l + 1, m.n_layer)
    for i in range(n_seq):
        if seqs[i].rc == 0 and (seqs[i].s.cancel or (m.file_fault != NULL and m.file_fault[0])):
            seqs[i].rc = 1
            live -= 1
    if live == 0:
        return 0
    if n_seq == 1 and w.hidden != NULL:     # embeddings: every token's normed hidden state, no logits
        for t in range(T):
            rmsnorm(w.hidden + (w.hidden_pos + t) * E, w.x + t * E, m.norm, E, m.eps)
        w.hidden_pos += T
    else:
        # the rows that need logits, normed into xb one after the other (row r <= its token's)
        rows = 0
        for i in range(n_seq):
            first = 0 if seqs[i].all_logits != NULL else seqs[i].n_tok - 1
            for t in range(seqs[i].off + first, seqs[i].off + seqs[i].n_tok):
                rmsnorm(w.xb + rows * E, w.x + t * E, m.norm, E, m.eps)
                rows += 1
        dst = out if n_seq > 1 else (seqs[0].all_logits if seqs[0].all_logits != NULL else seqs[0].s.logits)
        matmul(m, w, dst, &m.output, w.xb, rows)
        rows = 0
        for i in range(n_seq):
            rows += seqs[i].n_tok if seqs[i].all_logits != NULL else 1
            if dst + <int64_t>(rows - 1) * m.n_vocab != seqs[i].s.logits:
                memcpy(seqs[i].s.logits, dst + <int64_t>(rows - 1) * m.n_vocab, m.n_vocab * sizeof(float))
    for i in range(n_seq):
        S = seqs[i].s
        if seqs[i].rc == 0:
            memcpy(S.tokens + seqs[i].n_past, seqs[i].tokens, seqs[i].n_tok * sizeof(int32_t))
            S.n_past = seqs[i].n_past + seqs[i].n_tok
            S.have_logits = S.hidden == NULL
            kv_written(S)
    return live

cdef inline void lora_rows(const seq_t* q, int l, int which, float* out, int64_t out_stride, const float* x,
                           int64_t x_stride, int nth) noexcept nogil:
    # out += q's sequence's LoRA delta of matrix ``which`` of layer l over its rows (q.off..)
    if q.s.lora != NULL and q.rc == 0:
        lora_add(q.s.lora, l, which, out + <int64_t>q.off * out_stride, out_stride, x + <int64_t>q.off * x_stride,
                 q.n_tok, nth)

cdef bint lora_gate(const seq_t* seqs, int n_seq, int l) noexcept nogil:
    # whether a sequence of the pass has an adapter on layer l's w1 or w3
    cdef int i
    for i in range(n_seq):
        if lora_has(seqs[i].s.lora, l, LORA_W1) or lora_has(seqs[i].s.lora, l, LORA_W3):
            return True
    return False

cdef void attention_seqs(const model_t* m, seq_t* seqs, int n_seq, int l, float* out, const float* q,
                         int nth) noexcept nogil:
    # layer l's attention of every sequence's tokens (rows off.. of q and out, (T, n_embd_q)):
    # one team over the (sequence, head) pairs, each pair attention_head() on the
    # sequence's own cache and scratch row
    cdef int c, i, h
    cdef int64_t work = 0
    cdef state_t* S
    for i in range(n_seq):
        work += <int64_t>m.n_head * m.head_dim * (seqs[i].n_past - seqs[i].base + seqs[i].n_tok) * seqs[i].n_tok
    nth = team_threads(nth, work, 1, 1)
    for c in prange(n_seq * m.n_head, schedule='dynamic', num_threads=nth):
        i = c // m.n_head
        h = c % m.n_head
        S = seqs[i].s
        if seqs[i].rc == 0:
            attention_head(m.k, out + <int64_t>seqs[i].off * m.n_embd_q, q + <int64_t>seqs[i].off * m.n_embd_q,
                           kv_layer(S.k_cache, S.kv_off[l], S.kv_f16), kv_layer(S.v_cache, S.kv_off[l], S.kv_f16),
                           S.att + <int64_t>h * S.n_ctx, h, seqs[i].n_tok, seqs[i].n_past - seqs[i].base,
                           m.n_head, m.n_head_kv, m.head_dim, S.kv_f16, m.attn_scale, m.layers[l].n_swa)

cdef int prefill(const model_t* m, state_t* s, const int32_t* ids, int n, float* all_logits) noexcept nogil:
    # ids (n,) in batches of n_batch; all_logits (n, n_vocab) or NULL (last logits only, in
    # s.logits). Returns the number of tokens evaluated: n, or fewer when cancelled (every
    # complete batch stays in the sequence). Runs on the threads the governor answers; with a
    # batcher (and only the last logits wanted), in its passes, chunk tokens at a time
    # between the other sequences' tokens, so that a long prompt does not stall them.
    cdef int start = 0, nb, rc = 0
    if s.batch != NULL and all_logits == NULL and s.hidden == NULL:
        rc = batch_prefill(s.batch, m, s, ids, n)
        if rc >= 0:
            return rc
        rc = 0
    if n == 1 and all_logits == NULL:          # one token, as a decode loop of the caller's
        return 0 if decode_one(m, s, ids[0]) else 1
    s.nth = gov_prompt_start(&s.gov)
    while start < n:
        nb = min(s.n_batch, n - start)
        if forward(m, s, ids + start, nb,
                   all_logits + <int64_t>start * m.n_vocab if all_logits != NULL else s.logits,
                   all_logits != NULL):
            rc = 1
            break
        start += nb
    gov_prompt_end(&s.gov, s.nth)
    return start if rc else n

cdef int decode_one(const model_t* m, state_t* s, int32_t tok) noexcept nogil:
    # forward() of one token on the threads the governor answers, which times it; 1 when cancelled
    cdef int rc
    if swa_stale(s):          # a refill first, run and timed as the prompt it is, not as this token
        s.nth = gov_prompt_start(&s.gov)
        rc = swa_refill(m, s)
        gov_prompt_end(&s.gov, s.nth)
        if rc:
            return 1
    s.nth = gov_token_start(&s.gov, m.n_layer)
    rc = forward(m, s, &tok, 1, s.logits, False)
    gov_token_end(&s.gov, rc == 0)
    return rc


cdef int step_one(const model_t* m, state_t* s, int32_t tok) noexcept nogil:
    # the decode loops' forward() of one token: in a pass of s's batcher, else decode_one()
    cdef int rc
    if s.batch != NULL:
        rc = batch_eval(s.batch, m, s, &tok, 1)
        if rc >= 0:
            return rc
    return decode_one(m, s, tok)


# ---- passes shared by several sequences (Batcher) ----------------------------------------
cdef int batch_eval(batcher_t* b, const model_t* m, state_t* s, const int32_t* tokens, int n) noexcept nogil:
    # tokens (n <= b.max_tokens) after s's sequence, in one of b's passes -> 0, 1 when cancelled,
    # -1 when b runs no more passes (closed, or this is a forked child): the caller evaluates
    # them itself. s joins b's members (leaves with batch_leave)
    cdef slot_t slot
    cdef slot_t* tail
    cdef int rc
    if getpid() != b.pid:
        return -1
    if swa_stale(s):          # the window's positions first, on s's own buffers, as the prompt it is
        s.nth = gov_prompt_start(&s.gov)
        rc = swa_refill(m, s)
        gov_prompt_end(&s.gov, s.nth)
        if rc:
            return 1
    slot.q.s = s
    slot.q.tokens = tokens
    slot.q.n_tok = n
    slot.q.all_logits = NULL
    slot.q.rc = 0
    slot.next = NULL
    slot.done = 0
    pthread_mutex_lock(&b.mu)
    if b.closing:
        pthread_mutex_unlock(&b.mu)
        return -1
    if b.head == NULL:            # appended at the tail
        b.head = &slot
    else:
        tail = b.head
        while tail.next != NULL:
            tail = tail.next
        tail.next = &slot
    b.n_queued += 1
    if not s.member:
        s.member = 1
        b.members += 1
    pthread_cond_signal(&b.work)
    while not slot.done:
        pthread_cond_wait(&b.done, &b.mu)
    pthread_mutex_unlock(&b.mu)
    return slot.q.rc

cdef int batch_prefill(batcher_t* b, const model_t* m, state_t* s, const int32_t* ids, int n) noexcept nogil:
    # prefill() in b's passes, b.chunk tokens a pass -> the tokens evaluated (fewer when
    # cancelled), -1 when b runs no more passes before the first. s leaves b's members after
    cdef int start = 0, nb, rc = 0
    while start < n:
        nb = min(b.chunk, n - start)
        rc = batch_eval(b, m, s, ids + start, nb)
        if rc < 0 and start == 0:
            return -1
        if rc < 0:            # closed in between: the rest alone
            s.nth = gov_prompt_start(&s.gov)
            while start < n and not rc:
                nb = min(s.n_batch, n - start)
                rc = forward(m, s, ids + start, nb, s.logits, False)
                if not rc:
                    start += nb
            gov_prompt_end(&s.gov, s.nth)
            break
        if rc:
            break
        start += nb
    batch_leave(b, s)
    return start

cdef void batch_leave(batcher_t* b, state_t* s) noexcept nogil:
    # s's generation ended (or it paused): a pass no longer waits for its next tokens
    if getpid() != b.pid:
        return
    pthread_mutex_lock(&b.mu)
    if s.member:
        s.member = 0
        b.members -= 1
        pthread_cond_signal(&b.work)
    pthread_mutex_unlock(&b.mu)

cdef int batch_copy(batcher_t* b, state_t* dst, state_t* src, const int32_t* ids, int n) noexcept nogil:
    # copy_prefix() on b's thread between two passes, on the passes' threads -> the positions of
    # ids dst holds, -1 when b runs no more passes (the caller copies itself). Beside a pass, on
    # the caller's thread, a copy took a core the pass's team was using, and every join of the
    # pass waited for it: 8 requests on a 7B model, 7 copying 48 positions (48 MiB each) from
    # the first, made a 14-row pass take 1.47 s instead of 0.5 and each copy 230 ms
    cdef copy_t job
    cdef copy_t* tail
    if getpid() != b.pid:
        return -1
    job.dst = dst
    job.src = src
    job.ids = ids
    job.n = n
    job.got = 0
    job.next = NULL
    job.done = 0
    pthread_mutex_lock(&b.mu)
    if b.closing:
        pthread_mutex_unlock(&b.mu)
        return -1
    if b.copies == NULL:
        b.copies = &job
    else:
        tail = b.copies
        while tail.next != NULL:
            tail = tail.next
        tail.next = &job
    pthread_cond_signal(&b.work)
    while not job.done:
        pthread_cond_wait(&b.done, &b.mu)
    pthread_mutex_unlock(&b.mu)
    return job.got

cdef void run_copies(batcher_t* b) noexcept nogil:
    # b's thread, b.mu held (released while each copies): the queued copy_prefix() requests
    cdef copy_t* c
    cdef int rows = 0
    cdef double t0
    while b.copies != NULL:
        c = b.copies
        b.copies = c.next
        pthread_mutex_unlock(&b.mu)
        t0 = monotonic()
        c.got = copy_prefix(b.m, c.dst, c.src, c.ids, c.n, 1 if b.pg.one else b.nth, &rows)
        t0 = monotonic() - t0
        pthread_mutex_lock(&b.mu)
        if rows:
            b.copy_runs += 1
            b.copied += rows
            b.copy_s += t0
        c.done = 1
        pthread_cond_broadcast(&b.done)

cdef void batch_run(batcher_t* b) noexcept nogil:
    # the batcher's thread: pass after pass until closed (and its queue empty). A pass waits
    # for every member to queue (a sequence samples its next token between passes, and a
    # stream hands its text to Python), up to b.gather or a GATHER_SHARE of the last pass's
    # time, whichever is longer (a late member would otherwise miss the pass, and the
    # passes split into two halves that alternate), then takes the queue first come first,
    # up to max_seqs sequences and max_tokens rows (a slot that does not fit waits for the
    # next pass; smaller ones behind it go). Copies (batch_copy) go between passes, also while
    # it gathers or is paused
    cdef timespec until
    cdef slot_t* cur
    cdef slot_t** link
    cdef int n, rows, i
    cdef double t0, dt, wait
    pthread_mutex_lock(&b.mu)
    while True:
        while (b.head == NULL or b.paused) and b.copies == NULL and not b.closing:
            pthread_cond_wait(&b.work, &b.mu)
        if b.copies != NULL:
            run_copies(b)
            continue
        if b.head == NULL:
            break
        wait = max(b.gather, b.last_s * GATHER_SHARE)
        if b.n_queued < b.members and wait > 0:
            clock_gettime(CLOCK_REALTIME, &until)
            until.tv_nsec += <long>(wait * 1e9)
            until.tv_sec += until.tv_nsec // 1000000000
            until.tv_nsec = until.tv_nsec % 1000000000
            while not b.closing and b.n_queued < b.members and b.n_queued < b.max_seqs:
                if b.copies != NULL:
                    run_copies(b)
                elif pthread_cond_timedwait(&b.work, &b.mu, &until) != 0:
                    break
        n = 0
        rows = 0
        link = &b.head
        while link[0] != NULL and n < b.max_seqs:
            cur = link[0]
            if cur.q.s.cancel:                  # cancelled while it waited: nothing to evaluate
                link[0] = cur.next
                b.n_queued -= 1
                cur.q.rc = 1
                cur.done = 1
                continue
            if rows + cur.q.n_tok > b.max_tokens:
                link = &cur.next
                continue
            link[0] = cur.next
            b.n_queued -= 1
            b.taken[n] = cur
            b.seqs[n] = cur.q
            rows += cur.q.n_tok
            n += 1
        pthread_mutex_unlock(&b.mu)
        t0 = monotonic()
        if n:
            # on b.nth threads, or one while other processes hold the cores the team needs
            # (pass_threads): every one of a pass's joins would wait for a descheduled member
            b.w.nth = pass_threads(&b.pg, b.nth, t0)
            forward_seqs(b.m, b.w, b.seqs, n, b.out)
        dt = monotonic() - t0
        pthread_mutex_lock(&b.mu)
        for i in range(n):
            b.taken[i].q.rc = b.seqs[i].rc
            b.taken[i].done = 1
        if n:
            b.passes += 1
            b.seq_passes += n
            b.rows += rows
            b.busy_s += dt
            b.last_s = dt
        pthread_cond_broadcast(&b.done)
    pthread_mutex_unlock(&b.mu)


# ---- the sliding-window layers' rows ----------------------------------------------------
cdef inline bint swa_stale(const state_t* s) noexcept nogil:
    # whether the sliding-window layers lack a position the next token attends to: they hold
    # swa_base..n_past-1, it needs n_past - n_swa + 1.. (a rewind or a shift went behind swa_base)
    return s.swa_base > 0 and s.swa_base > s.n_past - s.n_swa + 1

cdef void swa_room(const model_t* m, state_t* s, int n_tok) noexcept nogil:
    # room for n_tok positions after n_past in the sliding-window layers' swa_rows rows: when
    # they would run past them, the last swa_keep positions (n_swa - 1 for the window, the rest
    # for rewinds) move down to row 0. swa_rows - swa_keep >= max(n_batch, n_swa): at most one
    # move per n_swa decoded tokens, 2 rows a token
    cdef int l, drop
    cdef int w = 2 if s.kv_f16 else 4
    cdef int64_t E = m.n_embd_kv
    if s.n_past + n_tok - s.swa_base <= s.swa_rows:
        return
    drop = s.n_past - s.swa_keep - s.swa_base
    for l in range(m.n_layer):
        if m.layers[l].n_swa:
            memmove(<uint8_t*>s.k_cache + s.kv_off[l] * w, <uint8_t*>s.k_cache + (s.kv_off[l] + drop * E) * w,
                    s.swa_keep * E * w)
            memmove(<uint8_t*>s.v_cache + s.kv_off[l] * w, <uint8_t*>s.v_cache + (s.kv_off[l] + drop * E) * w,
                    s.swa_keep * E * w)
    s.swa_base += drop

cdef int swa_refill(const model_t* m, state_t* s) noexcept nogil:
    # swa_stale: evaluate the sequence again from its first token, in batches of n_batch, every
    # layer's K/V rewritten. A position's K/V do not depend on how the tokens were batched (the
    # 4- and 8-token kernels give the one-token kernels' bits), so these are the bits a full
    # cache would hold. 1 when cancelled: the sequence is then the tokens evaluated so far
    cdef int n = s.n_past, nb
    memcpy(s.redo, s.tokens, n * sizeof(int32_t))
    s.n_past = 0
    s.swa_base = 0
    s.have_logits = 0
    if n:
        s.swa_refills += 1
    while s.n_past < n:
        nb = min(s.n_batch, n - s.n_past)
        if forward(m, s, s.redo + s.n_past, nb, s.logits, False):
            return 1
    return 0


# ---- prefix sharing: one sequence's K/V rows copied into another's ---------------------
cdef extern from *:
    """
    static inline int gr_load_acquire_int(const int* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void gr_store_release_int(int* p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    int gr_load_acquire_int(const int* p) nogil
    void gr_store_release_int(int* p, int v) nogil

cdef inline void kv_will_write(state_t* s, int p) noexcept nogil:
    # s's K/V and tokens from position p on are about to change: below its share_floor, a
    # copy_prefix() reading them from another thread finishes first, and later ones stop at p
    if p < gr_load_acquire_int(&s.share_floor):
        pthread_mutex_lock(&s.share_mu)
        gr_store_release_int(&s.share_floor, p)
        pthread_mutex_unlock(&s.share_mu)

cdef inline void kv_written(state_t* s) noexcept nogil:
    # s's rows 0..n_past-1 are complete: copy_prefix() may read them (a raise needs no lock:
    # a copy in flight read the floor before and stays below it)
    gr_store_release_int(&s.share_floor, s.n_past)

cdef int copy_prefix(const model_t* m, state_t* dst, state_t* src, const int32_t* ids, int n,
                     int nth, int* copied) noexcept nogil:
    # ids (n,): dst (idle: its owner waits for this) takes from src (which may be running in
    # another thread) the K/V rows and tokens of the longest prefix of ids that src holds,
    # past what dst holds of it itself -> the positions of ids that dst now holds. Only src's
    # rows below its share_floor are read, under its share_mu: a write there waits for the
    # copy (kv_will_write). The one lock held at a time: two owners copying from each other
    # cannot deadlock. Both States are of one model and KV type (State.copy_prefix checks);
    # the sliding-window layers' rows are not positions, so those models copy nothing. The
    # rows on nth threads (a batcher's, batch_copy), else on the caller's; copied (or NULL): how
    # many positions were copied.
    cdef int own = 0, k = 0, f
    if copied != NULL:
        copied[0] = 0
    n = min(n, dst.n_ctx)
    while own < min(n, dst.n_past) and dst.tokens[own] == ids[own]:
        own += 1
    if dst.n_swa or src == dst:
        return own
    kv_will_write(dst, own)
    pthread_mutex_lock(&src.share_mu)
    f = min(gr_load_acquire_int(&src.share_floor), n)     # acquire: the rows kv_written published
    while k < f and src.tokens[k] == ids[k]:
        k += 1
    if k > own:
        copy_rows(m, dst, src, own, k - own, nth)
        memcpy(dst.tokens + own, src.tokens + own, (k - own) * sizeof(int32_t))
    pthread_mutex_unlock(&src.share_mu)
    if k > own:
        dst.n_past = k
        dst.have_logits = 0
    kv_written(dst)
    if copied != NULL and k > own:
        copied[0] = k - own
    return max(k, own)

cdef void copy_rows(const model_t* m, state_t* dst, const state_t* src, int own, int64_t rows,
                    int nth) noexcept nogil:
    # every layer's K and V rows of positions own..own+rows-1, src -> dst: 2 n_layer copies
    cdef int j
    if nth > 1:
        for j in prange(2 * m.n_layer, schedule='dynamic', num_threads=nth):
            copy_layer_rows(m, dst, src, j // 2, j % 2, own, rows)
    else:
        for j in range(2 * m.n_layer):
            copy_layer_rows(m, dst, src, j // 2, j % 2, own, rows)

cdef inline void copy_layer_rows(const model_t* m, state_t* dst, const state_t* src, int l, int v, int own,
                                 int64_t rows) noexcept nogil:
    cdef int64_t w = 2 if dst.kv_f16 else 4, E = m.n_embd_kv
    cdef uint8_t* d = <uint8_t*>(dst.v_cache if v else dst.k_cache)
    cdef const uint8_t* a = <const uint8_t*>(src.v_cache if v else src.k_cache)
    memcpy(d + (dst.kv_off[l] + own * E) * w, a + (src.kv_off[l] + own * E) * w, rows * E * w)


cdef void shift_kv(const model_t* m, state_t* s, int n_keep, int n_discard) noexcept nogil:
    # drop positions [n_keep, n_keep + n_discard) of the sequence: later K/V entries move down
    # and their keys are re-rotated by -n_discard positions (RoPE angles add), as if they
    # had been evaluated n_discard positions earlier, in the model's RoPE mode with each
    # layer's frequencies. Values only move. The logits stay valid. A sliding-window layer
    # holds positions b = swa_base.. in its rows: those it holds of the kept ones stay where
    # they are, and what it holds from n_keep + n_discard on moves down behind them, to rows
    # from b' = its new swa_base: b when b <= n_keep, else max(n_keep, b - n_discard). Should
    # the next token's window reach kept positions behind b', the next evaluation refills.
    cdef int E = m.n_embd_kv
    cdef int l, p, b, nb
    cdef int64_t src, dst
    cdef float* tmp = s.k          # (n_embd_kv,) scratch: the first row of the new-keys buffer
    cdef const type_traits_t* f16 = type_traits(GGML_TYPE_F16)
    cdef int swa_base = s.swa_base if s.swa_base <= n_keep else max(n_keep, s.swa_base - n_discard)
    kv_will_write(s, n_keep)
    for l in range(m.n_layer):
        b = s.swa_base if m.layers[l].n_swa else 0
        nb = swa_base if m.layers[l].n_swa else 0
        for p in range(max(b, n_keep + n_discard), s.n_past):
            src = s.kv_off[l] + <int64_t>(p - b) * E
            dst = s.kv_off[l] + <int64_t>(p - n_discard - nb) * E
            if s.kv_f16:
                f16.to_float(<const uint16_t*>s.k_cache + src, tmp, E)
            else:
                memcpy(tmp, <float*>s.k_cache + src, E * sizeof(float))
            rope(tmp, m.n_head_kv, m.head_dim, m.n_rot, m.layers[l].freqs, -n_discard, m.rope_neox)
            store_kv(s.k_cache, dst, tmp, E, s.kv_f16)
            if s.kv_f16:
                memmove(<uint16_t*>s.v_cache + dst, <uint16_t*>s.v_cache + src, E * 2)
            else:
                memmove(<float*>s.v_cache + dst, <float*>s.v_cache + src, E * 4)
    memmove(s.tokens + n_keep, s.tokens + n_keep + n_discard, (s.n_past - n_keep - n_discard) * sizeof(int32_t))
    s.n_past -= n_discard
    s.swa_base = swa_base
    kv_written(s)


# ---- Python-facing objects -----------------------------------------------------------
cdef tensor_t make_tensor(const uint8_t[::1] buf, str name, tuple spec) except *:
    # spec = (byte offset in buf, ggml type, ne0, ne1), as the loader validated it; checked
    # again here, since the pointer is only as good as these numbers
    cdef tensor_t t
    cdef int64_t off = spec[0], ne0 = spec[2], ne1 = spec[3]
    t.type = spec[1]
    t.tt = type_traits(t.type)
    if t.tt == NULL or t.tt.to_float == NULL:
        raise ValueError(f"{name}: ggml type {t.type} is not a weight format")
    if ne0 < 1 or ne1 < 1 or ne0 % t.tt.blck_size:
        raise ValueError(f"{name}: shape ({ne0}, {ne1}) does not fit blocks of {t.tt.blck_size}")
    t.ne0 = ne0
    t.ne1 = ne1
    t.nb1 = row_size(t.tt, ne0)
    if off < 0 or off + t.nb1 * ne1 > buf.shape[0]:
        raise ValueError(f"{name}: bytes [{off}, {off + t.nb1 * ne1}) outside the {buf.shape[0]}-byte buffer")
    t.data = &buf[off] if t.nb1 * ne1 else NULL
    t.r8 = 0
    return t

cdef const float* f32_vector(const uint8_t[::1] buf, str name, tuple spec, int n) except NULL:
    cdef tensor_t t = make_tensor(buf, name, spec)
    if t.type != GGML_TYPE_F32 or t.ne0 != n or t.ne1 != 1:
        raise ValueError(f"{name}: expected F32 ({n},), got type {t.type} ({t.ne0}, {t.ne1})")
    return <const float*>t.data

cdef const float* optional_vector(const uint8_t[::1] buf, str name, dict tensors, int n) except? NULL:
    # f32_vector of tensors[name], NULL when the model has none
    return f32_vector(buf, name, tensors[name], n) if name in tensors else NULL

cdef check_matrix(tensor_t t, str name, int64_t ne0, int64_t ne1):
    if t.ne0 != ne0 or t.ne1 != ne1:
        raise ValueError(f"{name}: shape ({t.ne0}, {t.ne1}), expected ({ne0}, {ne1})")


cdef class Engine:
    """The model's weights as C pointers into one read-only buffer, with the kernels to
    run them. ``tensors`` maps each tensor name to (byte offset in ``buf``, ggml type,
    ne0, ne1). Read-only, shared by any number of States.

    With ``repack``, the weight matrices whose type the kernel set has 8-row kernels for
    (dot_r8) get each 8 rows interleaved at load, on ``n_threads`` threads: into arrays of
    their own, or, given ``inplace`` (a writable view of the memory ``buf`` shows, which the
    caller owns), over their own bytes. ``repacked`` lists the (offset, bytes) ranges of
    ``buf`` that the engine no longer reads; ``release(offset, bytes)``, if given, is called
    with each as soon as it is done (the caller can then drop those pages: no two copies at
    once). Each whole 8 rows are interleaved; a matrix's last ne1 % 8 rows stay as they are,
    after its groups. A tied output is interleaved as any matrix, and the token lookup reads
    its rows back in the file's order; untied token embeddings stay as they are (they are
    only looked up). ``guard``: the GuardedBuffer ``buf`` reads through; once its
    file shrinks under it, every evaluation and decode loop stops at its next layer as if
    cancelled (the Model then raises ModelFileChangedError for that call).

    The family (gguf_model.py) comes as keys of ``hparams``, each defaulting to LLaMA's:
    ``head_dim`` (n_embd // n_head), ``rope_neox`` (False), ``glu`` ("silu" or "gelu"),
    ``embd_scale`` (1), ``attn_scale`` (0: 1/sqrt(head_dim)), ``n_swa`` and ``swa_pattern``
    (layer l has the window when l % swa_pattern < swa_pattern - 1; 0: none) with
    ``rope_base_swa`` / ``rope_freq_scale_swa`` for those layers; and as optional tensors:
    ``rope_freqs.weight`` (n_rot/2: each frequency divided by its factor, Llama 3),
    per layer ``attention.wq.bias`` / ``wk`` / ``wv``, ``attention.q_norm.weight`` /
    ``k_norm``, ``attention_post_norm.weight`` and ``ffn_post_norm.weight``.
    """

    def __cinit__(self, dict hparams, const uint8_t[::1] buf, dict tensors, KernelSet kernels, float eps=1e-6,
                  double rope_base=10000.0, double rope_freq_scale=1.0, bint repack=True, object inplace=None,
                  int n_threads=1, object release=None, GuardedBuffer guard=None, dict overrides=None):
        cdef int l, E, Ekv, Eq, i, nw, use, n_swa, swa_pattern
        cdef double dt
        cdef layer_t* L
        cdef tensor_t* ws[7]
        cdef load_gov_t lg
        cdef const float* factors
        self.m.layers = NULL
        self.buf = buf
        self.copies = []
        self.guard = guard
        self.m.file_fault = guard.fault_flag() if guard is not None else NULL
        self.kernels = kernels
        self.m.k = &kernels.k
        self.m.n_vocab = hparams["n_vocab"]
        self.m.n_embd = E = hparams["n_embd"]
        self.m.n_head = hparams["n_head"]
        self.m.n_head_kv = hparams.get("n_head_kv", self.m.n_head)
        self.m.n_layer = hparams["n_layer"]
        self.m.n_rot = hparams["n_rot"]
        self.m.n_ff = hparams["n_ff"]
        if min(self.m.n_vocab, E, self.m.n_head, self.m.n_head_kv, self.m.n_layer, self.m.n_ff) < 1 or \
                E % self.m.n_head or self.m.n_head % self.m.n_head_kv:
            raise ValueError(f"bad model shape {hparams}")
        self.m.head_dim = hparams.get("head_dim", E // self.m.n_head)
        if self.m.head_dim < 1:
            raise ValueError(f"bad model shape {hparams}")
        self.m.n_embd_kv = Ekv = self.m.n_head_kv * self.m.head_dim
        self.m.n_embd_q = Eq = self.m.n_head * self.m.head_dim
        self.m.rope_neox = hparams.get("rope_neox", False)
        glu = hparams.get("glu", "silu")
        if glu not in ("silu", "gelu"):
            raise ValueError(f"glu {glu!r} is not silu or gelu")
        self.m.glu = GLU_GELU if glu == "gelu" else GLU_SILU
        self.m.embd_scale = hparams.get("embd_scale", 1.0)
        self.m.attn_scale = hparams.get("attn_scale", 0.0) or 1.0 / sqrtf(<float>self.m.head_dim)
        n_swa, swa_pattern = hparams.get("n_swa", 0), hparams.get("swa_pattern", 0)
        if self.m.n_rot < 0 or self.m.n_rot % 2 or self.m.n_rot > self.m.head_dim:
            raise ValueError(f"n_rot {self.m.n_rot} must be even and <= head_dim {self.m.head_dim}")
        self.m.eps = eps
        self.m.tok_embeddings = make_tensor(buf, "tok_embeddings.weight", tensors["tok_embeddings.weight"])
        # a tied output (no output.weight) multiplies by the token embeddings
        out_spec = tensors.get("output.weight", tensors["tok_embeddings.weight"])
        self.m.output = make_tensor(buf, "output.weight", out_spec)
        check_matrix(self.m.tok_embeddings, "tok_embeddings.weight", E, self.m.n_vocab)
        check_matrix(self.m.output, "output.weight", E, self.m.n_vocab)
        self.m.norm = f32_vector(buf, "norm.weight", tensors["norm.weight"], E)
        # row 0: every layer's RoPE frequencies; row 1: the sliding-window layers' (Gemma 3)
        self.freqs = np.zeros((2, max(1, self.m.n_rot // 2)), np.float64)
        rope_freqs(&self.freqs[0, 0], self.m.n_rot, rope_base)
        rope_freqs(&self.freqs[1, 0], self.m.n_rot, hparams.get("rope_base_swa", rope_base))
        for i in range(self.m.n_rot // 2):      # linear RoPE scaling: positions divided by the factor
            self.freqs[0, i] *= rope_freq_scale
            self.freqs[1, i] *= hparams.get("rope_freq_scale_swa", rope_freq_scale)
        if "rope_freqs.weight" in tensors:      # Llama 3: ggml_rope_ext's freq_factors divide each frequency
            factors = f32_vector(buf, "rope_freqs.weight", tensors["rope_freqs.weight"], max(1, self.m.n_rot // 2))
            for i in range(self.m.n_rot // 2):
                self.freqs[0, i] /= factors[i]
                self.freqs[1, i] /= factors[i]
        self.m.freqs = &self.freqs[0, 0]
        self.m.layers = <layer_t*>malloc(self.m.n_layer * sizeof(layer_t))
        if self.m.layers == NULL:
            raise MemoryError()
        for l in range(self.m.n_layer):
            p = f"layers.{l}."
            L = &self.m.layers[l]
            L.wq = self._weight(buf, p + "attention.wq.weight", tensors, overrides)
            L.wk = self._weight(buf, p + "attention.wk.weight", tensors, overrides)
            L.wv = self._weight(buf, p + "attention.wv.weight", tensors, overrides)
            L.wo = self._weight(buf, p + "attention.wo.weight", tensors, overrides)
            L.w1 = self._weight(buf, p + "feed_forward.w1.weight", tensors, overrides)
            L.w2 = self._weight(buf, p + "feed_forward.w2.weight", tensors, overrides)
            L.w3 = self._weight(buf, p + "feed_forward.w3.weight", tensors, overrides)
            check_matrix(L.wq, p + "attention.wq.weight", E, Eq)
            check_matrix(L.wk, p + "attention.wk.weight", E, Ekv)
            check_matrix(L.wv, p + "attention.wv.weight", E, Ekv)
            check_matrix(L.wo, p + "attention.wo.weight", Eq, E)
            check_matrix(L.w1, p + "feed_forward.w1.weight", E, self.m.n_ff)
            check_matrix(L.w3, p + "feed_forward.w3.weight", E, self.m.n_ff)
            check_matrix(L.w2, p + "feed_forward.w2.weight", self.m.n_ff, E)
            L.attention_norm = f32_vector(buf, p + "attention_norm.weight", tensors[p + "attention_norm.weight"], E)
            L.ffn_norm = f32_vector(buf, p + "ffn_norm.weight", tensors[p + "ffn_norm.weight"], E)
            L.bq = optional_vector(buf, p + "attention.wq.bias", tensors, Eq)
            L.bk = optional_vector(buf, p + "attention.wk.bias", tensors, Ekv)
            L.bv = optional_vector(buf, p + "attention.wv.bias", tensors, Ekv)
            L.q_norm = optional_vector(buf, p + "attention.q_norm.weight", tensors, self.m.head_dim)
            L.k_norm = optional_vector(buf, p + "attention.k_norm.weight", tensors, self.m.head_dim)
            L.attn_post_norm = optional_vector(buf, p + "attention_post_norm.weight", tensors, E)
            L.ffn_post_norm = optional_vector(buf, p + "ffn_post_norm.weight", tensors, E)
            L.n_swa = n_swa if swa_pattern > 0 and l % swa_pattern < swa_pattern - 1 else 0
            L.freqs = &self.freqs[1 if L.n_swa else 0, 0]
        self.repacked = []
        self.load_threads = {"threads": n_threads, "one_thread_tensors": 0, "multi_thread_tensors": 0,
                             "one_thread_s": 0.0, "multi_thread_s": 0.0, "busy_core_found": False}
        if not repack:
            return
        load_reset(&lg, max(1, n_threads))
        for l in range(self.m.n_layer + 1):
            nw = 7
            if l < self.m.n_layer:
                L = &self.m.layers[l]
                ws[0], ws[1], ws[2], ws[3], ws[4], ws[5], ws[6] = &L.wq, &L.wk, &L.wv, &L.wo, &L.w1, &L.w3, &L.w2
            else:
                # a tied output is the token embeddings: interleaved once, for both (embed_rows
                # reads its rows back in the file's order); untied embeddings are only looked up
                ws[0] = &self.m.output
                nw = 1
            for i in range(nw):
                use = load_next(&lg)
                dt = self._interleave(ws[i], inplace, use, release)
                if dt >= 0:
                    load_record(&lg, use, dt, ws[i].nb1 * ws[i].ne1)
                    self.load_threads["one_thread_tensors" if use == 1 else "multi_thread_tensors"] += 1
                    self.load_threads["one_thread_s" if use == 1 else "multi_thread_s"] += dt
        if out_spec is tensors["tok_embeddings.weight"]:
            self.m.tok_embeddings = self.m.output
        self.load_threads["threads"] = 1 if n_threads < 2 or lg.one else n_threads
        if load_busy(&lg):
            gov_last_note(&self.gov_last, 1)
            self.load_threads["busy_core_found"] = True

    cdef tensor_t _weight(self, const uint8_t[::1] buf, str name, dict tensors, dict overrides) except *:
        # a layer matrix: its bytes in buf, or, when overrides has it (LoRA merged at load:
        # a writable uint8 array of the same type and shape, which the engine keeps), there
        cdef uint8_t[::1] own
        if overrides is None or name not in overrides:
            return make_tensor(buf, name, tensors[name])
        own = overrides[name]
        self.copies.append(overrides[name])
        return make_tensor(own, name, (0,) + tuple(tensors[name][1:]))

    cdef double _interleave(self, tensor_t* t, object inplace, int nth, object release) except? -2:
        # t's rows, 8 at a time, into the layout of its dot_r8 kernel (repack_r8) on nth
        # threads, the last ne1 % 8 as they are; -> the seconds that took (load_record), -1
        # when t is not interleaved (fewer than 8 rows run on the one-row kernels)
        cdef int64_t off = t.data - &self.buf[0], n = t.nb1 * t.ne1
        cdef uint8_t[::1] dst, scratch, mine
        cdef const uint8_t* src = t.data
        cdef double t0, dt
        if self.m.k.types[t.type].dot_r8 == NULL or t.ne1 < 8:
            return -1
        if not 0 <= off < self.buf.shape[0]:
            # an override (_weight): interleaved over its own bytes, which are the engine's
            for arr in self.copies:
                mine = arr
                if &mine[0] == t.data:
                    scratch = np.array(mine)
                    with nogil:
                        t0 = monotonic()
                        repack_r8(&mine[0], &scratch[0], t.type, t.ne0 // t.tt.blck_size, t.nb1, t.ne1, nth)
                        dt = monotonic() - t0
                    t.r8 = 1
                    return dt
            raise ValueError("a weight outside the model's buffer that the engine does not own")
        if inplace is not None:
            dst = inplace[off:off + n]
            scratch = np.array(dst)          # one tensor's worth
            src = &scratch[0]
        else:
            # anonymous memory of its own, in huge pages where the kernel gives them on request
            # (THP "madvise"): a token streams every byte, and 4 KiB pages cost a TLB walk each
            anon = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE)
            if hasattr(mmap, "MADV_HUGEPAGE"):
                anon.madvise(mmap.MADV_HUGEPAGE)
            dst = np.frombuffer(anon, np.uint8)
            self.copies.append(anon)
        with nogil:
            t0 = monotonic()
            repack_r8(&dst[0], src, t.type, t.ne0 // t.tt.blck_size, t.nb1, t.ne1, nth)
            dt = monotonic() - t0
        t.data = &dst[0]
        t.r8 = 1
        self.repacked.append((off, n))
        if release is not None:
            release(off, n)
        return dt

    def __dealloc__(self):
        free(self.m.layers)

    @property
    def n_vocab(self):
        return self.m.n_vocab


def lazy_zeros(int64_t n):
    """uint8 (n,) of zeros in anonymous memory that the kernel commits a 4 KiB page at a time
    as it is written: a KV cache costs the memory of the positions it holds, not of n_ctx
    (numpy's zeros ask for huge pages on large arrays, which commit 2 MiB of every layer's
    rows at its first token: 118 MiB a demo-model session of n_ctx 4096, against 3 MiB)"""
    if n < 1:
        return np.zeros(0, np.uint8)
    return np.frombuffer(mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE), np.uint8)


cdef class State:
    """One sequence on an Engine: its tokens, n_past, last logits and KV cache, with the
    scratch buffers of the forward pass, sized once (n_ctx, n_batch). The only owner of
    the sequence: prefill, decode (_decode.Decoder), shift and KV export/import all go
    through it. ``cancel()`` may be called from any thread.

    A sliding-window layer (Gemma 3's local layers) keeps K/V rows for its window, the
    positions a rewind may go back to, and a batch: 2 n_swa - 1 + max(n_batch, n_swa) rows
    instead of n_ctx (state_t.swa_rows), unless ``swa_full`` or n_ctx is no more. A rewind
    (truncate) or a shift whose next window reaches behind what those rows hold makes the
    next evaluation evaluate the sequence again first: the same logits, at a prompt's cost
    (``kv_stats()["refills"]`` counts them).
    """

    def __cinit__(self, Engine engine, int n_ctx, int n_batch, bint kv_f16=False, int n_threads=1,
                  bint swa_full=False):
        cdef model_t* m
        cdef int E, l
        cdef int64_t total = 0
        pthread_mutex_init(&self.s.share_mu, NULL)     # first: __dealloc__ destroys it whatever fails below
        if engine is None:       # a closed Model's: there are no weights to run
            raise ModelClosedError("State needs an Engine (a loaded model's weights), got None")
        m = &engine.m
        E = m.n_embd
        if n_ctx < 1 or not 1 <= n_batch <= n_ctx:
            raise ValueError(f"n_ctx {n_ctx} and n_batch {n_batch} must satisfy 1 <= n_batch <= n_ctx")
        self.engine = engine
        self.s.n_swa = max([m.layers[l].n_swa for l in range(m.n_layer)])
        self.s.swa_rows = self.s.swa_keep = n_ctx
        # a slide keeps the window behind the next token and n_swa more for rewinds
        if self.s.n_swa and not swa_full and 2 * <int64_t>self.s.n_swa - 1 + max(n_batch, self.s.n_swa) < n_ctx:
            self.s.swa_keep = 2 * self.s.n_swa - 1
            self.s.swa_rows = self.s.swa_keep + max(n_batch, self.s.n_swa)
        self.kv_off_buf = np.zeros(m.n_layer, np.int64)
        for l in range(m.n_layer):
            self.kv_off_buf[l] = total
            total += <int64_t>(self.s.swa_rows if m.layers[l].n_swa else n_ctx) * m.n_embd_kv
        self.k_cache = lazy_zeros(total * (2 if kv_f16 else 4))
        self.v_cache = lazy_zeros(total * (2 if kv_f16 else 4))
        self.redo_buf = np.zeros(n_ctx if self.s.n_swa else 1, np.int32)
        self.tokens_buf = np.zeros(n_ctx, np.int32)
        self.logits_buf = np.zeros(m.n_vocab, np.float32)
        self.x, self.xb2 = [np.zeros((n_batch, E), np.float32) for _ in range(2)]
        self.xb = np.zeros((n_batch, max(E, m.n_embd_q)), np.float32)
        self.q = np.zeros((n_batch, m.n_embd_q), np.float32)
        self.k, self.v = [np.zeros((n_batch, m.n_embd_kv), np.float32) for _ in range(2)]
        self.att = np.zeros((m.n_head, n_ctx), np.float32)
        self.hb = np.zeros((n_batch, m.n_ff), np.float32)
        self.hb2 = np.zeros((n_batch, m.n_ff), np.float32)
        # activations of any format take at most 4 bytes per element (f32 for f16 weights; q8_1
        # 1.25, plus 1 in the first row of a group of 4 for its packed scales, pack_q8_1_x4)
        self.s.act_stride = max(m.n_embd, m.n_embd_q, m.n_ff) * 4
        self.act = np.zeros(n_batch * self.s.act_stride, np.uint8)
        self.emb_row = np.zeros(m.tok_embeddings.nb1, np.uint8)
        self.s.n_ctx = n_ctx
        self.s.n_batch = n_batch
        gov_init(&self.s.gov, &engine.gov_last, n_threads, 1)
        self.s.nth = self.s.gov.n
        self.s.kv_f16 = kv_f16
        self.s.k_cache = &self.k_cache[0]
        self.s.v_cache = &self.v_cache[0]
        self.s.kv_off = &self.kv_off_buf[0]
        self.s.redo = &self.redo_buf[0]
        self.s.tokens = &self.tokens_buf[0]
        self.s.logits = &self.logits_buf[0]
        self.s.x, self.s.xb, self.s.xb2 = &self.x[0, 0], &self.xb[0, 0], &self.xb2[0, 0]
        self.s.q, self.s.k, self.s.v = &self.q[0, 0], &self.k[0, 0], &self.v[0, 0]
        self.s.att = &self.att[0, 0]
        self.s.hb, self.s.hb2 = &self.hb[0, 0], &self.hb2[0, 0]
        self.s.act = &self.act[0]
        self.s.emb_row = &self.emb_row[0]

    # -- the sequence ----------------------------------------------------------------
    @property
    def n_past(self):
        return self.s.n_past

    @property
    def n_ctx(self):
        return self.s.n_ctx

    @property
    def n_embd_kv(self):
        return self.engine.m.n_embd_kv

    def tokens(self):
        """The ids at positions 0..n_past-1, as a list."""
        return np.asarray(self.tokens_buf[:self.s.n_past]).tolist()

    @property
    def has_logits(self):
        """Whether logits() is valid, without copying it."""
        return bool(self.s.have_logits)

    def logits(self):
        """float32 (n_vocab,) after the last token, a copy; None when not valid (nothing
        evaluated since the sequence was cut, or the last evaluation was cancelled)."""
        return np.array(self.logits_buf) if self.s.have_logits else None

    cdef int _check_new(self, const int32_t[::1] ids, str what) except -1:
        # ids to evaluate after the sequence: at least one, room for them, each in the vocab -> n
        cdef int n = ids.shape[0], i
        cdef int n_vocab = self.engine.m.n_vocab
        if n < 1:
            raise ValueError(f"{what} needs at least one token")
        if self.s.n_past + n > self.s.n_ctx:
            raise ValueError(f"{self.s.n_past} tokens + {n} new > n_ctx {self.s.n_ctx}")
        for i in range(n):
            if not 0 <= ids[i] < n_vocab:
                raise ValueError(f"token id {ids[i]} outside [0, {n_vocab})")
        return n

    def prefill(self, const int32_t[::1] ids, float[:, ::1] all_logits=None):
        """Evaluate ``ids`` after the sequence, in batches of n_batch, without the GIL.

        all_logits: (len(ids), n_vocab) to receive every position's logits, or None.
        Returns how many were evaluated: all of them, or fewer when cancelled (every
        complete batch stays in the sequence).
        """
        cdef int n = self._check_new(ids, "prefill"), done
        cdef int n_vocab = self.engine.m.n_vocab
        if all_logits is not None and (all_logits.shape[0] != n or all_logits.shape[1] != n_vocab):
            raise ValueError(f"all_logits must be ({n}, {n_vocab})")
        with nogil:
            done = prefill(&self.engine.m, &self.s, &ids[0], n, &all_logits[0, 0] if all_logits is not None else NULL)
        return done

    def hidden(self, const int32_t[::1] ids, float[:, ::1] out):
        """Evaluate ``ids`` after the sequence as prefill() does, without the GIL, writing each
        token's hidden state after the final norm (what embeddings pool) to ``out``
        (len(ids), n_embd) instead of computing logits (the logits are then invalid).
        Returns how many were evaluated (fewer when cancelled)."""
        cdef int n = self._check_new(ids, "hidden"), done
        if out.shape[0] != n or out.shape[1] != self.engine.m.n_embd:
            raise ValueError(f"out must be ({n}, {self.engine.m.n_embd})")
        self.s.hidden, self.s.hidden_pos = &out[0, 0], 0
        self.s.have_logits = 0
        try:
            with nogil:
                done = prefill(&self.engine.m, &self.s, &ids[0], n, NULL)
        finally:
            self.s.hidden = NULL
        return done

    def truncate(self, int n):
        """Keep the first n tokens of the sequence (their K/V stay; later entries are
        overwritten by the next evaluation). Sliding-window layers that no longer hold the
        window behind n make the next evaluation refill (see the class)."""
        if not 0 <= n <= self.s.n_past:
            raise ValueError(f"truncate to {n} outside [0, n_past {self.s.n_past}]")
        if n < self.s.n_past:
            self.s.n_past = n
            self.s.have_logits = 0

    def shift(self, int n_keep, int n_discard):
        """Drop positions [n_keep, n_keep + n_discard) (see shift_kv)."""
        if not (0 <= n_keep and 0 < n_discard and n_keep + n_discard <= self.s.n_past):
            raise ValueError(f"bad shift: n_keep={n_keep} n_discard={n_discard} n_past={self.s.n_past}")
        with nogil:
            shift_kv(&self.engine.m, &self.s, n_keep, n_discard)

    def export_kv(self):
        """(k, v): lists of copies of each layer's used cache entries, (rows, n_embd_kv) float32
        or float16: the last ``rows`` positions of the sequence, all n_past of them except in
        a sliding-window layer, which holds fewer once its rows have slid (kv_stats)"""
        cdef int l
        k, v = [], []
        for l in range(self.engine.m.n_layer):
            rows = max(0, self.s.n_past - (self.s.swa_base if self.engine.m.layers[l].n_swa else 0))
            k.append(self._kv_rows(self.k_cache, l)[:rows].copy())
            v.append(self._kv_rows(self.v_cache, l)[:rows].copy())
        return k, v

    def import_kv(self, tokens, k, v, logits=None):
        """Replace the sequence: ``tokens`` with K/V entries ``k``, ``v`` (as export_kv gives them:
        per layer (rows, n_embd_kv) in the cache's dtype, the last rows of the n tokens; rows n
        in a layer without a window, one number for all the sliding-window layers) and, if
        given, the logits after the last token. A sliding-window layer keeps the last swa_keep
        rows it is given; given fewer than its window needs, the next evaluation refills.
        All or nothing."""
        cdef model_t* m = &self.engine.m
        cdef int l
        ids = np.asarray(tokens, np.int64).reshape(-1)
        n = ids.size
        dt = np.float16 if self.s.kv_f16 else np.float32
        if n > self.s.n_ctx:
            raise ValueError(f"{n} tokens > n_ctx {self.s.n_ctx}")
        if n and (ids.min() < 0 or ids.max() >= m.n_vocab):
            raise ValueError(f"token ids outside [0, {m.n_vocab})")
        if len(k) != m.n_layer or len(v) != m.n_layer:
            raise ValueError(f"K/V must have {m.n_layer} layers, got {len(k)} and {len(v)}")
        swa_rows = set()
        for l in range(m.n_layer):
            for arr in (k[l], v[l]):
                if arr.dtype != dt or arr.ndim != 2 or arr.shape[1] != m.n_embd_kv or arr.shape[0] != k[l].shape[0] \
                        or not 0 <= arr.shape[0] <= n or (not m.layers[l].n_swa and arr.shape[0] != n):
                    raise ValueError(f"layer {l}: K/V must be {np.dtype(dt).name} (rows, {m.n_embd_kv}) with rows "
                                     f"{n}" + (" or fewer (a sliding-window layer)" if m.layers[l].n_swa else "") +
                                     f", got {arr.dtype} {arr.shape}")
            if m.layers[l].n_swa:
                swa_rows.add(k[l].shape[0])
        if len(swa_rows) > 1:
            raise ValueError(f"the sliding-window layers' K/V must hold as many rows each, got {sorted(swa_rows)}")
        if logits is not None and np.shape(logits) != (m.n_vocab,):
            raise ValueError(f"logits must be ({m.n_vocab},)")
        keep = min(swa_rows.pop() if swa_rows else 0, self.s.swa_keep)
        kv_will_write(&self.s, 0)
        for l in range(m.n_layer):
            rows = keep if m.layers[l].n_swa else n
            self._kv_rows(self.k_cache, l)[:rows] = k[l][k[l].shape[0] - rows:]
            self._kv_rows(self.v_cache, l)[:rows] = v[l][v[l].shape[0] - rows:]
        np.asarray(self.tokens_buf)[:n] = ids
        self.s.n_past = n
        self.s.swa_base = n - keep if self.s.n_swa else 0
        self.s.have_logits = 0
        kv_written(&self.s)
        if logits is not None:
            np.asarray(self.logits_buf)[:] = logits
            self.s.have_logits = 1

    cdef _kv_rows(self, uint8_t[::1] cache, int l):
        # layer l's rows of cache, (rows, n_embd_kv) float32 or float16
        cdef model_t* m = &self.engine.m
        rows = self.s.swa_rows if m.layers[l].n_swa else self.s.n_ctx
        w = 2 if self.s.kv_f16 else 4
        return np.asarray(cache)[self.s.kv_off[l] * w:(self.s.kv_off[l] + rows * m.n_embd_kv) * w].view(
            np.float16 if self.s.kv_f16 else np.float32).reshape(rows, m.n_embd_kv)

    def kv_stats(self):
        """The KV cache: ``bytes`` allocated (keys and values), each layer's ``rows`` and
        ``window`` (0: none), the positions the sliding-window layers hold (``swa_first``..n_past),
        how many positions a slide keeps (``swa_keep``), and how many times they made an
        evaluation refill the sequence (``refills``)."""
        cdef model_t* m = &self.engine.m
        return {"bytes": self.k_cache.shape[0] + self.v_cache.shape[0],
                "rows": [self.s.swa_rows if m.layers[l].n_swa else self.s.n_ctx for l in range(m.n_layer)],
                "window": [m.layers[l].n_swa for l in range(m.n_layer)], "swa_first": self.s.swa_base,
                "swa_keep": self.s.swa_keep, "refills": self.s.swa_refills}

    # -- a batcher's passes -------------------------------------------------------------
    def attach(self, Batcher batcher):
        """Decode and evaluate prompts (those that want only the last logits) in
        ``batcher``'s passes, with the other sequences attached to it; None: alone again.
        The logits are the same bits either way. Not while a call runs on this State."""
        if batcher is not None and batcher.engine is not self.engine:
            raise ValueError("the Batcher runs another Engine's weights")
        self.leave()
        self.batcher = batcher
        self.s.batch = &batcher.b if batcher is not None else NULL

    def leave(self):
        """This sequence's generation paused or ended: the batcher's passes no longer wait
        for its next token (the next one it sends joins again)."""
        if self.s.batch != NULL:
            with nogil:
                batch_leave(self.s.batch, &self.s)

    def __dealloc__(self):
        if self.s.batch != NULL and self.s.member:
            batch_leave(self.s.batch, &self.s)
        pthread_mutex_destroy(&self.s.share_mu)

    def copy_prefix(self, State src, const int32_t[::1] ids):
        """Take from ``src`` (a State of the same Engine and KV type, which may be running in
        another thread) the K/V entries and tokens of the longest prefix of ``ids`` it holds,
        beyond what this State holds of it itself, without the GIL; the logits become invalid
        when it takes any. Returns how many positions of ``ids`` this State now holds. Models
        with sliding-window layers take none. Only this State's own thread may call it (it
        must not be running)."""
        cdef int n = ids.shape[0], got
        if src is None or src.engine is not self.engine:
            raise ValueError("copy_prefix: the source must be a State of the same Engine")
        if src.s.kv_f16 != self.s.kv_f16:
            raise ValueError(f"copy_prefix: the source's KV cache is {'f16' if src.s.kv_f16 else 'f32'}, "
                             f"this one's {'f16' if self.s.kv_f16 else 'f32'}")
        if n == 0:
            return 0
        with nogil:
            got = -1
            if self.s.batch != NULL:       # between its batcher's passes, on their threads
                got = batch_copy(self.s.batch, &self.s, &src.s, &ids[0], n)
            if got < 0:
                got = copy_prefix(&self.engine.m, &self.s, &src.s, &ids[0], n, 1, NULL)
        return got

    def set_lora(self, object lora):
        """Run-time LoRA adapters for the next evaluations: a _lora.LoraSet built for this
        model's shapes (lora.py), or None for none. The LoraSet's scratch is this State's
        while set: give each State its own."""
        cdef LoraSet ls
        cdef model_t* m = &self.engine.m
        if lora is None:
            self.s.lora = NULL
            self.lora = None
            return
        ls = lora
        want = (m.n_layer, m.n_embd, m.n_embd_q, m.n_embd_kv, m.n_ff)
        if ls.shape != want:
            raise ValueError(f"the adapters were built for (n_layer, n_embd, n_embd_q, n_embd_kv, n_ff) {ls.shape}, "
                             f"this model is {want}")
        self.s.lora = ls.ptr()
        self.lora = ls

    # -- threads and cancel ------------------------------------------------------------
    @property
    def n_threads(self):
        """The threads every call may use (at least 1); the governor picks 1 or this many."""
        return self.s.gov.n

    @n_threads.setter
    def n_threads(self, int n):
        gov_set_threads(&self.s.gov, n)
        self.s.nth = self.s.gov.n

    @property
    def adaptive_threads(self):
        """Whether decoding picks 1 or n_threads threads per token by timing (gov_record)."""
        return bool(self.s.gov.on)

    @adaptive_threads.setter
    def adaptive_threads(self, bint on):
        gov_reset(&self.s.gov, on)

    def thread_stats(self):
        """The governor's view: its n_threads; tokens decoded on one / on n_threads threads,
        their seconds per token, whether one thread is the current setting, and how many
        times a prompt or a first token found a core busy (gov_probe_check);
        ``model_on_one_thread``: whether the model's sessions (or its load) last found one
        thread best, within the last 10 s: a new session then starts there."""
        cdef gov_t* g = &self.s.gov
        return {"n_threads": g.n, "one_thread_tokens": g.n_one, "multi_thread_tokens": g.n_multi,
                "s_per_token_one": g.t_one, "s_per_token_multi": g.t_multi, "on_one_thread": bool(g.one),
                "busy_core_found": g.n_busy, "model_on_one_thread": bool(gov_last_one(g.last))}

    def cancel(self, bint flag=True):
        # a plain int store; the forward pass reads it between layers, the decode loop per token
        self.s.cancel = 1 if flag else 0


cdef class Batcher:
    """Passes over the weights shared by several sequences of one Engine: each State
    attached to it (State.attach) sends its decoded tokens and prompt chunks here, and
    the batcher's thread evaluates what is queued in one forward_seqs() pass, its
    weights read once for all of them, on ``n_threads`` threads. A sequence's logits are
    the same bits alone or in a pass with any others.

    ``max_seqs``: sequences a pass takes at most; ``chunk``: the tokens a prompt adds to a
    pass (a long prompt goes chunk by chunk between the others' tokens); ``gather_ms``:
    how long a pass waits for the sequences in a generation to send their next token."""

    def __cinit__(self, Engine engine, int max_seqs=16, int chunk=32, int n_threads=1, double gather_ms=2.0):
        if engine is None:
            raise ModelClosedError("Batcher needs an Engine (a loaded model's weights), got None")
        if max_seqs < 1 or chunk < 1 or n_threads < 1 or not 0 <= gather_ms <= 1000:
            raise ValueError(f"max_seqs {max_seqs}, chunk {chunk} and n_threads {n_threads} must be >= 1 and "
                             f"gather_ms {gather_ms} in [0, 1000]")
        self.engine = engine
        self.b.max_seqs = max_seqs
        self.b.chunk = chunk
        self.b.max_tokens = max_seqs + chunk
        self.work = State(engine, self.b.max_tokens, self.b.max_tokens, False, n_threads)
        self.work.adaptive_threads = False          # its passes' threads: b.pg (pass_threads)
        self.b.nth = n_threads
        pass_gov_init(&self.b.pg)
        # the load (or a session) just found a core busy: start on one thread; the first
        # window (half a second) judges again
        self.b.pg.one = n_threads > 1 and gov_last_one(&engine.gov_last)
        self.out_buf = np.zeros((max_seqs, engine.m.n_vocab), np.float32)
        self.b.seqs = <seq_t*>malloc(max_seqs * sizeof(seq_t))
        self.b.taken = <slot_t**>malloc(max_seqs * sizeof(slot_t*))
        if self.b.seqs == NULL or self.b.taken == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.b.mu, NULL)
        pthread_cond_init(&self.b.work, NULL)
        pthread_cond_init(&self.b.done, NULL)
        self.b.m = &engine.m
        self.b.w = &self.work.s
        self.b.out = &self.out_buf[0, 0]
        self.b.gather = gather_ms / 1e3
        self.b.pid = getpid()
        self.thread = threading.Thread(target=self._run, name="guanaco_rt-batcher", daemon=True)
        self.thread.start()

    def _run(self):
        with nogil:
            batch_run(&self.b)

    @property
    def max_seqs(self):
        return self.b.max_seqs

    @property
    def chunk(self):
        return self.b.chunk

    @property
    def n_threads(self):
        return self.work.n_threads

    @property
    def closed(self):
        return bool(self.b.closing)

    def stats(self):
        """``passes`` run, their mean ``occupancy`` (sequences a pass), ``rows`` evaluated,
        ``busy_s`` (seconds in passes), ``queued`` (slots waiting now), ``members``
        (sequences in a generation now), ``rows_per_s`` over busy_s; the threads: ``n_threads``
        a pass may use, ``one_thread_passes`` run on one instead, ``busy_core_found`` (times other
        processes were found holding the cores the team needs), ``on_one_thread`` now, and
        ``other_processes_cpus``: the CPUs they kept busy over the last half second; the prefix
        copies of its States (State.copy_prefix, run between passes): ``copies`` that copied any,
        ``copied_positions`` and ``copy_s``."""
        pthread_mutex_lock(&self.b.mu)
        d = {"passes": self.b.passes, "rows": self.b.rows, "busy_s": self.b.busy_s, "queued": self.b.n_queued,
             "members": self.b.members, "last_pass_s": self.b.last_s,
             "occupancy": self.b.seq_passes / <double>self.b.passes if self.b.passes else 0.0,
             "rows_per_s": self.b.rows / self.b.busy_s if self.b.busy_s > 0 else 0.0,
             "max_seqs": self.b.max_seqs, "chunk": self.b.chunk, "n_threads": self.b.nth,
             "one_thread_passes": self.b.pg.one_passes, "busy_core_found": self.b.pg.busy_found,
             "on_one_thread": bool(self.b.pg.one), "other_processes_cpus": self.b.pg.others,
             "copies": self.b.copy_runs, "copied_positions": self.b.copied, "copy_s": self.b.copy_s}
        pthread_mutex_unlock(&self.b.mu)
        return d

    def pause(self):
        """No passes until resume(): sequences that send tokens meanwhile wait in line, and
        the next pass takes them together (up to max_seqs and the rows a pass holds)."""
        with nogil:
            pthread_mutex_lock(&self.b.mu)
            self.b.paused = 1
            pthread_mutex_unlock(&self.b.mu)

    def resume(self):
        with nogil:
            pthread_mutex_lock(&self.b.mu)
            self.b.paused = 0
            pthread_cond_broadcast(&self.b.work)
            pthread_mutex_unlock(&self.b.mu)

    def close(self):
        """Run what is queued, then no more passes: attached States evaluate alone from now on."""
        if self.b.pid != getpid():
            return
        with nogil:
            pthread_mutex_lock(&self.b.mu)
            self.b.closing = 1
            pthread_cond_broadcast(&self.b.work)
            pthread_mutex_unlock(&self.b.mu)
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()

    def __dealloc__(self):
        # only once its thread ended (it holds a reference) and no State refers to it
        free(self.b.seqs)
        free(self.b.taken)
        if self.b.pid:
            pthread_cond_destroy(&self.b.done)
            pthread_cond_destroy(&self.b.work)
            pthread_mutex_destroy(&self.b.mu)


def openmp_enabled():
    return bool(gr_openmp_enabled())


def omp_max_threads():
    return gr_omp_max_threads()


def omp_release():
    """Free the calling thread's OpenMP worker threads (see _platform.h); its next parallel
    region starts them again. Only in the process that started them: a forked child has a
    copy of the pool without its threads and would wait for them forever (model.release_threads)."""
    cdef int rc
    with nogil:
        rc = gr_omp_release()
    return rc


def cpu_has_avx2():
    return bool(gr_cpu_has_avx2())


def cpu_features():
    """The ISA features (isa_list.py's names) this CPU has and the OS enables: cpuid and xgetbv."""
    cdef unsigned long long f = gr_cpu_features()
    return frozenset(n for i, n in enumerate(GR_CPU_FEATURE_NAMES.decode().split()) if f >> i & 1)
