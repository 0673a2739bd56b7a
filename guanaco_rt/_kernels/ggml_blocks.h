/* The ggml block formats of ggjt v3 (and GGUF) files, declared once for the kernels.
 *
 * Cython sees these through ggml_blocks.pxd; Python sees the same layouts as NumPy
 * dtypes in guanaco_rt/ggml_types.py (tests/test_kernels.py checks every size and
 * field offset against them). The sizes are checked here, at compile time. */
#ifndef GUANACO_RT_GGML_BLOCKS_H
#define GUANACO_RT_GGML_BLOCKS_H
#include <stdint.h>

typedef uint16_t ggml_fp16_t;   /* IEEE half, bits only */

/* ggml_type ids, as the files store them (the ones this runtime computes with) */
enum ggml_type {
    GGML_TYPE_F32 = 0, GGML_TYPE_F16 = 1, GGML_TYPE_Q4_0 = 2, GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q5_0 = 6, GGML_TYPE_Q5_1 = 7, GGML_TYPE_Q8_0 = 8, GGML_TYPE_Q8_1 = 9,
    GGML_TYPE_Q2_K = 10, GGML_TYPE_Q3_K = 11, GGML_TYPE_Q4_K = 12, GGML_TYPE_Q5_K = 13,
    GGML_TYPE_Q6_K = 14, GGML_TYPE_Q8_K = 15,
    GGML_TYPE_IQ2_XXS = 16, GGML_TYPE_IQ2_XS = 17, GGML_TYPE_IQ3_XXS = 18, GGML_TYPE_IQ1_S = 19,
    GGML_TYPE_IQ4_NL = 20, GGML_TYPE_IQ3_S = 21, GGML_TYPE_IQ2_S = 22, GGML_TYPE_IQ4_XS = 23,
    GGML_TYPE_IQ1_M = 29, GGML_TYPE_BF16 = 30, GGML_TYPE_TQ1_0 = 34, GGML_TYPE_TQ2_0 = 35,
    GGML_TYPE_COUNT = 36     /* tables are indexed by id: one past the largest id above */
};

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK_K 256
#define K_SCALE_SIZE 12

#pragma pack(push, 1)

/* 4-bit, 32 weights, x = d * (q - 8), 4.5 bits per weight.
 * qs[j] holds weight j in its low nibble and weight j+16 in its high nibble. */
typedef struct { ggml_fp16_t d; uint8_t qs[QK4_0 / 2]; } block_q4_0;

/* 4-bit, 32 weights, x = d * q + m, 5 bits per weight. Nibbles as block_q4_0. */
typedef struct { ggml_fp16_t d; ggml_fp16_t m; uint8_t qs[QK4_1 / 2]; } block_q4_1;

/* 5-bit, 32 weights, x = d * (q - 16), 5.5 bits per weight. The low 4 bits as
 * block_q4_0; bit j of qh (a little-endian uint32) is the 5th bit of weight j. */
typedef struct { ggml_fp16_t d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; } block_q5_0;

/* 5-bit, 32 weights, x = d * q + m, 6 bits per weight. Bits as block_q5_0. */
typedef struct { ggml_fp16_t d; ggml_fp16_t m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; } block_q5_1;

/* 8-bit, 32 weights, x = d * q, 8.5 bits per weight. */
typedef struct { ggml_fp16_t d; int8_t qs[QK8_0]; } block_q8_0;

/* 8-bit activations for every 32-weight block type (2023 layout: f32 d and s).
 * s = d * sum(qs) carries the term that q4_1/q5_1's minimum m multiplies. qs is in
 * [-127, 127], never -128: the AVX2 sign trick relies on it. */
typedef struct { float d; float s; int8_t qs[QK8_1]; } block_q8_1;

/* 2-bit k-quant: 16 sub-blocks of 16 weights, x = d*(sc&15)*q - dmin*(sc>>4),
 * 2.625 bits per weight. qs: 2 halves of 128 weights; in each, byte l of the 32
 * holds weights l, l+32, l+64, l+96 in bit pairs 0-1, 2-3, 4-5, 6-7. */
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; ggml_fp16_t d; ggml_fp16_t dmin; } block_q2_K;

