// Local response normalization across channels on the GPU (layers/lrn.py), x as (N, C, L):
//   scale[c] = k + alpha / size * sum_{j = c - lo}^{c + hi} x[j]^2,   y = x * scale^-beta
//   dx[c] = dy[c] * scale[c]^-beta
//           - 2 alpha beta / size * x[c] * sum_{j = c - hi}^{c + lo} dy[j] * y[j] / scale[j]
// with y[j] / scale[j] = x[j] * scale[j]^(-beta-1) (so backward needs x and scale, not y);
// channels outside [0, C) count as zero. One thread per element, looping over its window;
// ``alpha`` here is the layer's alpha / size.

#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

extern "C" __global__ void lrn_forward(const real* __restrict__ x, real* __restrict__ y,
                                       real* __restrict__ scale, long long n, long long c,
                                       long long l, long long lo, long long hi, real alpha,
                                       real beta, real k) {
    GRID_STRIDE(e, n * c * l) {
        const long long p = e % l, ch = (e / l) % c, s = e / (l * c);
        real sum = 0;
        for (long long j = ch - lo < 0 ? 0 : ch - lo; j <= ch + hi && j < c; ++j) {
            const real v = x[(s * c + j) * l + p];
            sum += v * v;
        }
        const real sc = k + alpha * sum;
        scale[e] = sc;
        y[e] = x[e] * pow(sc, -beta);
    }
}

extern "C" __global__ void lrn_backward(const real* __restrict__ x,
                                        const real* __restrict__ scale,
                                        const real* __restrict__ dy, real* __restrict__ dx,
                                        long long n, long long c, long long l, long long lo,
                                        long long hi, real two_alpha_beta, real beta) {
    GRID_STRIDE(e, n * c * l) {
        const long long p = e % l, ch = (e / l) % c, s = e / (l * c);
        real sum = 0;
        for (long long j = ch - hi < 0 ? 0 : ch - hi; j <= ch + lo && j < c; ++j) {
            const long long f = (s * c + j) * l + p;
            sum += dy[f] * x[f] * pow(scale[f], -beta - 1);
        }
        dx[e] = dy[e] * pow(scale[e], -beta) - two_alpha_beta * x[e] * sum;
    }
}
