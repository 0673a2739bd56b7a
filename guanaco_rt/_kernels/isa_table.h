/* The table an ISA unit fills: per weight type its dot products, plus the attention inner
 * loops. Declared once here, in C, so that a unit can be a C source of its own; Cython sees
 * it through _isa.pxd. A unit leaves NULL what it does not specialise; the engine fills
 * those gaps from the generic unit (_engine.KernelSet). Units hand their table over as a
 * PyCapsule named GR_ISA_CAPSULE (never an integer address). */
#ifndef GUANACO_RT_ISA_TABLE_H
#define GUANACO_RT_ISA_TABLE_H
#include <stdint.h>
#include "ggml_blocks.h"

#define GR_ISA_CAPSULE "guanaco_rt.isa_kernels_t"

/* x (k,) -> k quantized values in an activation block format; a unit's must write the
 * same bytes as the format's own quantizer (_quants) */
typedef void (*gr_from_float_fn)(const float *x, void *y, int64_t k);

/* s[0] = <x, y> over n elements: x one weight row, y one activation row in the type's
 * vec_dot_type */
typedef void (*vec_dot_fn)(int n, float *s, const void *x, const void *y);

/* s[t * s_stride] = <x, y + t * y_stride bytes> for t = 0..3: one weight row, 4 activation
 * rows, each token's float operations in the same order as vec_dot's (identical bits). With
 * q8_1 activations the first row also holds, after its n/32 blocks, the 4 rows' scales
 * packed per block as [d0 d1 d2 d3 s0 s1 s2 s3] (floats; _engine.pack_q8_1_x4 writes them) */
typedef void (*vec_dot_x4_fn)(int n, float *s, int64_t s_stride, const void *x, const void *y,
                              int64_t y_stride);

/* s[t * s_stride + r] = <row r of x, y + t * y_stride bytes> for r = 0..7 and t = 0..T-1
 * (T = 1 for dot_r8, 4 for dot_r8_x4): x is one group of 8 rows in the row-interleaved
 * layout (block_q4_0x8, ...; _engine.repack_r8 makes it), y rows of the activation type.
 * Both give each (row, token) the same float operations in the same order (identical bits) */
typedef void (*dot_r8_fn)(int n, float *s, int64_t s_stride, const void *x, const void *y,
                          int64_t y_stride);

/* attention over one head, kv f32 or f16 (f16 != 0), position p's row at
 * kv[off + p * stride:][:n]: a[p] = <q, row p> * scale for p < n_pos (each as one dot
 * product, in a fixed order) */
typedef void (*kv_scores_fn)(float *a, const float *q, const void *kv, int64_t off, int64_t stride,
                             int n_pos, int n, float scale, int f16);

/* out[:n] = sum over p < n_pos of a[p] * row p, each element summed from p = 0 up, one fma
 * (or the unit's a * x + acc) per position */
typedef void (*kv_mix_fn)(float *out, const float *a, const void *kv, int64_t off, int64_t stride,
                          int n_pos, int n, int f16);

typedef struct {
    vec_dot_fn vec_dot;          /* NULL: not specialised (generic: not a weight type) */
    vec_dot_x4_fn vec_dot_x4;    /* NULL: vec_dot per activation row */
    dot_r8_fn dot_r8;            /* NULL: rows stay as the file has them; else the engine */
    dot_r8_fn dot_r8_x4;         /*   interleaves each 8 rows at load */
    gr_from_float_fn quantize;   /* activation formats; NULL: the format's own quantizer */
} type_kernels_t;

typedef struct {
    const char *name;
    type_kernels_t types[GGML_TYPE_COUNT];
    kv_scores_fn kv_scores;
    kv_mix_fn kv_mix;
} isa_kernels_t;

_Static_assert(GGML_TYPE_COUNT == 36, "_isa.pxd sizes isa_kernels_t.types as 36: change both");

#endif
