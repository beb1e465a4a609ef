// Max and average pooling on the GPU (layers/max_pool.py, layers/avg_pool.py), NCHW, Caffe's
// geometry: window (oy, ox) covers rows [oy*stride - pad, + k) and columns likewise. Forward
// has one thread per output, backward one per input pixel, gathering from the outputs whose
// windows hold it (no atomics). real = float or double.

#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// Outputs o with o*stride - pad <= p < o*stride - pad + k, clipped to [0, out): [*lo, *hi).
__device__ void windows_holding(long long p, long long k, long long stride, long long pad,
                                long long out, long long* lo, long long* hi) {
    const long long first = p + pad - k + 1;
    *lo = first <= 0 ? 0 : (first + stride - 1) / stride;
    const long long last = (p + pad) / stride + 1;
    *hi = last < out ? last : out;
}

// y = max over the window's real pixels (``none``, i.e. -inf, if it has none); arg = the first
// maximum's flat index y*W + x in its plane, in row-major order (-1 if none). NVRTC has no
// INFINITY, so the caller passes it.
extern "C" __global__ void max_forward(const real* __restrict__ x, real* __restrict__ y,
                                       int* __restrict__ arg, long long planes, long long h,
                                       long long w, long long k, long long stride,
                                       long long pad, long long oh, long long ow, real none) {
    GRID_STRIDE(e, planes * oh * ow) {
        const long long ox = e % ow, oy = (e / ow) % oh, plane = e / (ow * oh);
        const long long y0 = oy * stride - pad, x0 = ox * stride - pad;
        const real* p = x + plane * h * w;
        real best = none;
        int at = -1;
        for (long long r = y0 < 0 ? 0 : y0; r < y0 + k && r < h; ++r)
            for (long long q = x0 < 0 ? 0 : x0; q < x0 + k && q < w; ++q)
                if (at < 0 || p[r * w + q] > best) {
                    best = p[r * w + q];
                    at = (int)(r * w + q);
                }
        y[e] = best;
        arg[e] = at;
    }
}

extern "C" __global__ void max_backward(const real* __restrict__ dy, const int* __restrict__ arg,
                                        real* __restrict__ dx, long long planes, long long h,
                                        long long w, long long k, long long stride,
                                        long long pad, long long oh, long long ow) {
    GRID_STRIDE(e, planes * h * w) {
        const long long q = e % w, r = (e / w) % h, plane = e / (w * h);
        long long ylo, yhi, xlo, xhi;
        windows_holding(r, k, stride, pad, oh, &ylo, &yhi);
        windows_holding(q, k, stride, pad, ow, &xlo, &xhi);
        const long long base = plane * oh * ow;
        real sum = 0;
        for (long long oy = ylo; oy < yhi; ++oy)
            for (long long ox = xlo; ox < xhi; ++ox)
                if (arg[base + oy * ow + ox] == r * w + q) sum += dy[base + oy * ow + ox];
        dx[e] = sum;
    }
}

// Caffe's divisor: the window clipped to the padded input (padding counted, the part of a
// ceil-mode window past it not).
__device__ real pool_size(long long oy, long long ox, long long h, long long w, long long k,
                          long long stride, long long pad) {
    const long long y0 = oy * stride - pad, x0 = ox * stride - pad;
    const long long y1 = y0 + k < h + pad ? y0 + k : h + pad;
    const long long x1 = x0 + k < w + pad ? x0 + k : w + pad;
    return (real)((y1 - y0) * (x1 - x0));
}

extern "C" __global__ void avg_forward(const real* __restrict__ x, real* __restrict__ y,
                                       long long planes, long long h, long long w, long long k,
                                       long long stride, long long pad, long long oh,
                                       long long ow) {
    GRID_STRIDE(e, planes * oh * ow) {
        const long long ox = e % ow, oy = (e / ow) % oh, plane = e / (ow * oh);
        const long long y0 = oy * stride - pad, x0 = ox * stride - pad;
        const real* p = x + plane * h * w;
        real sum = 0;
        for (long long r = y0 < 0 ? 0 : y0; r < y0 + k && r < h; ++r)
            for (long long q = x0 < 0 ? 0 : x0; q < x0 + k && q < w; ++q)
                sum += p[r * w + q];
        y[e] = sum / pool_size(oy, ox, h, w, k, stride, pad);
    }
}

extern "C" __global__ void avg_backward(const real* __restrict__ dy, real* __restrict__ dx,
                                        long long planes, long long h, long long w, long long k,
                                        long long stride, long long pad, long long oh,
                                        long long ow) {
    GRID_STRIDE(e, planes * h * w) {
        const long long q = e % w, r = (e / w) % h, plane = e / (w * h);
        long long ylo, yhi, xlo, xhi;
        windows_holding(r, k, stride, pad, oh, &ylo, &yhi);
        windows_holding(q, k, stride, pad, ow, &xlo, &xhi);
        const real* d = dy + plane * oh * ow;
        real sum = 0;
        for (long long oy = ylo; oy < yhi; ++oy)
            for (long long ox = xlo; ox < xhi; ++ox)
                sum += d[oy * ow + ox] / pool_size(oy, ox, h, w, k, stride, pad);
        dx[e] = sum;
    }
}
