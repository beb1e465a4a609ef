// Small element-wise kernels on the GPU: ReLU's backward (layers/relu.py), dropout
// (layers/dropout.py), Conv2D's bias with a fused ReLU (layers/conv_gpu.py), softmax
// cross-entropy (layers/softmax_cross_entropy.py, one thread per row) and the optimizers' update of the flat
// buffer (engine/optimizers.py).

#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// dy <- dy * (y > 0)
extern "C" __global__ void relu_backward(real* __restrict__ dy, const real* __restrict__ y,
                                         long long n) {
    GRID_STRIDE(i, n) if (!(y[i] > 0)) dy[i] = 0;
}

// A uniform number in [0, 1) for element i of the draw ``key``: splitmix64 of key + i (Steele
// et al. 2014), its top 53 bits; the same whatever the grid, with no state on the device.
__device__ double uniform(unsigned long long key, long long i) {
    unsigned long long z = key + (unsigned long long)i * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

// mask = (u >= ratio) / (1 - ratio) with u drawn on the device, y = x * mask
extern "C" __global__ void dropout_forward(const real* __restrict__ x, real* __restrict__ y,
                                           real* __restrict__ mask, real ratio, long long key,
                                           long long n) {
    const real keep = 1 / (1 - ratio);
    GRID_STRIDE(i, n) {
        mask[i] = uniform((unsigned long long)key, i) >= (double)ratio ? keep : (real)0;
        y[i] = x[i] * mask[i];
    }
}

// y[c, :] += b[c] for y as (C, L) rows (a convolution's channel-major output), then with
// ``rectify`` y = max(y, 0): the bias and a following ReLU in one pass
extern "C" __global__ void bias_rows(real* __restrict__ y, const real* __restrict__ b,
                                     long long c, long long l, long long rectify) {
    GRID_STRIDE(e, c * l) {
        const real v = y[e] + b[e / l];
        y[e] = rectify && v < 0 ? (real)0 : v;      // NaN stays NaN, as in max(y, 0)
    }
}

// Per row of logits (n, k): probs = softmax(z), loss[row] = log(sum exp(z - max)) - (z[l] - max)
extern "C" __global__ void softmax_forward(const real* __restrict__ z, const long long* labels,
                                           real* __restrict__ probs, double* __restrict__ loss,
                                           long long n, long long k) {
    GRID_STRIDE(row, n) {
        const real* zr = z + row * k;
        real* pr = probs + row * k;
        real top = zr[0];
        for (long long j = 1; j < k; ++j) top = zr[j] > top ? zr[j] : top;
        real total = 0;
        for (long long j = 0; j < k; ++j) {
            pr[j] = exp(zr[j] - top);
            total += pr[j];
        }
        for (long long j = 0; j < k; ++j) pr[j] /= total;
        loss[row] = (double)log(total) - (double)(zr[labels[row]] - top);
    }
}

// dz = (probs - onehot(labels)) * factor
extern "C" __global__ void softmax_backward(const real* __restrict__ probs,
                                            const long long* labels, real* __restrict__ dz,
                                            real factor, long long n, long long k) {
    GRID_STRIDE(e, n * k) {
        const long long row = e / k, j = e % k;
        dz[e] = (probs[e] - (labels[row] == j ? (real)1 : (real)0)) * factor;
    }
}

// g' = grad + wd * p;  v = mu * v + g';  p -= lr * (nesterov ? g' + mu * v : v)
extern "C" __global__ void sgd_update(real* __restrict__ p, const real* __restrict__ grad,
                                      real* __restrict__ v, real lr, real mu, real wd,
                                      long long nesterov, long long n) {
    GRID_STRIDE(i, n) {
        const real g = grad[i] + wd * p[i];
        const real vi = mu * v[i] + g;
        v[i] = vi;
        p[i] -= lr * (nesterov ? g + mu * vi : vi);
    }
}

// g' = grad + wd * p;  s += g'^2;  p -= lr * g' / (sqrt(s) + eps)
extern "C" __global__ void adagrad_update(real* __restrict__ p, const real* __restrict__ grad,
                                          real* __restrict__ s, real lr, real eps, real wd,
                                          long long n) {
    GRID_STRIDE(i, n) {
        const real g = grad[i] + wd * p[i];
        s[i] += g * g;
        p[i] -= lr * g / (sqrt(s[i]) + eps);
    }
}
