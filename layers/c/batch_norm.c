/* BatchNorm2D's passes over channel-major rows on the CPU (layers/batch_norm_c.py has the
   equations). Channel c's row holds its m elements; a call takes the channels [c0, c1).
   Sums run in vectors of the float type over segments of at most seg elements, each
   segment's sum added into a double (as the NumPy route's float32 partial sums). With relu,
   the output is max(., 0) and, in backward, dy counts only where that output y is > 0 (the
   ReLU fused after the layer). */
#include <stddef.h>
#include <string.h>

typedef real vr __attribute__((vector_size(64)));
typedef real vru __attribute__((vector_size(64), aligned(sizeof(real))));
#define VL ((long)(64 / sizeof(real)))
#define AI static inline __attribute__((always_inline))

AI vr ld(const real *p) { return *(const vru *)p; }
AI void st(real *p, vr v) { *(vru *)p = v; }

/* an integer vector of vr's size, for masks (a comparison gives lanes of all ones or zeros) */
typedef long long vi __attribute__((vector_size(64)));

AI real hsum(vr v)
{
    real sum = 0;
    for (long l = 0; l < VL; l++) sum += v[l];
    return sum;
}

/* the sums of v and v * w over one segment [0, n) (w == NULL: v * v), v = a - center,
   into *s1, *s2 */
AI void segment(const real *a, const real *w, real center, long n, double *s1, double *s2)
{
    vr v1 = (vr){0}, v2 = (vr){0}, cv = (vr){0} + center;
    long i = 0;
    for (; i + VL <= n; i += VL) {
        vr v = ld(a + i) - cv;
        v1 += v;
        v2 += v * (w ? ld(w + i) : v);
    }
    real r1 = hsum(v1), r2 = hsum(v2);
    for (; i < n; i++) {
        real v = a[i] - center;
        r1 += v;
        r2 += v * (w ? w[i] : v);
    }
    *s1 += r1;
    *s2 += r2;
}

/* mean[c], sq[c]: the means of v and v^2 over row c, v = x - center[c] (center may be NULL) */
void bn_moments(const real *x, long m, const real *center, double *mean, double *sq,
                long seg, long c0, long c1)
{
    for (long c = c0; c < c1; c++) {
        double s1 = 0, s2 = 0;
        for (long i = 0; i < m; i += seg)
            segment(x + c * m + i, NULL, center ? center[c] : 0, m - i < seg ? m - i : seg,
                    &s1, &s2);
        mean[c] = s1 / m;
        sq[c] = s2 / m;
    }
}

/* y = x * scale[c] + offset[c] per row, rectified with relu (y may be x); plain loops, which
   the compiler vectorizes */
void bn_forward(const real *x, real *y, const real *scale, const real *offset, long m,
                int relu, long c0, long c1)
{
    for (long c = c0; c < c1; c++) {
        const real *xc = x + c * m;
        real *yc = y + c * m, s = scale[c], o = offset[c];
        if (relu)
            for (long i = 0; i < m; i++) {
                real v = xc[i] * s + o;
                yc[i] = v <= 0 ? 0 : v;          /* NaN stays NaN, as np.maximum keeps it */
            }
        else
            for (long i = 0; i < m; i++) yc[i] = xc[i] * s + o;
    }
}

/* the sums of d and d * x over one segment [0, n), d = dy masked by y > 0 (y non-NULL:
   written back into dy), into *s1, *s2 */
AI void masked_segment(real *dy, const real *x, const real *y, long n, double *s1, double *s2)
{
    vr v1 = (vr){0}, v2 = (vr){0}, zero = (vr){0};
    long i = 0;
    for (; i + VL <= n; i += VL) {
        vr d = ld(dy + i);
        if (y) {
            d = (vr)((vi)d & (vi)(ld(y + i) > zero));
            st(dy + i, d);
        }
        v1 += d;
        v2 += d * ld(x + i);
    }
    real r1 = hsum(v1), r2 = hsum(v2);
    for (; i < n; i++) {
        if (y && !(y[i] > 0))
            dy[i] = 0;
        r1 += dy[i];
        r2 += dy[i] * x[i];
    }
    *s1 += r1;
    *s2 += r2;
}

/* with y (the fused ReLU's output), dy = 0 wherever y <= 0 (in place); sums[c] = sum of dy
   and dots[c] = sum of dy * x over row c */
void bn_sums(real *dy, const real *x, const real *y, long m, double *sums, double *dots,
             long seg, long c0, long c1)
{
    for (long c = c0; c < c1; c++) {
        double s1 = 0, s2 = 0;
        for (long i = 0; i < m; i += seg)
            masked_segment(dy + c * m + i, x + c * m + i, y ? y + c * m + i : NULL,
                           m - i < seg ? m - i : seg, &s1, &s2);
        sums[c] = s1;
        dots[c] = s2;
    }
}

/* dx = a[c] * dy + b[c] * x + c[c] per row, into dy (b and c NULL: dx = a[c] * dy) */
void bn_backward(real *dy, const real *x, const real *a, const real *b, const real *cc,
                 long m, long c0, long c1)
{
    for (long c = c0; c < c1; c++) {
        real *dc = dy + c * m, av = a[c], bv = b ? b[c] : 0, cv = cc ? cc[c] : 0;
        const real *xc = x + c * m;
        if (b)
            for (long i = 0; i < m; i++) dc[i] = dc[i] * av + xc[i] * bv + cv;
        else
            for (long i = 0; i < m; i++) dc[i] *= av;
    }
}
