/* The CPU's fp32 peak, measured: THREADS threads each run 12 independent chains of 8-lane
   AVX2 FMAs (enough to hide the FMA latency on both pipes) for ITERS iterations, and the
   program prints the GFLOP/s they reached together. Built and run by bench/run.py:
   cc -O2 -mavx2 -mfma -pthread fma_probe.c -o fma_probe && ./fma_probe THREADS ITERS */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long iters;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define FMA(a) a = _mm256_fmadd_ps(a, b, c)

static void *work(void *out) {
    __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2), a3 = _mm256_set1_ps(3);
    __m256 a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5), a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7);
    __m256 a8 = _mm256_set1_ps(8), a9 = _mm256_set1_ps(9), a10 = _mm256_set1_ps(10), a11 = _mm256_set1_ps(11);
    for (long n = 0; n < iters; n++) {
        FMA(a0); FMA(a1); FMA(a2); FMA(a3); FMA(a4); FMA(a5);
        FMA(a6); FMA(a7); FMA(a8); FMA(a9); FMA(a10); FMA(a11);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    _mm256_storeu_ps((float *)out, s);  /* keeps the chains from being optimized away */
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s THREADS ITERS\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[1]);
    iters = atol(argv[2]);
    if (threads < 1 || threads > 256) return 2;
    pthread_t t[256];
    static float out[256][8];
    double start = now();
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, work, out[i]);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    double seconds = now() - start;
    printf("%.1f\n", threads * (double)iters * 12 * 8 * 2 / seconds / 1e9);
    return 0;
}
