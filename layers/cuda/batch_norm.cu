// BatchNorm2D's element-wise passes on the GPU (layers/batch_norm.py), x as (N, C, L); the
// per-channel coefficients come from the host side's statistics.
//   row_moments: per (n, c) row, the sums of v and v^2 in double, v = x - center[c]
//   affine:      y = a[c] * x + b[c]                    (forward: a = gamma/std, b = beta - a*mean)
//   backward:    dy <- a[c] * dy + b[c] * x + d[c]      (in place; see layers/batch_norm.py)
//   row_grads:   per (n, c) row, sum of dy and sum of dy * x, in double

#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

extern "C" __global__ void row_moments(const real* __restrict__ x,
                                       const real* __restrict__ center, double* __restrict__ sums,
                                       double* __restrict__ squares, long long n, long long c,
                                       long long l) {
    GRID_STRIDE(row, n * c) {
        const real* v = x + row * l;
        const double m = (double)center[row % c];
        double s = 0, q = 0;
        for (long long p = 0; p < l; ++p) {
            const double d = (double)v[p] - m;
            s += d;
            q += d * d;
        }
        sums[row] = s;
        squares[row] = q;
    }
}

extern "C" __global__ void row_grads(const real* __restrict__ dy, const real* __restrict__ x,
                                     double* __restrict__ sums, double* __restrict__ dots,
                                     long long n, long long c, long long l) {
    GRID_STRIDE(row, n * c) {
        const real* g = dy + row * l;
        const real* v = x + row * l;
        double s = 0, d = 0;
        for (long long p = 0; p < l; ++p) {
            s += (double)g[p];
            d += (double)g[p] * (double)v[p];
        }
        sums[row] = s;
        dots[row] = d;
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
