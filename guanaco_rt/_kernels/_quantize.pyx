# cython: language_level=3
"""Weight quantization: float rows -> rows of ggml blocks, as llama-quantize makes them, with or
without an importance matrix (the C bodies: quantize_rows.h, quantize_rows_imatrix.h). The
file-level work -- which type each tensor gets, reading and writing GGUF -- is
guanaco_rt/quantizer.py's; this module only
turns a (nrows, n_per_row) float32 matrix into bytes, its rows split over OpenMP threads with
the GIL released.
"""
from libc.stdint cimport uint8_t, int64_t
from libc.stdlib cimport malloc, free
from cython.parallel cimport prange, parallel

from guanaco_rt._kernels.ggml_blocks cimport GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16

import numpy as np

from guanaco_rt.errors import InvalidArgumentError


cdef extern from "quantize_rows.h" nogil:
    int grq_block_size(int type)
    int grq_block_bytes(int type)
    int grq_quantize_row(int type, const float* x, void* y, int64_t k)
    void grq_init()
    void grq_row_to_f32(int src_type, const void* src, float* dst, int64_t k)


cdef extern from "quantize_rows_imatrix.h" nogil:
    int grq_quantize_row_w(int type, const float* x, void* y, int64_t k, const float* qw)


def block_size(int t):
    """(weights per block, bytes per block) of a ggml type this module makes, or (0, 0)."""
    return grq_block_size(t), grq_block_bytes(t)


