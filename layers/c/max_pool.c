/* MaxPool2D's backward on the CPU (layers/max_pool_c.py has the equation and the layout).

   dy and idx are (planes, OH, OW), dx (planes, H, W), all dense; idx holds each window's argmax
   tap t = i * k + j (int8, k * k < 128). */
#include <string.h>

/* planes [p0, p1): dx = 0, then each dy added at its window's argmax, input pixel
   (r s + i - pad, q s + j - pad), in the order of the outputs (r, q) (as the NumPy route's
   add.at adds them), skipped where that pixel is padding (a window whose input is all -inf
   keeps tap 0, which may be: the NumPy route crops it) */
void max_pool_backward(const real *dy, const signed char *idx, real *dx, long oh, long ow,
                       long h, long w, long k, long s, long pad, long p0, long p1)
{
    for (long p = p0; p < p1; p++) {
        real *d = dx + p * h * w;
        const real *g = dy + p * oh * ow;
        const signed char *t = idx + p * oh * ow;
        memset(d, 0, sizeof(real) * (size_t)(h * w));
        for (long r = 0; r < oh; r++)
            for (long q = 0; q < ow; q++) {
                long tap = t[r * ow + q];
                long row = r * s + tap / k - pad, col = q * s + tap % k - pad;
                if (row >= 0 && row < h && col >= 0 && col < w)
                    d[row * w + col] += g[r * ow + q];
            }
    }
}
