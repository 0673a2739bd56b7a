# Attention inner loops, generic: q . k and out += a * v over one head, with the
# cached key/value row in f32 or f16.

cdef inline float kv_dot(const float* q, const void* kv, int64_t off, int n, int f16) noexcept nogil:
    cdef float acc = 0.0
    cdef int i
    cdef const float* kf
    cdef const uint16_t* kh
    if f16:
        kh = (<const uint16_t*>kv) + off
        for i in range(n):
            acc += q[i] * fp16_to_fp32(kh[i])
    else:
        kf = (<const float*>kv) + off
        for i in range(n):
            acc += q[i] * kf[i]
    return acc

cdef inline void kv_axpy(float* out, float a, const void* kv, int64_t off, int n, int f16) noexcept nogil:
    cdef int i
    cdef const float* vf
    cdef const uint16_t* vh
    if f16:
        vh = (<const uint16_t*>kv) + off
        for i in range(n):
            out[i] += a * fp16_to_fp32(vh[i])
    else:
        vf = (<const float*>kv) + off
        for i in range(n):
            out[i] += a * vf[i]

