# cython: language_level=3
# The table an ISA unit fills: per weight type its dot products, plus the attention
# inner loops. A unit leaves NULL what it does not specialise; the engine fills those
# gaps from the generic unit (_engine.KernelSet). Units hand their table over as a
# PyCapsule named ISA_CAPSULE (never an integer address).
from libc.stdint cimport int64_t
from guanaco_rt._kernels.ggml_blocks cimport GGML_TYPE_COUNT
from guanaco_rt._kernels._quants cimport from_float_fn

# s[0] = <x, y> over n elements: x one weight row, y one activation row in the type's vec_dot_type
ctypedef void (*vec_dot_fn)(int n, float* s, const void* x, const void* y) noexcept nogil
# s[t * s_stride] = <x, y + t * y_stride bytes> for t = 0..3: one weight row, 4 activation rows,
# each token's float operations in the same order as vec_dot's (identical bits). With q8_1
# activations the first row also holds, after its n/32 blocks, the 4 rows' scales packed per
# block as [d0 d1 d2 d3 s0 s1 s2 s3] (floats; _engine.pack_q8_1_x4 writes them)
ctypedef void (*vec_dot_x4_fn)(int n, float* s, int64_t s_stride, const void* x, const void* y,
                               int64_t y_stride) noexcept nogil
# s[t * s_stride + r] = <row r of x, y + t * y_stride bytes> for r = 0..7 and t = 0..T-1 (T = 1
# for dot_r8, 4 for dot_r8_x4): x is one group of 8 rows in the row-interleaved layout
# (block_q4_0x8, ...; _engine.repack_r8 makes it), y rows of q8_1. Both give each (row, token)
# the same float operations in the same order (identical bits)
ctypedef void (*dot_r8_fn)(int n, float* s, int64_t s_stride, const void* x, const void* y,
                           int64_t y_stride) noexcept nogil
# attention over one head, kv f32 or f16 (f16 != 0), position p's row at kv[off + p * stride:][:n]:
# a[p] = <q, row p> * scale for p < n_pos (each as one dot product, in a fixed order)
ctypedef void (*kv_scores_fn)(float* a, const float* q, const void* kv, int64_t off, int64_t stride, int n_pos,
                              int n, float scale, int f16) noexcept nogil
# out[:n] = sum over p < n_pos of a[p] * row p, each element summed from p = 0 up, one fma (or
# the unit's a * x + acc) per position
ctypedef void (*kv_mix_fn)(float* out, const float* a, const void* kv, int64_t off, int64_t stride, int n_pos,
                           int n, int f16) noexcept nogil

cdef struct type_kernels_t:
    vec_dot_fn vec_dot          # NULL: not specialised (generic: not a weight type)
    vec_dot_x4_fn vec_dot_x4    # NULL: vec_dot per activation row
    # NULL: rows stay as the file has them; else the engine interleaves each 8 rows at load
    dot_r8_fn dot_r8
    dot_r8_fn dot_r8_x4
    # activation formats: NULL means the block format's own quantizer (_quants); a unit's
    # must write the same bytes
    from_float_fn quantize

cdef struct isa_kernels_t:
    const char* name
    type_kernels_t types[GGML_TYPE_COUNT]
    kv_scores_fn kv_scores
    kv_mix_fn kv_mix

cdef extern from *:
    """
    #define GR_ISA_CAPSULE "guanaco_rt.isa_kernels_t"
    """
    const char* ISA_CAPSULE "GR_ISA_CAPSULE"
