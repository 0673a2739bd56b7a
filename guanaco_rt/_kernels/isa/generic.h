/* What the C units share with the generic unit: exact scalar helpers (half floats, the
 * k-quant scale unpacking of ggml_blocks.h) and the generic unit's table, the reference
 * every other unit is tested against (tests/test_c_units.py, tests/c/test_neon.c).
 *
 * Build every C unit with -std=c11 -ffp-contract=off: GNU C mode lets gcc fuse a * b + c
 * into one FMA (the default on aarch64), which rounds once where the spec rounds twice. */
#ifndef GUANACO_RT_ISA_GENERIC_H
#define GUANACO_RT_ISA_GENERIC_H
#include <stdint.h>
#include <string.h>
#include "isa_table.h"

extern const isa_kernels_t gr_isa_generic;

/* IEEE half -> float, exact (the same values as _common.fp16_to_fp32's table; a NaN's
 * payload may differ, and valid blocks have none) */
static inline float gr_fp16_to_fp32(ggml_fp16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    float v;
    if (e == 0) {                               /* zero and subnormals: mant * 2^-24, exact */
        v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    bits = sign | (e == 31 ? 0x7f800000u | (mant << 13) : ((e + 112) << 23) | (mant << 13));
    memcpy(&v, &bits, 4);
    return v;
}

/* bfloat16 -> float, exact: its bits are the float's top half */
static inline float gr_bf16_to_fp32(ggml_bf16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float v;
    memcpy(&v, &bits, 4);
    return v;
}

static inline uint32_t gr_load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* the 16 six-bit scales of a block_q3_K, already offset by -32 */
static inline void gr_unpack_q3_K_scales(const uint8_t *s, int8_t *out) {
    for (int j = 0; j < 16; j++)
        out[j] = (int8_t)((((s[j % 8] >> (4 * (j / 8))) & 0xF) | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
}

/* sub-block j's 6-bit scale and minimum of a block_q4_K / block_q5_K */
static inline void gr_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}
#endif
