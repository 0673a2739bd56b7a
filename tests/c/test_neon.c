/* The NEON unit (its three builds linked in: gr_isa_neon; gr_isa_neon_dotprod and
 * gr_isa_neon_i8mm where the CPU has dotprod, i8mm) against generic.c, on random valid blocks (finite f16 scales) and on
 * saturated ones (every weight and activation byte at its extreme), for several lengths n.
 * One line per kernel; exit status 1 on any mismatch. tests/c/run_qemu.sh builds and runs it.
 *
 *   test_neon [--expect-dotprod=0|1] [--expect-i8mm=0|1]   (what the run-time checks must answer) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "isa/generic.h"

extern const isa_kernels_t gr_isa_neon, gr_isa_neon_dotprod, gr_isa_neon_i8mm;
int gr_neon_cpu_has_dotprod(void);
int gr_neon_cpu_has_i8mm(void);

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {                           /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}
static float rndf(float lo, float hi) { return lo + (hi - lo) * (float)((rnd() >> 40) * 0x1p-24); }

static ggml_fp16_t f16_of(float f) {                  /* a finite half near f (truncated; any half will do) */
    uint32_t b;
    memcpy(&b, &f, 4);
    int e = (int)((b >> 23) & 0xff) - 127 + 15;
    if (e <= 0) return (ggml_fp16_t)((b >> 16) & 0x8000);
    if (e >= 31) e = 30;
    return (ggml_fp16_t)(((b >> 16) & 0x8000) | (e << 10) | ((b >> 13) & 0x3ff));
}
static ggml_fp16_t rnd_scale(void) { return f16_of(rndf(1e-3f, 1.0f) * (rnd() & 1 ? -1.0f : 1.0f)); }

static const struct { int type; const char *name; size_t size; int blck; } TYPES[] = {
    {GGML_TYPE_Q4_0, "q4_0", sizeof(block_q4_0), 32}, {GGML_TYPE_Q4_1, "q4_1", sizeof(block_q4_1), 32},
    {GGML_TYPE_Q5_0, "q5_0", sizeof(block_q5_0), 32}, {GGML_TYPE_Q5_1, "q5_1", sizeof(block_q5_1), 32},
    {GGML_TYPE_Q8_0, "q8_0", sizeof(block_q8_0), 32}, {GGML_TYPE_Q2_K, "q2_K", sizeof(block_q2_K), QK_K},
    {GGML_TYPE_Q3_K, "q3_K", sizeof(block_q3_K), QK_K}, {GGML_TYPE_Q4_K, "q4_K", sizeof(block_q4_K), QK_K},
    {GGML_TYPE_Q5_K, "q5_K", sizeof(block_q5_K), QK_K}, {GGML_TYPE_Q6_K, "q6_K", sizeof(block_q6_K), QK_K},
    {GGML_TYPE_IQ4_NL, "iq4_nl", sizeof(block_iq4_nl), 32}, {GGML_TYPE_IQ4_XS, "iq4_xs", sizeof(block_iq4_xs), QK_K},
};