/* 3-bit k-quant: 16 sub-blocks of 16, x = d * (sc - 32) * (q - (hbit ? 0 : 4)),
 * 3.4375 bits per weight. Low 2 bits in qs as block_q2_K; bit k of hmask[l] is the
 * high bit of weight 32k + l. The 16 6-bit scales are packed in 12 bytes: bytes 0-7
 * hold the low nibbles (sub-block j in byte j%8, nibble j/8), bytes 8-11 the 2 high
 * bits (sub-block j in byte 8 + j%4, bits 2*(j/4)). */
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; ggml_fp16_t d; } block_q3_K;

/* 4-bit k-quant: 8 sub-blocks of 32, x = d*sc*q - dmin*m, 4.5 bits per weight.
 * 6-bit sc and m for sub-block j, packed in scales[12]:
 *   j < 4:  sc = scales[j] & 63, m = scales[j+4] & 63
 *   j >= 4: sc = (scales[j+4] & 15) | (scales[j-4] >> 6) << 4
 *           m  = (scales[j+4] >> 4) | (scales[j]   >> 6) << 4
 * qs: 4 chunks of 32 bytes; chunk c holds sub-block 2c in low nibbles, 2c+1 in high. */
typedef struct { ggml_fp16_t d; ggml_fp16_t dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; } block_q4_K;

/* 5-bit k-quant: as block_q4_K plus a 5th bit: bit 2c of qh[l] for sub-block 2c
 * weight l, bit 2c+1 for sub-block 2c+1. 5.5 bits per weight. */
typedef struct {
    ggml_fp16_t d; ggml_fp16_t dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2];
} block_q5_K;

/* 6-bit k-quant: 16 sub-blocks of 16, x = d * scales[j] * (q - 32), 6.5625 bits per
 * weight. Per half of 128: ql[l] low nibble / high nibble give the low 4 bits of
 * weights l / l+64, ql[l+32] of l+32 / l+96; qh[l] bit pairs 0,2,4,6 the high 2 bits
 * of weights l, l+32, l+64, l+96. */
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; ggml_fp16_t d; } block_q6_K;

/* 8-bit activations for the k-quant dot products, x = d * q. qs CAN hold -128 (the
 * scale is chosen from the signed maximum). bsums[j] = sum of qs[16j:16j+16]. */
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K;

/* The 16 values of a 4-bit index of the non-linear types (IQ4_NL, IQ4_XS): a fixed table, closer
 * together near zero, where most weights are. The one copy every unit and _quants read. */
static const int8_t kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
#define QK4_NL 32

/* non-linear 4-bit, 32 weights, x = d * kvalues_iq4nl[q], 4.5 bits per weight. Nibbles as block_q4_0:
 * qs[j] holds weight j's index in its low nibble, weight j+16's in its high. */
typedef struct { ggml_fp16_t d; uint8_t qs[QK4_NL / 2]; } block_iq4_nl;

/* non-linear 4-bit k-quant: 8 sub-blocks of 32, x = d * (ls - 32) * kvalues_iq4nl[q], 4.25 bits per
 * weight; no minimums. Sub-block j's 6-bit ls: low 4 bits in nibble j % 2 of scales_l[j / 2] (so bits
 * 4j..4j+3 of scales_l read as a little-endian uint32), high 2 bits at bits 2j, 2j+1 of scales_h. qs:
 * 16 bytes per sub-block, nibbles as block_iq4_nl (qs[16j + l]: weights 32j + l, low, and 32j + 16 + l). */
typedef struct { ggml_fp16_t d; uint16_t scales_h; uint8_t scales_l[QK_K / 64]; uint8_t qs[QK_K / 2]; } block_iq4_xs;

/* bfloat16: the top 16 bits of an IEEE float (f32 = bits << 16); one weight, not a block */
typedef uint16_t ggml_bf16_t;