def row_bytes(int t, int64_t n_per_row):
    """Bytes of one quantized row of n_per_row weights; InvalidArgumentError when the type is
    not one this module makes or n_per_row is not a multiple of its block size."""
    cdef int blck = grq_block_size(t)
    if blck == 0:
        raise InvalidArgumentError(f"quantize: ggml type {t} has no quantizer here")
    if n_per_row <= 0 or n_per_row % blck:
        raise InvalidArgumentError(f"quantize: a row of {n_per_row} weights is not a positive multiple "
                                   f"of ggml type {t}'s block of {blck}")
    return (n_per_row // blck) * grq_block_bytes(t)


cdef const float* _check_imatrix(imatrix, int64_t k, int64_t nrows, int64_t rows_per_expert, list keep) except? NULL:
    # imatrix: None, or float32 (n_expert * k,) with n_expert = nrows / rows_per_expert; kept alive in keep
    if imatrix is None:
        return NULL
    cdef const float[::1] qw = np.ascontiguousarray(imatrix, dtype=np.float32).ravel()
    if rows_per_expert <= 0 or nrows % rows_per_expert:
        raise InvalidArgumentError(f"quantize: {nrows} rows are not whole experts of {rows_per_expert} rows")
    cdef int64_t want = (nrows // rows_per_expert) * k
    if qw.shape[0] != want:
        raise InvalidArgumentError(f"quantize: an importance matrix of {qw.shape[0]} values for "
                                   f"{nrows // rows_per_expert} expert(s) of rows of {k} (expected {want})")
    keep.append(qw)
    return &qw[0] if want else NULL


def quantize_rows_into(int t, const float[:, ::1] x, uint8_t[:, ::1] out, int n_threads=1, imatrix=None,
                       int64_t rows_per_expert=0):
    """x (nrows, n_per_row) float32 -> out (nrows, row_bytes(t, n_per_row)) uint8, rows spread over
    n_threads (the result does not depend on it). imatrix: the importance of each column, float32
    (n_expert * n_per_row,), expert e's for rows [e * rows_per_expert, (e + 1) * rows_per_expert)
    (rows_per_expert 0: all rows, one expert), as llama-quantize --imatrix slices it."""
    cdef int64_t nrows = x.shape[0], k = x.shape[1], rb = row_bytes(t, x.shape[1]), r
    if out.shape[0] != nrows or out.shape[1] != rb:
        raise InvalidArgumentError(f"quantize: output of shape ({out.shape[0]}, {out.shape[1]}) for "
                                   f"{nrows} rows of {rb} bytes")
    if nrows == 0:
        return
    cdef list keep = []
    cdef int64_t rpe = rows_per_expert if rows_per_expert > 0 else nrows
    cdef const float* qw = _check_imatrix(imatrix, k, nrows, rpe, keep)
    n_threads = max(1, min(n_threads, nrows))
    with nogil:
        for r in prange(nrows, schedule='dynamic', chunksize=4, num_threads=n_threads):
            grq_quantize_row_w(t, &x[r, 0], &out[r, 0], k, (qw + (r // rpe) * k) if qw != NULL else NULL)


cdef void _quantize_raw(int t, int src_type, const uint8_t* src, int64_t nrows, int64_t k, uint8_t* out,
                        int64_t rb, int n_threads, const float* qw, int64_t rpe) noexcept nogil:
    # src (nrows, k) of src_type -> out (nrows, rb); F16/BF16 rows go through a float buffer per thread
    cdef int64_t r
    cdef int64_t es = 4 if src_type == GGML_TYPE_F32 else 2
    cdef float* buf = NULL
    cdef const float* row_qw = NULL
    with parallel(num_threads=n_threads):
        buf = <float*>malloc(k * sizeof(float))
        for r in prange(nrows, schedule='dynamic', chunksize=4):
            row_qw = (qw + (r // rpe) * k) if qw != NULL else NULL
            if src_type == GGML_TYPE_F32:
                grq_quantize_row_w(t, <const float*>(src + r * k * es), out + r * rb, k, row_qw)
            elif buf != NULL:
                grq_row_to_f32(src_type, src + r * k * es, buf, k)
                grq_quantize_row_w(t, buf, out + r * rb, k, row_qw)
        free(buf)


def quantize_raw_into(int t, int src_type, const uint8_t[::1] src, int64_t n_per_row, uint8_t[::1] out,
                      int n_threads=1, imatrix=None, int64_t rows_per_expert=0):
    """The bytes of (nrows, n_per_row) weights of type src_type (F32, F16 or BF16) -> out, the bytes of
    nrows quantized rows of type t; rows spread over n_threads. Converts F16/BF16 a row at a time on
    each thread (no float copy of the whole matrix). imatrix, rows_per_expert: as quantize_rows_into."""
    if src_type not in (GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16):
        raise InvalidArgumentError(f"quantize: source type {src_type} is not F32, F16 or BF16")
    cdef int64_t es = 4 if src_type == GGML_TYPE_F32 else 2
    cdef int64_t rb = row_bytes(t, n_per_row)
    if src.shape[0] % (n_per_row * es):
        raise InvalidArgumentError(f"quantize: {src.shape[0]} source bytes are not whole rows of {n_per_row}")
    cdef int64_t nrows = src.shape[0] // (n_per_row * es)
    if out.shape[0] != nrows * rb:
        raise InvalidArgumentError(f"quantize: output of {out.shape[0]} bytes for {nrows} rows of {rb} bytes")
    if nrows == 0:
        return
    cdef list keep = []
    cdef int64_t rpe = rows_per_expert if rows_per_expert > 0 else nrows
    cdef const float* qw = _check_imatrix(imatrix, n_per_row, nrows, rpe, keep)
    grq_init()
    n_threads = max(1, min(n_threads, nrows))
    with nogil:
        _quantize_raw(t, src_type, &src[0], nrows, n_per_row, &out[0], rb, n_threads, qw, rpe)


def quantize_rows(int t, x, int n_threads=1, imatrix=None, int64_t rows_per_expert=0):
    """x (nrows, n_per_row) float32 -> (nrows, row bytes) uint8 in ggml type t (imatrix,
    rows_per_expert: as quantize_rows_into)."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 2:
        raise InvalidArgumentError(f"quantize: rows must be a 2-D float32 array, not {a.ndim}-D")
    out = np.empty((a.shape[0], row_bytes(t, a.shape[1])), dtype=np.uint8)
    quantize_rows_into(t, a, out, n_threads, imatrix, rows_per_expert)
    return out