/* nb blocks of a type: random bytes (mode 0), all 0x00 (1) or all 0xFF (2), then finite scales */
static void fill_weights(int type, size_t size, uint8_t *w, int nb, int mode) {
    for (size_t k = 0; k < size * nb; k++)
        w[k] = mode == 0 ? (uint8_t)rnd() : mode == 1 ? 0x00 : 0xFF;
    for (int i = 0; i < nb; i++) {
        uint8_t *b = w + i * size;
        switch (type) {
        case GGML_TYPE_Q4_0: ((block_q4_0 *)b)->d = rnd_scale(); break;
        case GGML_TYPE_Q4_1: ((block_q4_1 *)b)->d = rnd_scale(); ((block_q4_1 *)b)->m = rnd_scale(); break;
        case GGML_TYPE_Q5_0: ((block_q5_0 *)b)->d = rnd_scale(); break;
        case GGML_TYPE_Q5_1: ((block_q5_1 *)b)->d = rnd_scale(); ((block_q5_1 *)b)->m = rnd_scale(); break;
        case GGML_TYPE_Q8_0: ((block_q8_0 *)b)->d = rnd_scale(); break;
        case GGML_TYPE_Q2_K: ((block_q2_K *)b)->d = rnd_scale(); ((block_q2_K *)b)->dmin = rnd_scale(); break;
        case GGML_TYPE_Q3_K: ((block_q3_K *)b)->d = rnd_scale(); break;
        case GGML_TYPE_Q4_K: ((block_q4_K *)b)->d = rnd_scale(); ((block_q4_K *)b)->dmin = rnd_scale(); break;
        case GGML_TYPE_Q5_K: ((block_q5_K *)b)->d = rnd_scale(); ((block_q5_K *)b)->dmin = rnd_scale(); break;
        case GGML_TYPE_Q6_K: ((block_q6_K *)b)->d = rnd_scale(); break;
        case GGML_TYPE_IQ4_NL: ((block_iq4_nl *)b)->d = rnd_scale(); break;
        case GGML_TYPE_IQ4_XS: ((block_iq4_xs *)b)->d = rnd_scale(); break;
        }
    }
}

/* one activation row of n values in the type's vec_dot_type (q8_1: qs in [-127, 127]; q8_K:
 * [-128, 127]), valid as the quantizers write them; mode 1/2: every qs at its minimum/maximum */
static void fill_activation(int blck, uint8_t *y, int n, int mode) {
    if (blck == 32) {
        block_q8_1 *b = (block_q8_1 *)y;
        for (int i = 0; i < n / 32; i++) {
            int sum = 0;
            b[i].d = rndf(1e-4f, 0.1f);
            for (int j = 0; j < 32; j++) {
                b[i].qs[j] = (int8_t)(mode == 0 ? (int)(rnd() % 255) - 127 : mode == 1 ? -127 : 127);
                sum += b[i].qs[j];
            }
            b[i].s = b[i].d * sum;
        }
    } else {
        block_q8_K *b = (block_q8_K *)y;
        for (int i = 0; i < n / QK_K; i++) {
            b[i].d = rndf(1e-4f, 0.1f);
            for (int j = 0; j < QK_K; j++)
                b[i].qs[j] = (int8_t)(mode == 0 ? (int)(rnd() % 256) - 128 : mode == 1 ? -128 : 127);
            for (int j = 0; j < 16; j++) {
                int sum = 0;
                for (int l = 0; l < 16; l++)
                    sum += b[i].qs[16 * j + l];
                b[i].bsums[j] = (int16_t)sum;
            }
        }
    }
}

/* the fields of one block in file order, as (bytes, step) with step 4 or 2: how the engine
 * interleaves 8 rows (ggml_blocks.h's x8 layouts; _engine.r8_parts); 0: no such layout */
static int r8_parts(int type, int *size, int *step) {
    static const int P[][12] = {
        {GGML_TYPE_Q4_0, 2, 2, 2, 16, 4},          {GGML_TYPE_Q8_0, 2, 2, 2, 32, 4},
        {GGML_TYPE_Q4_1, 3, 2, 2, 2, 2, 16, 4},    {GGML_TYPE_Q2_K, 4, 16, 2, 64, 4, 2, 2, 2, 2},
        {GGML_TYPE_Q4_K, 4, 2, 2, 2, 2, 12, 4, 128, 4},
        {GGML_TYPE_Q5_K, 5, 2, 2, 2, 2, 12, 4, 32, 4, 128, 4},
        {GGML_TYPE_Q6_K, 4, 128, 4, 64, 4, 16, 2, 2, 2},
        {GGML_TYPE_IQ4_NL, 2, 2, 2, 16, 4},
    };
    for (size_t k = 0; k < sizeof P / sizeof P[0]; k++) {
        if (P[k][0] != type)
            continue;
        for (int f = 0; f < P[k][1]; f++) {
            size[f] = P[k][2 + 2 * f];
            step[f] = P[k][3 + 2 * f];
        }
        return P[k][1];
    }
    return 0;
}

/* 8 rows of nb blocks (row r at src + r * nb * bs) -> dst, interleaved block by block:
 * field f of row r, in steps of step_f bytes, at 8 * (its offset) + 8 * step_f * k + step_f * r */
