/* One core's float32 FMA peak: 12 independent chains of 64-byte vector FMAs (more than the
   FMA units' latency times their number, so none waits), 2 FLOPs per lane. bench/conv.py
   --peak builds and runs it (cc -O2 -march=native); it prints GFLOP/s. */
#include <stdio.h>
#include <time.h>

typedef float vr __attribute__((vector_size(64)));

#define INIT(i) vr a##i = (vr){0} + (float)(i);
#define STEP(i) a##i = a##i * b + c;

int main(void)
{
    vr b = (vr){0} + 1.0000001f, c = (vr){0} + 0.9999999f;
    INIT(0) INIT(1) INIT(2) INIT(3) INIT(4) INIT(5) INIT(6) INIT(7) INIT(8) INIT(9) INIT(10)
    INIT(11)
    long n = 100000000;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long k = 0; k < n; k++) {
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7) STEP(8) STEP(9)
        STEP(10) STEP(11)
        __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3));   /* kept in the loop */
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    vr t = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
    printf("%.1f %g\n", (double)n * 12 * 2 * (64 / sizeof(float)) / s / 1e9, (double)t[0]);
    return 0;
}
