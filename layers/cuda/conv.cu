// im2col and col2im for Conv2D on the GPU (layers/conv_gpu.py), real = float or double. x and
// dx are indexed (N, C, H, W) with dense H x W planes and the strides ss (between samples) and
// cs (between channels) in elements: C*H*W and H*W in C order, H*W and N*H*W channel-major.
//
// col is (C*k*k, N*OH*OW): row (c, i, j), column (n, oh, ow), so that with W as (O, C*k*k)
// the forward is one GEMM, W @ col, and the backward dcol = W^T @ dy. Every kernel is a
// grid-stride loop over its outputs; col2im gathers, for each input pixel, the col entries
// that read it (no atomics).

#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// One thread per (channel, output position), writing that position's k*k rows: the divisions
// that locate it are done once for k*k entries, and neighbouring threads write neighbouring
// addresses of each row.
extern "C" __global__ void im2col(const real* __restrict__ x, real* __restrict__ col,
                                  long long n, long long c, long long h, long long w,
                                  long long k, long long stride, long long pad,
                                  long long oh, long long ow, long long ss, long long cs) {
    const long long positions = n * oh * ow;
    GRID_STRIDE(e, c * positions) {
        const long long column = e % positions, ch = e / positions;
        const long long ox = column % ow, oy = (column / ow) % oh, s = column / (ow * oh);
        const real* plane = x + s * ss + ch * cs;
        real* out = col + ch * k * k * positions + column;
        for (long long i = 0; i < k; ++i) {
            const long long y = oy * stride - pad + i;
            for (long long j = 0; j < k; ++j, out += positions) {
                const long long xx = ox * stride - pad + j;
                *out = (y >= 0 && y < h && xx >= 0 && xx < w) ? plane[y * w + xx] : (real)0;
            }
        }
    }
}

// One thread per input pixel, adding the col entries that read it: tap (i, j) of output
// (oy, ox) reads pixel (oy*stride - pad + i, ox*stride - pad + j).
extern "C" __global__ void col2im(const real* __restrict__ col, real* __restrict__ dx,
                                  long long n, long long c, long long h, long long w,
                                  long long k, long long stride, long long pad,
                                  long long oh, long long ow, long long ss, long long cs) {
    const long long positions = n * oh * ow;
    GRID_STRIDE(e, n * c * h * w) {
        const long long xx = e % w, y = (e / w) % h, ch = (e / (w * h)) % c, s = e / (w * h * c);
        const real* rows = col + ch * k * k * positions + s * oh * ow;
        real sum = 0;
        for (long long i = 0; i < k; ++i) {
            const long long ty = y + pad - i;          // = oy * stride for a tap that reads y
            if (ty < 0) break;
            const long long oy = stride == 1 ? ty : ty / stride;
            if (oy >= oh || oy * stride != ty) continue;
            for (long long j = 0; j < k; ++j) {
                const long long tx = xx + pad - j;
                if (tx < 0) break;
                const long long ox = stride == 1 ? tx : tx / stride;
                if (ox >= ow || ox * stride != tx) continue;
                sum += rows[(i * k + j) * positions + oy * ow + ox];
            }
        }
        dx[s * ss + ch * cs + y * w + xx] = sum;
    }
}
