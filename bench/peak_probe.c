/* The CPU's peak per instruction set, measured: THREADS threads each run 12 independent chains of
   one multiply-accumulate instruction (enough to hide its latency on every pipe that takes it) for
   ITERS iterations, and the program prints the G(FL)OP/s they reached together (a multiply-add
   counts as 2 operations). Built and run by bench/run.py:
     cc -O2 -pthread peak_probe.c -o peak_probe && ./peak_probe MODE THREADS ITERS
   MODE: avx2_fma     fp32, 8-lane FMA (VFMADD, AVX2+FMA)
         avx512_fma   fp32, 16-lane FMA (AVX-512F)
         avx_vnni     int8, VPDPBUSD on 256 bits: 8 lanes x 4 uint8*int8 products (AVX-VNNI)
         avx512_vnni  int8, VPDPBUSD on 512 bits: 16 lanes x 4 products (AVX512-VNNI)
   Each kernel is compiled for its own instruction set (target attributes), so one binary runs on
   any x86-64; bench/run.py only asks for the modes /proc/cpuinfo lists. AMX is not probed: its tiles
   need the kernel's permission (arch_prctl) and a different loop. */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long iters;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define CHAINS(OP) \
    for (long n = 0; n < iters; n++) { OP(a0); OP(a1); OP(a2); OP(a3); OP(a4); OP(a5); \
                                       OP(a6); OP(a7); OP(a8); OP(a9); OP(a10); OP(a11); }
#define SUM(add) add(add(add(add(a0, a1), add(a2, a3)), add(add(a4, a5), add(a6, a7))), \
                     add(add(a8, a9), add(a10, a11)))

__attribute__((target("avx2,fma"))) static void *avx2_fma(void *out) {
    __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2), a3 = _mm256_set1_ps(3);
    __m256 a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5), a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7);
    __m256 a8 = _mm256_set1_ps(8), a9 = _mm256_set1_ps(9), a10 = _mm256_set1_ps(10), a11 = _mm256_set1_ps(11);
#define FMA8(a) a = _mm256_fmadd_ps(a, b, c)
    CHAINS(FMA8)
    _mm256_storeu_ps((float *)out, SUM(_mm256_add_ps));  /* keeps the chains from being optimized away */
    return NULL;
}

__attribute__((target("avx512f"))) static void *avx512_fma(void *out) {
    __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    __m512 a0 = _mm512_set1_ps(0), a1 = _mm512_set1_ps(1), a2 = _mm512_set1_ps(2), a3 = _mm512_set1_ps(3);
    __m512 a4 = _mm512_set1_ps(4), a5 = _mm512_set1_ps(5), a6 = _mm512_set1_ps(6), a7 = _mm512_set1_ps(7);
    __m512 a8 = _mm512_set1_ps(8), a9 = _mm512_set1_ps(9), a10 = _mm512_set1_ps(10), a11 = _mm512_set1_ps(11);
#define FMA16(a) a = _mm512_fmadd_ps(a, b, c)
    CHAINS(FMA16)
    _mm512_storeu_ps((float *)out, SUM(_mm512_add_ps));
    return NULL;
}

__attribute__((target("avxvnni"))) static void *avx_vnni(void *out) {
    __m256i b = _mm256_set1_epi8(3), c = _mm256_set1_epi8(-2);
    __m256i a0 = _mm256_set1_epi32(0), a1 = _mm256_set1_epi32(1), a2 = _mm256_set1_epi32(2), a3 = _mm256_set1_epi32(3);
    __m256i a4 = _mm256_set1_epi32(4), a5 = _mm256_set1_epi32(5), a6 = _mm256_set1_epi32(6), a7 = _mm256_set1_epi32(7);
    __m256i a8 = _mm256_set1_epi32(8), a9 = _mm256_set1_epi32(9), a10 = _mm256_set1_epi32(10), a11 = _mm256_set1_epi32(11);
#define DP8(a) a = _mm256_dpbusd_avx_epi32(a, b, c)
    CHAINS(DP8)
    _mm256_storeu_si256((__m256i *)out, SUM(_mm256_add_epi32));
    return NULL;
}

__attribute__((target("avx512f,avx512vnni"))) static void *avx512_vnni(void *out) {
    __m512i b = _mm512_set1_epi8(3), c = _mm512_set1_epi8(-2);
    __m512i a0 = _mm512_set1_epi32(0), a1 = _mm512_set1_epi32(1), a2 = _mm512_set1_epi32(2), a3 = _mm512_set1_epi32(3);
    __m512i a4 = _mm512_set1_epi32(4), a5 = _mm512_set1_epi32(5), a6 = _mm512_set1_epi32(6), a7 = _mm512_set1_epi32(7);
    __m512i a8 = _mm512_set1_epi32(8), a9 = _mm512_set1_epi32(9), a10 = _mm512_set1_epi32(10), a11 = _mm512_set1_epi32(11);
#define DP16(a) a = _mm512_dpbusd_epi32(a, b, c)
    CHAINS(DP16)
    _mm512_storeu_si512(out, SUM(_mm512_add_epi32));
    return NULL;
}

static const struct { const char *name; void *(*kernel)(void *); double ops; } MODES[] = {
    {"avx2_fma", avx2_fma, 8 * 2},         /* per instruction: lanes x (multiply + add) */
    {"avx512_fma", avx512_fma, 16 * 2},
    {"avx_vnni", avx_vnni, 8 * 4 * 2},     /* lanes x 4 products x (multiply + add) */
    {"avx512_vnni", avx512_vnni, 16 * 4 * 2},
};

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s avx2_fma|avx512_fma|avx_vnni|avx512_vnni THREADS ITERS\n", argv[0]);
        return 2;
    }
    int mode = -1;
    for (int i = 0; i < (int)(sizeof MODES / sizeof *MODES); i++)
        if (strcmp(argv[1], MODES[i].name) == 0) mode = i;
    int threads = atoi(argv[2]);
    iters = atol(argv[3]);
    if (mode < 0 || threads < 1 || threads > 256 || iters < 1) return 2;
    pthread_t t[256];
    static _Alignas(64) char out[256][64];
    double start = now();
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, MODES[mode].kernel, out[i]);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    double seconds = now() - start;
    printf("%.1f\n", threads * (double)iters * 12 * MODES[mode].ops / seconds / 1e9);
    return 0;
}