/* Row-interleaved copies of q4_0 / q4_1, made at load (never stored in a file): block i of
 * 8 consecutive rows r = 0..7 in one struct, so a kernel gets 8 rows' dot products in the 8
 * lanes of one register. d[r] (and m[r]) are row r's; qs[32*k + 4*r + j] = row r's
 * qs[4*k + j] (k, j = 0..3), i.e. weights 4k+j (low nibble) and 16+4k+j (high nibble).
 * Same size as the 8 blocks they replace. */
typedef struct { ggml_fp16_t d[8]; uint8_t qs[8 * QK4_0 / 2]; } block_q4_0x8;
typedef struct { ggml_fp16_t d[8]; ggml_fp16_t m[8]; uint8_t qs[8 * QK4_1 / 2]; } block_q4_1x8;
/* q5_0 / q5_1: as q4_0 / q4_1, with the 8 rows' qh words (bit j: the 5th bit of weight j) side by
 * side before qs: qh[4*r + j] = row r's qh[j] */
typedef struct { ggml_fp16_t d[8]; uint8_t qh[8 * 4]; uint8_t qs[8 * QK5_0 / 2]; } block_q5_0x8;
typedef struct { ggml_fp16_t d[8]; ggml_fp16_t m[8]; uint8_t qh[8 * 4]; uint8_t qs[8 * QK5_1 / 2]; } block_q5_1x8;
/* q8_0 the same way: d[r]; qs[32*k + 4*r + j] = row r's qs[4*k + j] (k = 0..7, j = 0..3). */
typedef struct { ggml_fp16_t d[8]; int8_t qs[8 * QK8_0]; } block_q8_0x8;
/* q4_K the same way: d[r], dmin[r]; scales[32*w + 4*r + b] = row r's scales[4*w + b] (the 3
 * words of 8 rows side by side, so 8 rows unpack at once); qs[256*c + 32*k + 4*r + j] = row
 * r's qs[32*c + 4*k + j] (chunk c = sub-blocks 2c, low nibbles, and 2c+1, high). */
typedef struct { ggml_fp16_t d[8]; ggml_fp16_t dmin[8]; uint8_t scales[8 * K_SCALE_SIZE]; uint8_t qs[8 * QK_K / 2]; }
    block_q4_Kx8;
/* q5_K: as block_q4_Kx8, with the 8 rows' qh words between scales and qs:
 * qh[32*k + 4*r + j] = row r's qh[4*k + j] (bit b of it: the 5th bit of sub-block b). */
typedef struct { ggml_fp16_t d[8]; ggml_fp16_t dmin[8]; uint8_t scales[8 * K_SCALE_SIZE]; uint8_t qh[8 * QK_K / 8];
                 uint8_t qs[8 * QK_K / 2]; } block_q5_Kx8;
/* q6_K, its fields in the file's order: ql[32*k + 4*r + j] = row r's ql[4*k + j], qh the same
 * way; scales[16*p + 2*r + e] = row r's scales[2*p + e] (sub-blocks 2p, 2p+1 side by side, so
 * one sign extension gives each row's pair in its 32-bit lane); d[r]. */
/* q2_K the same way: scales[16*p + 2*r + e] = row r's scales[2*p + e]; qs[32*k + 4*r + j] = row
 * r's qs[4*k + j]; d[r]; dmin[r]. */
typedef struct { uint8_t scales[8 * QK_K / 16]; uint8_t qs[8 * QK_K / 4]; ggml_fp16_t d[8]; ggml_fp16_t dmin[8]; }
    block_q2_Kx8;
/* q3_K the same way, its fields in the file's order: hmask[32*k + 4*r + j] = row r's hmask[4*k + j],
 * qs likewise, scales[32*w + 4*r + b] = row r's scales[4*w + b] (as block_q4_Kx8's), d[r]. */
typedef struct { uint8_t hmask[8 * QK_K / 8]; uint8_t qs[8 * QK_K / 4]; uint8_t scales[8 * 12]; ggml_fp16_t d[8]; }
    block_q3_Kx8;
