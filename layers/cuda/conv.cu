// im2col and col2im for Conv2D on the GPU (layers/conv.py), x in NCHW, real = float or double.
//
// col is (C*k*k, N*OH*OW): row (c, i, j), column (n, oh, ow), so that with W as (O, C*k*k)
// the forward is one GEMM, W @ col, and the backward dcol = W^T @ dy. Every kernel is a
// grid-stride loop over its outputs; col2im gathers, for each input pixel, the col entries
// that read it (no atomics).

#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

extern "C" __global__ void im2col(const real* __restrict__ x, real* __restrict__ col,
                                  long long n, long long c, long long h, long long w,
                                  long long k, long long stride, long long pad,
                                  long long oh, long long ow) {
    const long long positions = n * oh * ow;
    GRID_STRIDE(e, c * k * k * positions) {
        const long long column = e % positions, row = e / positions;
        const long long ox = column % ow, oy = (column / ow) % oh, s = column / (ow * oh);
        const long long j = row % k, i = (row / k) % k, ch = row / (k * k);
        const long long y = oy * stride - pad + i, xx = ox * stride - pad + j;
        col[e] = (y >= 0 && y < h && xx >= 0 && xx < w)
            ? x[((s * c + ch) * h + y) * w + xx] : (real)0;
    }
}

extern "C" __global__ void col2im(const real* __restrict__ col, real* __restrict__ dx,
                                  long long n, long long c, long long h, long long w,
                                  long long k, long long stride, long long pad,
                                  long long oh, long long ow) {
    const long long positions = n * oh * ow;
    GRID_STRIDE(e, n * c * h * w) {
        const long long xx = e % w, y = (e / w) % h, ch = (e / (w * h)) % c, s = e / (w * h * c);
        real sum = 0;
        for (long long i = 0; i < k; ++i) {
            const long long ty = y + pad - i;          // = oy * stride for a tap that reads y
            if (ty < 0 || ty % stride != 0 || ty / stride >= oh) continue;
            for (long long j = 0; j < k; ++j) {
                const long long tx = xx + pad - j;
                if (tx < 0 || tx % stride != 0 || tx / stride >= ow) continue;
                const long long row = (ch * k + i) * k + j;
                sum += col[row * positions + (s * oh + ty / stride) * ow + tx / stride];
            }
        }
        dx[e] = sum;
    }
}