static void repack8(uint8_t *dst, const uint8_t *src, int type, int nb, size_t bs) {
    int size[5], step[5], nf = r8_parts(type, size, step);
    for (int i = 0; i < nb; i++) {
        for (int r = 0; r < 8; r++) {
            const uint8_t *b = src + (r * nb + i) * bs;
            uint8_t *o = dst + i * 8 * bs;
            for (int f = 0, at = 0; f < nf; at += size[f], f++)
                for (int k = 0; k < size[f] / step[f]; k++)
                    memcpy(o + 8 * at + 8 * step[f] * k + step[f] * r, b + at + step[f] * k, step[f]);
        }
    }
}

static int failures = 0;

static void report(const char *isa, const char *type, const char *kernel, int cases, int bad, const char *how) {
    printf("%-13s %-5s %-10s %5d cases  %s%s\n", isa, type, kernel, cases, bad ? "FAIL " : "ok, ", bad ? "" : how);
    if (bad) {
        printf("    %d of %d differ\n", bad, cases);
        failures++;
    }
}

static int same_bits(float a, float b) { return memcmp(&a, &b, 4) == 0; }

static void check_quantized(const isa_kernels_t *u) {
    static const int nblocks[] = {1, 2, 3, 7, 8, 33};
    for (size_t k = 0; k < sizeof TYPES / sizeof TYPES[0]; k++) {
        const int t = TYPES[k].type, blck = TYPES[k].blck;
        const size_t ysize = blck == 32 ? sizeof(block_q8_1) : sizeof(block_q8_K);
        int cases = 0, bad = 0, cases4 = 0, bad4 = 0;
        for (size_t c = 0; c < sizeof nblocks / sizeof nblocks[0]; c++) {
            const int nb = blck == 32 ? nblocks[c] : (nblocks[c] + 1) / 2, n = nb * blck;
            const int64_t ystride = (int64_t)(nb * ysize + n);      /* room for q8_1's packed scales */
            uint8_t *w = malloc(nb * TYPES[k].size), *y = malloc(4 * ystride);
            for (int trial = 0; trial < 40; trial++) {
                const int mode = trial < 3 ? trial : 0;              /* saturated blocks first */
                float ref[4], one, four[4 * 3];
                fill_weights(t, TYPES[k].size, w, nb, trial == 1 ? 2 : trial == 2 ? 1 : mode);
                for (int r = 0; r < 4; r++)
                    fill_activation(blck, y + r * ystride, n, mode);
                for (int r = 0; r < 4; r++) {
                    gr_isa_generic.types[t].vec_dot(n, &ref[r], w, y + r * ystride);
                    u->types[t].vec_dot(n, &one, w, y + r * ystride);
                    cases++;
                    bad += !same_bits(one, ref[r]);
                    if (!same_bits(one, ref[r]) && bad < 4)
                        printf("    %s n=%d row %d: %.9g, generic %.9g\n", TYPES[k].name, n, r, one, ref[r]);
                }
                if (u->types[t].vec_dot_x4) {
                    u->types[t].vec_dot_x4(n, four, 3, w, y, ystride);
                    for (int r = 0; r < 4; r++) {
                        cases4++;
                        bad4 += !same_bits(four[3 * r], ref[r]);
                    }
                }
            }
            free(w);
            free(y);
        }
        report(u->name, TYPES[k].name, "vec_dot", cases, bad, "bits equal");
        if (u->types[t].vec_dot_x4)
            report(u->name, TYPES[k].name, "vec_dot_x4", cases4, bad4, "bits equal");
    }
}

/* dot_r8 / dot_r8_x4: 8 rows interleaved as the engine does at load, 4 tokens; each (row,
 * token) against generic's vec_dot of the row as the file has it */