typedef struct { uint8_t ql[8 * QK_K / 2]; uint8_t qh[8 * QK_K / 4]; int8_t scales[8 * QK_K / 16]; ggml_fp16_t d[8]; }
    block_q6_Kx8;

/* iq4_nl: as block_q4_0x8 (d[r]; qs[32*k + 4*r + j] = row r's qs[4*k + j]). */
typedef struct { ggml_fp16_t d[8]; uint8_t qs[8 * QK4_NL / 2]; } block_iq4_nlx8;
/* iq4_xs, its fields in the file's order: d[r]; scales_h[r]; scales_l[4*r + b] = row r's scales_l[b]
 * (one uint32 lane per row); qs[32*k + 4*r + j] = row r's qs[4*k + j] (sub-block s: steps 4s..4s+3). */
typedef struct { ggml_fp16_t d[8]; uint16_t scales_h[8]; uint8_t scales_l[8 * QK_K / 64]; uint8_t qs[8 * QK_K / 2]; }
    block_iq4_xsx8;
/* ---- i-quants and ternary types (issue 23): 256 weights a block, each paired with q8_K ----
 * The i-quants store a group of 8 (IQ3: 4) weights as an index into a lattice (iq_grids.h, the
 * weights' magnitudes, or IQ1's values -1/0/1) and, where signed, 7 sign bits per 8 weights that
 * index gr_ksigns_iq2xs (the 8th sign makes the minus count even). "ls" below is a block scale's
 * stored 4- or 3-bit field; grid[k][j] is weight j of row k. */

/* IQ2_XXS, 2.0625 bits per weight: 8 groups of 32 weights, each two uint32 words
 * w0 = qs[4g] | qs[4g+1] << 16, w1 = qs[4g+2] | qs[4g+3] << 16. Byte l of w0 indexes
 * gr_iq2xxs_grid for weights 8l..8l+7; bits 7l..7l+6 of w1 are their sign bits; ls = w1 >> 28.
 * x = d * (0.5 + ls) / 4 * grid * sign. */
typedef struct { ggml_fp16_t d; uint16_t qs[QK_K / 8]; } block_iq2_xxs;

/* IQ2_XS, 2.3125 bits per weight: qs[k] for weights 8k..8k+7: index qs[k] & 511 into
 * gr_iq2xs_grid, sign bits qs[k] >> 9. scales[g]: the low nibble is ls of weights 32g..32g+15,
 * the high nibble of 32g+16..32g+31. x = d * (0.5 + ls) / 4 * grid * sign. */
typedef struct { ggml_fp16_t d; uint16_t qs[QK_K / 8]; uint8_t scales[QK_K / 32]; } block_iq2_xs;

/* IQ2_S, 2.5625 bits per weight: qs[0:32] the low 8 bits of the 10-bit index (into gr_iq2s_grid)
 * of weights 8k..8k+7, bits 2l, 2l+1 of qh[g] its high 2 bits (k = 4g + l); qs[32 + k] the 8 sign
 * bits of those weights, stored whole; scales as block_iq2_xs. x = d * (0.5 + ls) / 4 * grid * sign. */
typedef struct { ggml_fp16_t d; uint8_t qs[QK_K / 4]; uint8_t qh[QK_K / 32]; uint8_t scales[QK_K / 32]; }
    block_iq2_s;

/* IQ3_XXS, 3.0625 bits per weight: qs[0:64] one gr_iq3xxs_grid index per 4 weights; qs[64:96] 8
 * little-endian uint32 words, word g for weights 32g..32g+31: bits 7l..7l+6 the sign bits of
 * weights 32g+8l..32g+8l+7, ls = word >> 28. x = d * (0.5 + ls) / 2 * grid * sign. */
typedef struct { ggml_fp16_t d; uint8_t qs[3 * QK_K / 8]; } block_iq3_xxs;

