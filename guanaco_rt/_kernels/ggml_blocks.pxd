# cython: language_level=3
# The ggml block formats of ggjt v3 files, declared once. Sizes are checked by
# block_sizes() against guanaco_rt.ggml_types (tests/test_kernels.py).
from libc.stdint cimport uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, int64_t

ctypedef uint16_t ggml_fp16_t   # IEEE half, bits only

cdef enum:  # ggml_type ids
    GGML_TYPE_F32 = 0
    GGML_TYPE_F16 = 1
    GGML_TYPE_Q4_0 = 2
    GGML_TYPE_Q4_1 = 3
    GGML_TYPE_Q5_0 = 6
    GGML_TYPE_Q5_1 = 7
    GGML_TYPE_Q8_0 = 8
    GGML_TYPE_Q8_1 = 9
    GGML_TYPE_Q2_K = 10
    GGML_TYPE_Q3_K = 11
    GGML_TYPE_Q4_K = 12
    GGML_TYPE_Q5_K = 13
    GGML_TYPE_Q6_K = 14
    GGML_TYPE_Q8_K = 15
    GGML_TYPE_COUNT = 16

cdef enum:
    QK4_0 = 32
    QK4_1 = 32
    QK5_0 = 32
    QK5_1 = 32
    QK8_0 = 32
    QK8_1 = 32
    QK_K = 256
    K_SCALE_SIZE = 12

# 4-bit, 32 weights, x = d * (q - 8), 4.5 bits per weight.
# qs[j] holds weight j in its low nibble and weight j+16 in its high nibble.
cdef packed struct block_q4_0:
    ggml_fp16_t d
    uint8_t qs[16]

# 4-bit, 32 weights, x = d * q + m, 5 bits per weight. Nibbles as block_q4_0.
cdef packed struct block_q4_1:
    ggml_fp16_t d
    ggml_fp16_t m
    uint8_t qs[16]

# 5-bit, 32 weights, x = d * (q - 16), 5.5 bits per weight. The low 4 bits as
# block_q4_0; bit j of qh (a little-endian uint32) is the 5th bit of weight j.
cdef packed struct block_q5_0:
    ggml_fp16_t d
    uint8_t qh[4]
    uint8_t qs[16]

# 5-bit, 32 weights, x = d * q + m, 6 bits per weight. Bits as block_q5_0.
cdef packed struct block_q5_1:
    ggml_fp16_t d
    ggml_fp16_t m
    uint8_t qh[4]
    uint8_t qs[16]

# 8-bit, 32 weights, x = d * q, 8.5 bits per weight. (ggml also uses it for the
# activations of q4_0/q5_0/q8_0; we pair those with q8_1, see ggml_types.py.)
cdef packed struct block_q8_0:
    ggml_fp16_t d
    int8_t qs[32]

# 8-bit activations for every 32-weight block type (2023 layout: f32 d and s).
# s = d * sum(qs) carries the term that q4_1/q5_1's minimum m multiplies. qs is
# in [-127, 127], never -128: the AVX2 sign trick relies on it.
cdef packed struct block_q8_1:
    float d
    float s
    int8_t qs[32]

# 2-bit k-quant: 16 sub-blocks of 16 weights, x = d*(sc&15)*q - dmin*(sc>>4),
# 2.625 bits per weight. qs: 2 halves of 128 weights; in each, byte l of the
# 32 holds weights l, l+32, l+64, l+96 in bit pairs 0-1, 2-3, 4-5, 6-7.
cdef packed struct block_q2_K:
    uint8_t scales[16]
    uint8_t qs[64]
    ggml_fp16_t d
    ggml_fp16_t dmin

# 3-bit k-quant: 16 sub-blocks of 16, x = d * (sc - 32) * (q - (hbit ? 0 : 4)),
# 3.4375 bits per weight. Low 2 bits in qs as block_q2_K; bit k of hmask[l]
# is the high bit of weight 32k + l. The 16 6-bit scales are packed in 12
# bytes: bytes 0-7 hold the low nibbles (sub-block j in byte j%8, nibble j/8),
# bytes 8-11 the 2 high bits (sub-block j in byte 8 + j%4, bits 2*(j/4)).
cdef packed struct block_q3_K:
    uint8_t hmask[32]
    uint8_t qs[64]
    uint8_t scales[12]
    ggml_fp16_t d

# 4-bit k-quant: 8 sub-blocks of 32, x = d*sc*q - dmin*m, 4.5 bits per weight.
# 6-bit sc and m for sub-block j, packed in scales[12]:
#   j < 4:  sc = scales[j] & 63, m = scales[j+4] & 63
#   j >= 4: sc = (scales[j+4] & 15) | (scales[j-4] >> 6) << 4
#           m  = (scales[j+4] >> 4) | (scales[j]   >> 6) << 4
# qs: 4 chunks of 32 bytes; chunk c holds sub-block 2c in low nibbles, 2c+1 in high.
cdef packed struct block_q4_K:
    ggml_fp16_t d
    ggml_fp16_t dmin
    uint8_t scales[12]
    uint8_t qs[128]

# 5-bit k-quant: as block_q4_K plus a 5th bit: bit 2c of qh[l] for sub-block
# 2c weight l, bit 2c+1 for sub-block 2c+1. 5.5 bits per weight.
cdef packed struct block_q5_K:
    ggml_fp16_t d
    ggml_fp16_t dmin
    uint8_t scales[12]
    uint8_t qh[32]
    uint8_t qs[128]

# 6-bit k-quant: 16 sub-blocks of 16, x = d * scales[j] * (q - 32), 6.5625 bits
# per weight. Per half of 128: ql[l] low nibble / high nibble give the low 4 bits
# of weights l / l+64, ql[l+32] of l+32 / l+96; qh[l] bit pairs 0,2,4,6 the high
# 2 bits of weights l, l+32, l+64, l+96.
cdef packed struct block_q6_K:
    uint8_t ql[128]
    uint8_t qh[64]
    int8_t scales[16]
    ggml_fp16_t d

# 8-bit activations for the k-quant dot products, x = d * q. qs CAN hold -128
# (the scale is chosen from the signed maximum). bsums[j] = sum of qs[16j:16j+16].
cdef packed struct block_q8_K:
    float d
    int8_t qs[256]
    int16_t bsums[16]