static void check_r8(const isa_kernels_t *u) {
    static const int nblocks[] = {1, 2, 3, 8, 17};
    for (size_t k = 0; k < sizeof TYPES / sizeof TYPES[0]; k++) {
        const int t = TYPES[k].type, blck = TYPES[k].blck;
        const size_t bs = TYPES[k].size, ysize = blck == 32 ? sizeof(block_q8_1) : sizeof(block_q8_K);
        int size[5], step[5], cases = 0, bad1 = 0, bad4 = 0;
        if (!u->types[t].dot_r8)
            continue;
        if (!u->types[t].dot_r8_x4 || !r8_parts(t, size, step)) {
            report(u->name, TYPES[k].name, "dot_r8", 1, 1, "");
            continue;
        }
        for (size_t c = 0; c < sizeof nblocks / sizeof nblocks[0]; c++) {
            const int nb = blck == 32 ? nblocks[c] : (nblocks[c] + 1) / 2, n = nb * blck;
            const int64_t ystride = (int64_t)(nb * ysize + n), sstride = 11;
            uint8_t *w = malloc(8 * nb * bs), *wp = malloc(8 * nb * bs), *y = malloc(4 * ystride);
            for (int trial = 0; trial < 12; trial++) {
                const int mode = trial < 3 ? trial : 0;
                float ref[4][8], one[8], four[4 * 11];
                fill_weights(t, bs, w, 8 * nb, trial == 1 ? 2 : trial == 2 ? 1 : mode);
                for (int r = 0; r < 4; r++)
                    fill_activation(blck, y + r * ystride, n, mode);
                repack8(wp, w, t, nb, bs);
                for (int tok = 0; tok < 4; tok++)
                    for (int r = 0; r < 8; r++)
                        gr_isa_generic.types[t].vec_dot(n, &ref[tok][r], w + r * nb * bs, y + tok * ystride);
                u->types[t].dot_r8_x4(n, four, sstride, wp, y, ystride);
                for (int tok = 0; tok < 4; tok++) {
                    u->types[t].dot_r8(n, one, 0, wp, y + tok * ystride, 0);
                    for (int r = 0; r < 8; r++) {
                        cases++;
                        bad1 += !same_bits(one[r], ref[tok][r]);
                        bad4 += !same_bits(four[sstride * tok + r], ref[tok][r]);
                        if (!same_bits(one[r], ref[tok][r]) && bad1 < 4)
                            printf("    %s n=%d row %d: %.9g, generic %.9g\n", TYPES[k].name, n, r, one[r], ref[tok][r]);
                    }
                }
            }
            free(w);
            free(wp);
            free(y);
        }
        report(u->name, TYPES[k].name, "dot_r8", cases, bad1, "bits equal");
        report(u->name, TYPES[k].name, "dot_r8_x4", cases, bad4, "bits equal");
    }
}

static void check_float(const isa_kernels_t *u) {
    static const int lens[] = {1, 7, 8, 9, 31, 64, 100, 4096};
    for (int f16 = 0; f16 < 2; f16++) {
        const int t = f16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
        int cases = 0, bad = 0;
        double worst = 0.0;
        for (size_t c = 0; c < sizeof lens / sizeof lens[0]; c++) {
            const int n = lens[c];
            float *x = malloc(4 * n), *y = malloc(4 * n);
            ggml_fp16_t *h = malloc(2 * n);
            for (int trial = 0; trial < 30; trial++) {
                float a, b;
                double mag = 0.0;
                for (int i = 0; i < n; i++) {
                    h[i] = f16_of(rndf(-100.0f, 100.0f));
                    x[i] = f16 ? gr_fp16_to_fp32(h[i]) : rndf(-100.0f, 100.0f);
                    y[i] = rndf(-30.0f, 30.0f);
                    mag += fabs((double)(x[i] * y[i]));
                }
                const void *w = f16 ? (const void *)h : (const void *)x;
                gr_isa_generic.types[t].vec_dot(n, &b, w, y);
                u->types[t].vec_dot(n, &a, w, y);
                double err = fabs((double)a - (double)b), bound = 0x1p-22 * mag;
                worst = fmax(worst, mag > 0 ? err / mag : 0.0);
                cases++;
                bad += !(err <= bound);
            }
            free(x);
            free(y);
            free(h);
        }
        char how[96];
        snprintf(how, sizeof how, "within 2^-22 sum|x y| (worst %.2g sum|x y|)", worst);
        report(u->name, f16 ? "f16" : "f32", "vec_dot", cases, bad, how);
    }
}