/* IQ3_S, 3.4375 bits per weight: a 9-bit gr_iq3s_grid index per 4 weights, the low 8 bits in qs[k]
 * (weights 4k..4k+3) and the 9th in bit k % 8 of qh[k / 8]; signs[k] the 8 sign bits of weights
 * 8k..8k+7, stored whole; scales[p]: the low nibble is ls of weights 64p..64p+31, the high nibble of
 * 64p+32..64p+63. x = d * (1 + 2 * ls) * grid * sign. */
typedef struct { ggml_fp16_t d; uint8_t qs[QK_K / 4]; uint8_t qh[QK_K / 32]; uint8_t signs[QK_K / 8];
                 uint8_t scales[QK_K / 64]; } block_iq3_s;

/* IQ1_S, 1.5625 bits per weight: an 11-bit gr_iq1s_grid index per 8 weights, qs[k] its low 8 bits
 * (weights 8k..8k+7, k = 4g + l), bits 3l..3l+2 of qh[g] its high 3; of qh[g], bits 12-14 are ls
 * and bit 15 the sign of delta for weights 32g..32g+31. x = d * (2 * ls + 1) * (grid + delta),
 * delta = +-1/8 (IQ1S_DELTA). */
typedef struct { ggml_fp16_t d; uint8_t qs[QK_K / 8]; uint16_t qh[QK_K / 32]; } block_iq1_s;

/* IQ1_M, 1.75 bits per weight, no separate scale: the f16 block scale d is the top nibbles of the
 * four little-endian uint16 words of scales, word 0's lowest. Index of weights 8k..8k+7 (k = 4g + l):
 * qs[k] | (bits 0-2 of nibble l of qh[2g..2g+1]) << 8, bit 3 of that nibble the sign of its delta.
 * 3-bit ls of weights 16h..16h+15 (h = 2g + e): bits 6(g % 2) + 3e of word g / 2.
 * x = d * (2 * ls + 1) * (grid + delta), delta = +-1/8. */
typedef struct { uint8_t qs[QK_K / 8]; uint8_t qh[QK_K / 16]; uint8_t scales[QK_K / 32]; } block_iq1_m;
#define IQ1S_DELTA 0.125f
#define IQ1M_DELTA 0.125f

/* IQ1_M's scales as its four uint16 words w (for the 3-bit ls) -> its f16 block scale d, the words'
 * top nibbles: the one decoder of that field (the dequantizer and every unit's kernel call it) */
static inline ggml_fp16_t gr_iq1m_words(const uint8_t *scales, uint16_t w[4]) {
    for (int k = 0; k < 4; k++)
        w[k] = (uint16_t)(scales[2 * k] | scales[2 * k + 1] << 8);
    return (ggml_fp16_t)((w[0] >> 12) | ((w[1] >> 8) & 0x00F0) | ((w[2] >> 4) & 0x0F00) | (w[3] & 0xF000));
}

/* TQ1_0, 1.6875 bits per weight, ternary x = d * (t - 1), t in {0, 1, 2}: five t's a byte as the
 * base-3 digits of a fraction, byte = ceil(256 * (t4 + 3 t3 + 9 t2 + 27 t1 + 81 t0) / 243) (t0 the
 * first): the digit at position p is ((uint8_t)(byte * 3^p) * 3) >> 8. qs[0:32]: digit p of byte m
 * is weight 32p + m; qs[32:48]: weight 160 + 16p + m for byte 32 + m; qh[4] four digits a byte,
 * weight 240 + 4p + m. */
typedef struct { uint8_t qs[(QK_K - 4 * QK_K / 64) / 5]; uint8_t qh[QK_K / 64]; ggml_fp16_t d; } block_tq1_0;

/* TQ2_0, 2.0625 bits per weight, x = d * (t - 1): bits 2p, 2p+1 of qs[32c + m] are t of weight
 * 128c + 32p + m. */
typedef struct { uint8_t qs[QK_K / 4]; ggml_fp16_t d; } block_tq2_0;

#pragma pack(pop)

