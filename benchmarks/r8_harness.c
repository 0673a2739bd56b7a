/* The x86 8-row q4_K kernels timed alone, no Python: one 8-row group (n = 4096) called in a
 * loop, either G = 4 groups (in L1/L2: compute only) or G = 3000 (54 MB, streamed from memory),
 * for 1, 4 and 8 tokens (8: two 4-token calls per group, as the engine makes them). Prints
 * ns per group and G multiply-adds/s (8 rows x n x tokens). Build from the repository root:
 *
 *   gcc -O3 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512vbmi -mavx2 -mfma -mf16c \
 *       -DGR_WIDTH=512 -DGR_UNIT_TABLE=r8_harness_table -Iguanaco_rt/_kernels \
 *       -o /tmp/r8_harness benchmarks/r8_harness.c && /tmp/r8_harness 4 && /tmp/r8_harness 3000
 *
 * (-DGR_WIDTH=256 without the -mavx512 flags: the avx2 unit.) Weights and activations are
 * random; d = 1, so the figures are the kernel's, whatever the values. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "isa/x86.c"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv) {
    const int n = 4096, nb = n / QK_K, G = argc > 1 ? atoi(argv[1]) : 4;
    const size_t xs = sizeof(block_q4_Kx8) * nb;
    const int64_t ys = sizeof(block_q8_K) * nb, os = 8 * (int64_t)G;
    uint8_t *x = aligned_alloc(64, xs * G);
    block_q8_K *y = aligned_alloc(64, ys * 8);
    float *out = malloc(sizeof(float) * 8 * G * 8);
    const isa_kernels_t *K = &GR_UNIT_TABLE;
    dot_r8_fn f1 = K->types[GGML_TYPE_Q4_K].dot_r8, f4 = K->types[GGML_TYPE_Q4_K].dot_r8_x4;
    if (G < 1 || !x || !y || !out)
        return 1;
    for (size_t i = 0; i < xs * G; i++)
        x[i] = (uint8_t)rand();
    for (int g = 0; g < G; g++)
        for (int i = 0; i < nb; i++) {
            block_q4_Kx8 *b = (block_q4_Kx8 *)(x + g * xs) + i;
            for (int r = 0; r < 8; r++)
                b->d[r] = b->dmin[r] = 0x3c00;        /* 1.0 */
        }
    for (int t = 0; t < 8 * nb; t++) {
        y[t].d = 0.01f;
        for (int j = 0; j < QK_K; j++)
            y[t].qs[j] = (int8_t)(rand() % 255 - 127);
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int k = 0; k < 16; k++)
                sum += y[t].qs[16 * j + k];
            y[t].bsums[j] = (int16_t)sum;
        }
    }
    printf("%s unit, %d groups (%.1f MB)\n", K->name, G, xs * G / 1e6);
    for (int T = 1; T <= 8; T = T == 1 ? 4 : 2 * T) {
        double best = 1e9;
        for (int rep = 0; rep < 7; rep++) {
            const int iters = G > 100 ? 3 : 2000;
            double t0 = now(), dt;
            for (int it = 0; it < iters; it++)
                for (int g = 0; g < G; g++) {
                    if (T == 1)
                        f1(n, out + 8 * g, os, x + g * xs, y, ys);
                    else
                        for (int t4 = 0; t4 < T; t4 += 4)
                            f4(n, out + 8 * g + t4 * os, os, x + g * xs, (uint8_t *)y + t4 * ys, ys);
                }
            dt = (now() - t0) / iters / G;
            if (dt < best)
                best = dt;
        }
        printf("%d tokens: %.1f ns a group, %.1f G multiply-adds/s\n", T, best * 1e9, 8.0 * n * T / best / 1e9);
    }
    return 0;
}