static void check_attention(const isa_kernels_t *u) {
    static const int ns[] = {1, 3, 4, 5, 32, 64, 100, 128}, npos[] = {1, 3, 4, 5, 17, 40};
    for (int f16 = 0; f16 < 2; f16++) {
        int cases = 0, bad_s = 0, bad_m = 0;
        for (size_t c = 0; c < sizeof ns / sizeof ns[0]; c++) {
            for (size_t d = 0; d < sizeof npos / sizeof npos[0]; d++) {
                const int n = ns[c], n_pos = npos[d];
                const int64_t stride = n + (int64_t)(rnd() % 9), off = (int64_t)(rnd() % 5), len = off + n_pos * stride;
                void *kv = malloc(4 * len);
                float *q = malloc(4 * n), *p = malloc(4 * n_pos), *a0 = malloc(4 * n_pos), *a1 = malloc(4 * n_pos);
                float *o0 = malloc(4 * n), *o1 = malloc(4 * n);
                for (int64_t i = 0; i < len; i++) {
                    if (f16)
                        ((ggml_fp16_t *)kv)[i] = f16_of(rndf(-3.0f, 3.0f));
                    else
                        ((float *)kv)[i] = rndf(-3.0f, 3.0f);
                }
                for (int i = 0; i < n; i++)
                    q[i] = rndf(-2.0f, 2.0f);
                for (int i = 0; i < n_pos; i++)
                    p[i] = rndf(0.0f, 1.0f);
                const float scale = 1.0f / sqrtf((float)n);
                gr_isa_generic.kv_scores(a0, q, kv, off, stride, n_pos, n, scale, f16);
                u->kv_scores(a1, q, kv, off, stride, n_pos, n, scale, f16);
                gr_isa_generic.kv_mix(o0, p, kv, off, stride, n_pos, n, f16);
                u->kv_mix(o1, p, kv, off, stride, n_pos, n, f16);
                cases++;
                bad_s += memcmp(a0, a1, 4 * n_pos) != 0;
                bad_m += memcmp(o0, o1, 4 * n) != 0;
                free(kv); free(q); free(p); free(a0); free(a1); free(o0); free(o1);
            }
        }
        report(u->name, f16 ? "f16" : "f32", "kv_scores", cases, bad_s, "bits equal");
        report(u->name, f16 ? "f16" : "f32", "kv_mix", cases, bad_m, "bits equal");
    }
}

static void check_unit(const isa_kernels_t *u) {
    int before = failures;
    check_quantized(u);
    check_r8(u);
    check_float(u);
    check_attention(u);
    if (failures == before)
        printf("%s: all kernels agree with generic.c\n", u->name);
}

int main(int argc, char **argv) {
    const int has_dp = gr_neon_cpu_has_dotprod(), has_mm = gr_neon_cpu_has_i8mm();
    printf("cpu: dotprod %s, i8mm %s\n", has_dp ? "yes" : "no", has_mm ? "yes" : "no");
    for (int i = 1; i < argc; i++) {
        int dp = strncmp(argv[i], "--expect-dotprod=", 17) == 0, mm = strncmp(argv[i], "--expect-i8mm=", 14) == 0;
        if ((dp && atoi(argv[i] + 17) != has_dp) || (mm && atoi(argv[i] + 14) != has_mm)) {
            printf("FAIL: the run-time check disagrees with %s\n", argv[i]);
            failures++;
        }
    }
    check_unit(&gr_isa_neon);
    if (has_dp)
        check_unit(&gr_isa_neon_dotprod);
    else
        printf("neon_dotprod: skipped, this CPU lacks dotprod (ASIMDDP)\n");
    if (has_mm)
        check_unit(&gr_isa_neon_i8mm);
    else
        printf("neon_i8mm: skipped, this CPU lacks i8mm (or dotprod)\n");
    printf("%s\n", failures ? "FAILED" : "PASSED");
    return failures ? 1 : 0;
}