_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0: wrong size/padding");
_Static_assert(sizeof(block_q4_1) == 20, "block_q4_1: wrong size/padding");
_Static_assert(sizeof(block_q5_0) == 22, "block_q5_0: wrong size/padding");
_Static_assert(sizeof(block_q5_1) == 24, "block_q5_1: wrong size/padding");
_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0: wrong size/padding");
_Static_assert(sizeof(block_q8_1) == 40, "block_q8_1: wrong size/padding");
_Static_assert(sizeof(block_q2_K) == 84, "block_q2_K: wrong size/padding");
_Static_assert(sizeof(block_q3_K) == 110, "block_q3_K: wrong size/padding");
_Static_assert(sizeof(block_q4_K) == 144, "block_q4_K: wrong size/padding");
_Static_assert(sizeof(block_q5_K) == 176, "block_q5_K: wrong size/padding");
_Static_assert(sizeof(block_q6_K) == 210, "block_q6_K: wrong size/padding");
_Static_assert(sizeof(block_q8_K) == 292, "block_q8_K: wrong size/padding");
_Static_assert(sizeof(block_iq4_nl) == 18, "block_iq4_nl: wrong size/padding");
_Static_assert(sizeof(block_iq4_xs) == 136, "block_iq4_xs: wrong size/padding");
_Static_assert(sizeof(block_iq4_nlx8) == 8 * sizeof(block_iq4_nl), "block_iq4_nlx8: wrong size/padding");
_Static_assert(sizeof(block_iq4_xsx8) == 8 * sizeof(block_iq4_xs), "block_iq4_xsx8: wrong size/padding");
_Static_assert(sizeof(block_q4_0x8) == 8 * sizeof(block_q4_0), "block_q4_0x8: wrong size/padding");
_Static_assert(sizeof(block_q4_1x8) == 8 * sizeof(block_q4_1), "block_q4_1x8: wrong size/padding");
_Static_assert(sizeof(block_q5_0x8) == 8 * sizeof(block_q5_0), "block_q5_0x8: wrong size/padding");
_Static_assert(sizeof(block_q5_1x8) == 8 * sizeof(block_q5_1), "block_q5_1x8: wrong size/padding");
_Static_assert(sizeof(block_q3_Kx8) == 8 * sizeof(block_q3_K), "block_q3_Kx8: wrong size/padding");
_Static_assert(sizeof(block_q8_0x8) == 8 * sizeof(block_q8_0), "block_q8_0x8: wrong size/padding");
_Static_assert(sizeof(block_q4_Kx8) == 8 * sizeof(block_q4_K), "block_q4_Kx8: wrong size/padding");
_Static_assert(sizeof(block_q5_Kx8) == 8 * sizeof(block_q5_K), "block_q5_Kx8: wrong size/padding");
_Static_assert(sizeof(block_q2_Kx8) == 8 * sizeof(block_q2_K), "block_q2_Kx8: wrong size/padding");
_Static_assert(sizeof(block_q6_Kx8) == 8 * sizeof(block_q6_K), "block_q6_Kx8: wrong size/padding");

/* i-quants and ternary types (issue 23) */
_Static_assert(sizeof(block_iq2_xxs) == 66, "block_iq2_xxs: wrong size/padding");
_Static_assert(sizeof(block_iq2_xs) == 74, "block_iq2_xs: wrong size/padding");
_Static_assert(sizeof(block_iq2_s) == 82, "block_iq2_s: wrong size/padding");
_Static_assert(sizeof(block_iq3_xxs) == 98, "block_iq3_xxs: wrong size/padding");
_Static_assert(sizeof(block_iq3_s) == 110, "block_iq3_s: wrong size/padding");
_Static_assert(sizeof(block_iq1_s) == 50, "block_iq1_s: wrong size/padding");
_Static_assert(sizeof(block_iq1_m) == 56, "block_iq1_m: wrong size/padding");
_Static_assert(sizeof(block_tq1_0) == 54, "block_tq1_0: wrong size/padding");
_Static_assert(sizeof(block_tq2_0) == 66, "block_tq2_0: wrong size/padding");

#endif
