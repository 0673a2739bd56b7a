# cython: language_level=3
# The ggml block formats, as ggml_blocks.h declares them (layouts documented there;
# sizes checked there at compile time). Cython needs only the field names.
from libc.stdint cimport uint8_t, int8_t, uint16_t, int16_t

cdef extern from "ggml_blocks.h" nogil:
    ctypedef uint16_t ggml_fp16_t

    enum:
        QK4_0
        QK4_1
        QK5_0
        QK5_1
        QK8_0
        QK8_1
        QK_K
        K_SCALE_SIZE
        QK4_NL

    ctypedef struct block_q4_0:
        ggml_fp16_t d
        uint8_t qs[16]
    ctypedef struct block_q4_1:
        ggml_fp16_t d
        ggml_fp16_t m
        uint8_t qs[16]
    ctypedef struct block_q5_0:
        ggml_fp16_t d
        uint8_t qh[4]
        uint8_t qs[16]
    ctypedef struct block_q5_1:
        ggml_fp16_t d
        ggml_fp16_t m
        uint8_t qh[4]
        uint8_t qs[16]
    ctypedef struct block_q8_0:
        ggml_fp16_t d
        int8_t qs[32]
    ctypedef struct block_q8_1:
        float d
        float s
        int8_t qs[32]
    ctypedef struct block_q2_K:
        uint8_t scales[16]
        uint8_t qs[64]
        ggml_fp16_t d
        ggml_fp16_t dmin
    ctypedef struct block_q3_K:
        uint8_t hmask[32]
        uint8_t qs[64]
        uint8_t scales[12]
        ggml_fp16_t d
    ctypedef struct block_q4_K:
        ggml_fp16_t d
        ggml_fp16_t dmin
        uint8_t scales[12]
        uint8_t qs[128]
    ctypedef struct block_q5_K:
        ggml_fp16_t d
        ggml_fp16_t dmin
        uint8_t scales[12]
        uint8_t qh[32]
        uint8_t qs[128]
    ctypedef struct block_q6_K:
        uint8_t ql[128]
        uint8_t qh[64]
        int8_t scales[16]
        ggml_fp16_t d
    ctypedef struct block_q8_K:
        float d
        int8_t qs[256]
        int16_t bsums[16]
    const int8_t kvalues_iq4nl[16]
    ctypedef struct block_iq4_nl:
        ggml_fp16_t d
        uint8_t qs[16]
    ctypedef struct block_iq4_xs:
        ggml_fp16_t d
        uint16_t scales_h
        uint8_t scales_l[4]
        uint8_t qs[128]
    # (the 8-row interleaved layouts, block_q4_0x8 ..., are used by the C units only)
    # ---- i-quants and ternary types (issue 23)
    ctypedef struct block_iq2_xxs:
        ggml_fp16_t d
        uint16_t qs[32]
    ctypedef struct block_iq2_xs:
        ggml_fp16_t d
        uint16_t qs[32]
        uint8_t scales[8]
    ctypedef struct block_iq2_s:
        ggml_fp16_t d
        uint8_t qs[64]
        uint8_t qh[8]
        uint8_t scales[8]
    ctypedef struct block_iq3_xxs:
        ggml_fp16_t d
        uint8_t qs[96]
    ctypedef struct block_iq3_s:
        ggml_fp16_t d
        uint8_t qs[64]
        uint8_t qh[8]
        uint8_t signs[32]
        uint8_t scales[4]
    ctypedef struct block_iq1_s:
        ggml_fp16_t d
        uint8_t qs[32]
        uint16_t qh[8]
    ctypedef struct block_iq1_m:
        uint8_t qs[32]
        uint8_t qh[16]
        uint8_t scales[8]
    ctypedef struct block_tq1_0:
        uint8_t qs[48]
        uint8_t qh[4]
        ggml_fp16_t d
    ctypedef struct block_tq2_0:
        uint8_t qs[64]
        ggml_fp16_t d
    float IQ1S_DELTA
    float IQ1M_DELTA
    ggml_fp16_t gr_iq1m_words(const uint8_t* scales, uint16_t* w)    # IQ1_M's words -> its f16 scale

cdef extern from "ggml_blocks.h" nogil:
    enum:  # ggml_type ids, as the files store them (values in ggml_blocks.h)
        GGML_TYPE_F32
        GGML_TYPE_F16
        GGML_TYPE_Q4_0
        GGML_TYPE_Q4_1
        GGML_TYPE_Q5_0
        GGML_TYPE_Q5_1
        GGML_TYPE_Q8_0
        GGML_TYPE_Q8_1
        GGML_TYPE_Q2_K
        GGML_TYPE_Q3_K
        GGML_TYPE_Q4_K
        GGML_TYPE_Q5_K
        GGML_TYPE_Q6_K
        GGML_TYPE_Q8_K
        GGML_TYPE_IQ2_XXS
        GGML_TYPE_IQ2_XS
        GGML_TYPE_IQ3_XXS
        GGML_TYPE_IQ1_S
        GGML_TYPE_IQ4_NL
        GGML_TYPE_IQ3_S
        GGML_TYPE_IQ2_S
        GGML_TYPE_IQ4_XS
        GGML_TYPE_IQ1_M
        GGML_TYPE_BF16
        GGML_TYPE_TQ1_0
        GGML_TYPE_TQ2_0
        GGML_TYPE_COUNT
