// BatchNorm2D's element-wise passes on the GPU (layers/batch_norm.py), x as (N, C, L); the
// per-channel coefficients come from the host side's statistics.
//   row_moments: per (n, c) row, partial sums of v and v^2 in double, v = x - center[c]
//   row_grads:   per (n, c) row, partial sums of dy and of dy * x, in double
//   affine:      y = a[c] * x + b[c]                    (forward: a = gamma/std, b = beta - a*mean)
//   backward:    dy <- a[c] * dy + b[c] * x + d[c]      (in place; see layers/batch_norm.py)
// The row sums come in ``parts`` interleaved partial sums per row (thread t of a row adds
// elements t, t + parts, ...), so that the threads of a warp read neighbouring addresses; the
// caller adds the parts and the rows of a channel.

#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

extern "C" __global__ void row_moments(const real* __restrict__ x,
                                       const real* __restrict__ center, double* __restrict__ sums,
                                       double* __restrict__ squares, long long n, long long c,
                                       long long l, long long parts) {
    GRID_STRIDE(e, n * c * parts) {
        const long long row = e / parts;
        const real* v = x + row * l;
        const double m = (double)center[row % c];
        double s = 0, q = 0;
        for (long long p = e % parts; p < l; p += parts) {
            const double d = (double)v[p] - m;
            s += d;
            q += d * d;
        }
        sums[e] = s;
        squares[e] = q;
    }
}

extern "C" __global__ void row_grads(const real* __restrict__ dy, const real* __restrict__ x,
                                     double* __restrict__ sums, double* __restrict__ dots,
                                     long long n, long long c, long long l, long long parts) {
    GRID_STRIDE(e, n * c * parts) {
        const long long row = e / parts;
        const real* g = dy + row * l;
        const real* v = x + row * l;
        double s = 0, d = 0;
        for (long long p = e % parts; p < l; p += parts) {
            s += (double)g[p];
            d += (double)g[p] * (double)v[p];
        }
        sums[e] = s;
        dots[e] = d;
    }
}

extern "C" __global__ void affine(const real* __restrict__ x, real* __restrict__ y,
                                  const real* __restrict__ a, const real* __restrict__ b,
                                  long long n, long long c, long long l) {
    GRID_STRIDE(e, n * c * l) {
        const long long ch = (e / l) % c;
        y[e] = a[ch] * x[e] + b[ch];
    }
}

extern "C" __global__ void backward(real* __restrict__ dy, const real* __restrict__ x,
                                    const real* __restrict__ a, const real* __restrict__ b,
                                    const real* __restrict__ d, long long n, long long c,
                                    long long l) {
    GRID_STRIDE(e, n * c * l) {
        const long long ch = (e / l) % c;
        dy[e] = a[ch] * dy[e] + b[ch] * x[e] + d[ch];
    }
}
