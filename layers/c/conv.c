/* Direct convolution on the CPU (layers/conv_direct.py has the equations and the layout).

   y and dy (O, N, OH, OW) and dx (C, N, H, W) are channel-major; x is read through its sample
   and channel strides (xn, xc; its (H, W) planes dense: C order, channel-major). One
   sample's input is laid out as "phase planes": the zero-padded input xpad split into its
   s*s sub-lattices, plane (a, b) holding xpad[s*r + a, s*u + b] for r < PH, u < PW, so that
   every tap (i, j) reads one plane at a fixed flat offset, off[t] = plane(i % s, j % s) +
   (i / s) * PW + j / s, from an output position q = oh * PW + ow (rows of PW: the columns
   ow >= OW are scratch, never copied out, and read as zeros on the way back). With stride 1
   there is one plane, the padded input.

   The forward's and dW's products are vectors of VL output channels (64 bytes: 16 floats or
   8 doubles) times one input value broadcast (ctile, dtile); the strided dx's scatter keeps
   vectors of VL consecutive positions times one weight broadcast (tile). */
#include <stddef.h>
#include <string.h>

typedef real vr __attribute__((vector_size(64)));
typedef real vru __attribute__((vector_size(64), aligned(sizeof(real))));
#define VL ((long)(64 / sizeof(real)))
#define KMAX 16                                  /* the largest kernel side taken here */
#define AI static inline __attribute__((always_inline))
/* no predictive commoning: GCC would carry a row's broadcast values over to the next
   position in scalar registers and on the stack, instead of reloading them (2x slower) */
#define NOPC __attribute__((optimize("no-predictive-commoning")))

AI vr ld(const real *p) { return *(const vru *)p; }
AI void st(real *p, vr v) { *(vru *)p = v; }

typedef struct {
    long n, c, h, w, o, k, s, p;                 /* the layer and its batch */
    long xn, xc;                                 /* x's sample and channel strides (elements) */
    long oh, ow, ph, pw, plane, cplane, npos;    /* phase geometry, as above */
    long opad, ysize;                            /* o rounded up to whole vectors; ybuf's size */
    long xsize, dysize;                          /* one sample's xbuf and dyb, slack included */
    long off[KMAX * KMAX];
} Geom;

static void geometry(Geom *g, long n, long c, long h, long w, long o, long k, long s, long p)
{
    g->n = n; g->c = c; g->h = h; g->w = w; g->o = o; g->k = k; g->s = s; g->p = p;
    g->xn = h * w;                               /* channel-major, unless the caller says */
    g->xc = n * h * w;
    g->oh = (h + 2 * p - k) / s + 1;
    g->ow = (w + 2 * p - k) / s + 1;
    g->ph = (h + 2 * p + s - 1) / s;
    g->pw = (w + 2 * p + s - 1) / s;
    g->plane = g->ph * g->pw;
    g->cplane = s * s * g->plane;
    g->npos = (g->oh * g->pw + VL - 1) / VL * VL;
    for (long i = 0; i < k; i++)
        for (long j = 0; j < k; j++)
            g->off[i * k + j] = ((i % s) * s + j % s) * g->plane + (i / s) * g->pw + j / s;
    /* a tile reads up to npos + the largest offset past its channel's start */
    g->xsize = (c * g->cplane + g->npos + g->off[k * k - 1] + 2 * VL - 1) / VL * VL;
    g->dysize = o * g->npos;
    g->opad = (o + VL - 1) / VL * VL;
    g->ysize = g->oh * g->ow * g->opad;
}

/* where image row h's pixels of column phase b lie in the planes: *dst, the plane offset of
   the first (column w0, the first w >= 0 with (w + p) % s == b); the following are s columns
   apart in the image and adjacent in the plane; returns their count */
static long phase_run(const Geom *g, long h, long b, long *w0, long *dst)
{
    long s = g->s, hp = h + g->p;
    *w0 = ((b - g->p) % s + s) % s;
    *dst = ((hp % s) * s + b) * g->plane + (hp / s) * g->pw + (*w0 + g->p) / s;
    return *w0 < g->w ? (g->w - 1 - *w0) / s + 1 : 0;
}

/* to_planes for stride 1: the padded input, each element written once (the padding as runs
   of zeros between the rows), in loops GCC keeps inline (its memcpy and memset calls per row
   cost more on small images); rows of pw >= w + 2p and planes of cplane >= (h + 2p) * pw
   (Winograd's tiles pad right and bottom to whole tiles) */
__attribute__((optimize("no-tree-loop-distribute-patterns")))
static void to_padded(const Geom *g, const real *x, long n, real *xbuf)
{
    long p = g->p, pw = g->pw, w = g->w;
    for (long c = 0; c < g->c; c++) {
        const real *src = x + c * g->xc + n * g->xn;
        real *dst = xbuf + c * g->cplane;
        for (long u = 0; u < p * pw + p; u++) dst[u] = 0;
        for (long h = 0; h < g->h; h++) {
            real *row = dst + (h + p) * pw + p;
            for (long u = 0; u < w; u++) row[u] = src[h * w + u];
            for (long u = w; u < pw; u++) row[u] = 0;      /* right pad, next row's left */
        }
        for (long u = (g->h + p) * pw; u < g->cplane; u++) dst[u] = 0;
    }
    memset(xbuf + g->c * g->cplane, 0, sizeof(real) * (g->xsize - g->c * g->cplane));
}

/* sample n of x (strides xn, xc) as phase planes in xbuf (zeros where xpad is padding) */
static void to_planes(const Geom *g, const real *x, long n, real *xbuf)
{
    long s = g->s;
    if (s == 1) {
        to_padded(g, x, n, xbuf);
        return;
    }
    memset(xbuf, 0, sizeof(real) * g->xsize);
    for (long c = 0; c < g->c; c++)
        for (long h = 0; h < g->h; h++)
            for (long b = 0; b < s; b++) {
                long w0, at, count = phase_run(g, h, b, &w0, &at);
                const real *src = x + c * g->xc + n * g->xn + h * g->w + w0;
                real *dst = xbuf + c * g->cplane + at;
                for (long u = 0; u < count; u++) dst[u] = src[u * s];
            }
}

/* the inverse of to_planes for the image's pixels: dxbuf's planes into sample n of dx */
static void from_planes(const Geom *g, const real *dxbuf, long n, real *dx)
{
    long s = g->s, hw = g->h * g->w;
    for (long c = 0; c < g->c; c++)
        for (long h = 0; h < g->h; h++)
            for (long b = 0; b < s; b++) {
                long w0, at, count = phase_run(g, h, b, &w0, &at);
                const real *src = dxbuf + c * g->cplane + at;
                real *dst = dx + (c * g->n + n) * hw + h * g->w + w0;
                if (s == 1)
                    memcpy(dst, src, sizeof(real) * count);
                else
                    for (long u = 0; u < count; u++) dst[u * s] = src[u];
            }
}

/* sample n of dy in rows of PW (zeros in the scratch columns and past OH rows) */
static void to_rows(const Geom *g, const real *dy, long n, real *dyb)
{
    long ohw = g->oh * g->ow;
    memset(dyb, 0, sizeof(real) * g->dysize);
    for (long o = 0; o < g->o; o++)
        for (long h = 0; h < g->oh; h++)
            memcpy(dyb + o * g->npos + h * g->pw, dy + (o * g->n + n) * ohw + h * g->ow,
                   sizeof(real) * g->ow);
}

/* acc[o][v] = sum over the in-channels c < cin and taps t < kk of
   wt[c * cstride + t * ostride + o] * in[c * plane + off[t] + v * VL], stored into
   (add == 0) or added to (add == 1) out[o * out_stride + v * VL] */
#define TILE(OB, PB)                                                                       \
AI void tile_##OB##_##PB(const real *in, long plane, long cin, long kk, const long *off,  \
                         const real *wt, long cstride, long ostride, real *out,           \
                         long out_stride, int add)                                         \
{                                                                                          \
    vr acc[OB][PB];                                                                        \
    for (int o = 0; o < OB; o++)                                                           \
        for (int v = 0; v < PB; v++) acc[o][v] = (vr){0};                                  \
    for (long c = 0; c < cin; c++) {                                                       \
        const real *ic = in + c * plane, *wc = wt + c * cstride;                           \
        for (long t = 0; t < kk; t++) {                                                    \
            vr xv[PB];                                                                     \
            for (int v = 0; v < PB; v++) xv[v] = ld(ic + off[t] + v * VL);                 \
            for (int o = 0; o < OB; o++) {                                                 \
                vr wv = (vr){0} + wc[t * ostride + o];                                     \
                for (int v = 0; v < PB; v++) acc[o][v] += wv * xv[v];                      \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
    for (int o = 0; o < OB; o++)                                                           \
        for (int v = 0; v < PB; v++) {                                                     \
            real *dst = out + o * out_stride + v * VL;                                     \
            st(dst, add ? ld(dst) + acc[o][v] : acc[o][v]);                                \
        }                                                                                  \
}
TILE(8, 3)
TILE(8, 2)
TILE(8, 1)
TILE(6, 4)
TILE(4, 5)
TILE(4, 4)
TILE(4, 3)
TILE(4, 2)
TILE(4, 1)
TILE(1, 5)
TILE(1, 4)
TILE(1, 3)
TILE(1, 2)
TILE(1, 1)
#define PB 3        /* vectors of positions in a wide tile (4 or 5 where that many are left) */

/* A product's operands: in (cin channels, plane apart, read at off[t] + q), the weights
   (wt[c * cstride + t * cout + o]) and out (cout channels, out_stride apart). */
typedef struct {
    const real *in;
    long plane, cin, kk;
    const long *off;
    const real *wt;
    long cstride, cout;
    real *out;
    long out_stride;
    long window;                /* the elements a wide tile reads of one input channel */
} Product;

/* tile_<ob>_<pb> for output channels [o, o + ob) at positions [q, q + pb VL) */
#define CALL(OB, PB_)                                                                      \
    tile_##OB##_##PB_(a->in + q, a->plane, a->cin, a->kk, a->off, a->wt + o, a->cstride,  \
                      a->cout, a->out + o * a->out_stride + q, a->out_stride, add)

/* tiles of OB output channels, then 4, then 1, PB_ vectors wide, over every output channel */
#define LADDER(OB, PB_)                                                                    \
    do {                                                                                   \
        long o = 0;                                                                        \
        for (; o + OB <= a->cout; o += OB) CALL(OB, PB_);                                  \
        for (; o + 4 <= a->cout; o += 4) CALL(4, PB_);                                     \
        for (; o < a->cout; o++) CALL(1, PB_);                                             \
    } while (0)

/* the tiles over every output channel at the positions [q, q + pb VL): 8 channels by 3, 2 or
   1 vectors, 6 by 4 or 4 by 5 (a whole 7x7 or 8x8 image's rows in one tile), in registers */
static void tiles(const Product *a, long q, int add, long pb)
{
    switch (pb) {
    case 5: LADDER(4, 5); break;
    case 4: LADDER(6, 4); break;
    case 3: LADDER(8, 3); break;
    case 2: LADDER(8, 2); break;
    default: LADDER(8, 1);
    }
}

#ifndef CHUNK_BYTES
#define CHUNK_BYTES (24 << 10)
#endif

/* out over positions [0, npos): PB vectors at a time (the last 4 or 5 in one tile); the input
   channels in chunks whose reads by one tile fit in CHUNK_BYTES (a core's L1), each chunk's
   sums added to the previous chunks', so that every output channel's tile finds its inputs in
   L1 */
static void product(const Product *a, long npos, int add)
{
    long cb = CHUNK_BYTES / (a->window * (long)sizeof(real));
    cb = cb < 1 ? 1 : cb;
    for (long c0 = 0; c0 < a->cin; c0 += cb) {
        Product part = *a;
        part.in += c0 * a->plane;
        part.wt += c0 * a->cstride;
        part.cin = a->cin - c0 < cb ? a->cin - c0 : cb;
        for (long q = 0; q < npos;) {          /* npos: whole vectors */
            long left = (npos - q) / VL, pb = left == 4 || left == 5 ? left : left < PB ? left : PB;
            tiles(&part, q, add || c0 > 0, pb);
            q += pb * VL;
        }
    }
}

/* The forward's kernel: vectors along output channels. acc[v][u] = the sum over in-channels
   c < cin and taps t < kk of w[(c * kk + t) * opad + v * VL + lane] times the one value
   in[c * plane + off[t] + u] (a broadcast: any offset, no unaligned vector load), for OV
   vectors of output channels at UW consecutive positions of an output row; stored into
   (add == 0) or added to (add == 1) out[u * opad + v * VL], positions-major. */
#define CTILE(OV, UW)                                                                      \
static void ctile_##OV##_##UW(const real *in, long plane, long cin, long kk,               \
                              const long *off, const real *w, long opad, real *out, int add) \
{                                                                                          \
    vr acc[OV][UW];                                                                        \
    for (int v = 0; v < OV; v++)                                                           \
        for (int u = 0; u < UW; u++) acc[v][u] = (vr){0};                                  \
    for (long c = 0; c < cin; c++) {                                                       \
        const real *ic = in + c * plane, *wc = w + c * kk * opad;                          \
        for (long t = 0; t < kk; t++) {                                                    \
            vr wv[OV];                                                                     \
            for (int v = 0; v < OV; v++) wv[v] = *(const vr *)(wc + t * opad + v * VL);    \
            for (int u = 0; u < UW; u++) {                                                 \
                vr xv = ic[off[t] + u] - (vr){0};      /* a splat (x - 0 is x, -0 too) */   \
                for (int v = 0; v < OV; v++) acc[v][u] += wv[v] * xv;                      \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
    for (int u = 0; u < UW; u++)                                                           \
        for (int v = 0; v < OV; v++) {                                                     \
            vr *dst = (vr *)(out + u * opad + v * VL);                                     \
            *dst = add ? *dst + acc[v][u] : acc[v][u];                                     \
        }                                                                                  \
}
#define UW_1(OV) CTILE(OV, 1) CTILE(OV, 2) CTILE(OV, 3) CTILE(OV, 4) CTILE(OV, 5)            \
                 CTILE(OV, 6) CTILE(OV, 7)
#define UW_2(OV) UW_1(OV) CTILE(OV, 8) CTILE(OV, 9)
#define UW_3(OV) UW_2(OV) CTILE(OV, 10) CTILE(OV, 11) CTILE(OV, 12) CTILE(OV, 13) CTILE(OV, 14)
#define UW_4(OV) UW_3(OV) CTILE(OV, 15) CTILE(OV, 16) CTILE(OV, 17) CTILE(OV, 18)            \
    CTILE(OV, 19) CTILE(OV, 20) CTILE(OV, 21) CTILE(OV, 22) CTILE(OV, 23) CTILE(OV, 24)      \
    CTILE(OV, 25) CTILE(OV, 26) CTILE(OV, 27) CTILE(OV, 28)
UW_4(1)
UW_3(2)
UW_2(3)
UW_1(4)
typedef void (*ctile_fn)(const real *, long, long, long, const long *, const real *, long,
                         real *, int);
#define T(OV, UW) ctile_##OV##_##UW
#define ROW_1(OV) T(OV, 1), T(OV, 2), T(OV, 3), T(OV, 4), T(OV, 5), T(OV, 6), T(OV, 7)
#define ROW_2(OV) ROW_1(OV), T(OV, 8), T(OV, 9)
#define ROW_3(OV) ROW_2(OV), T(OV, 10), T(OV, 11), T(OV, 12), T(OV, 13), T(OV, 14)
#define ROW_4(OV) ROW_3(OV), T(OV, 15), T(OV, 16), T(OV, 17), T(OV, 18), T(OV, 19),       \
    T(OV, 20), T(OV, 21), T(OV, 22), T(OV, 23), T(OV, 24), T(OV, 25), T(OV, 26), T(OV, 27), \
    T(OV, 28)
#define OVMAX 4
/* ctiles[OV - 1][UW - 1]; a tile holds OV * UW <= 28 of the 32 vector registers */
static const ctile_fn ctiles[OVMAX][28] = {{ROW_4(1)}, {ROW_3(2)}, {ROW_2(3)}, {ROW_1(4)}};
static const long uwmax[OVMAX] = {28, 14, 9, 7};

/* the pieces a row of ow positions is cut into for tiles of ov vectors */
static long row_pieces(long ow, long ov)
{
    return (ow + uwmax[ov - 1] - 1) / uwmax[ov - 1];
}

/* the output-channel vectors per tile for rows of ow positions among nov vectors: the most
   accumulators per tile on average (ties to more vectors: fewer broadcasts per product) */
static long pick_ov(long nov, long ow)
{
    long best = 1, score = 0;
    for (long ov = 1; ov <= OVMAX && ov <= nov; ov++) {
        long s = ov * ow / row_pieces(ow, ov);
        if (s >= score) { best = ov; score = s; }
    }
    return best;
}

#ifndef BAND_BYTES
#define BAND_BYTES (512 << 10)
#endif
#define BAND_POSITIONS 1024

/* the output rows of m samples whose planes and positions-major outputs take about
   BAND_BYTES (a core's L2), but at least BAND_POSITIONS positions (each band costs a pass over
   the weights, or the tiles' sums added into dW): the band of rows every tile sweeps before
   the next */
static long band_rows(const Geom *g, long m)
{
    long row = m * (g->xsize + g->ysize) / g->oh * (long)sizeof(real);
    long rows = BAND_BYTES / (row > 0 ? row : 1);
    long least = (BAND_POSITIONS + m * g->ow - 1) / (m * g->ow);
    return rows > least ? rows : least;
}

#ifndef WCHUNK_BYTES
#define WCHUNK_BYTES (96 << 10)
#endif

/* ybuf (positions-major, opad apart) = conv(planes in xbuf, wt[c][t][opad]) over bands of
   output rows (band_rows); in a band, the in-channels in chunks whose weights for one tile
   take WCHUNK_BYTES (read from L2: smaller chunks, within L1, measured slower, each chunk's
   sums being added to the last's), tiles of ov vectors of output channels (fewer for the
   last) by rows cut into pieces of at most uwmax[ov - 1] positions */
static void cproduct(const Geom *g, const real *xbuf, const real *wt, real *ybuf)
{
    long kk = g->k * g->k, nov = g->opad / VL, ov = pick_ov(nov, g->ow);
    long pieces = row_pieces(g->ow, ov), band = band_rows(g, 1);
    long cb = WCHUNK_BYTES / (kk * ov * VL * (long)sizeof(real));
    cb = cb < 1 ? 1 : cb;
    for (long r0 = 0; r0 < g->oh; r0 += band)
        for (long c0 = 0; c0 < g->c; c0 += cb) {
            long cn = g->c - c0 < cb ? g->c - c0 : cb;
            for (long v0 = 0; v0 < nov; v0 += ov) {
                long vn = nov - v0 < ov ? nov - v0 : ov;
                const real *w = wt + c0 * kk * g->opad + v0 * VL;
                for (long r = r0; r < r0 + band && r < g->oh; r++)
                    for (long i = 0, u0 = 0; i < pieces; i++) {
                        long uw = g->ow / pieces + (i < g->ow % pieces);
                        ctiles[vn - 1][uw - 1](xbuf + c0 * g->cplane + r * g->pw + u0,
                                               g->cplane, cn, kk, g->off, w, g->opad,
                                               ybuf + (r * g->ow + u0) * g->opad + v0 * VL,
                                               c0 > 0);
                        u0 += uw;
                    }
            }
        }
}

/* sample n of y (channel-major) = ybuf (positions-major) + b (b may be NULL), in blocks of
   VL positions (their rows of ybuf stay in L1 while every channel is copied out) */
static void from_positions(const Geom *g, const real *ybuf, const real *b, long n, real *y)
{
    long ohw = g->oh * g->ow;
    for (long q0 = 0; q0 < ohw; q0 += VL) {
        long qn = ohw - q0 < VL ? ohw - q0 : VL;
        for (long o = 0; o < g->o; o++) {
            real bo = b ? b[o] : 0, *dst = y + (o * g->n + n) * ohw + q0;
            const real *src = ybuf + q0 * g->opad + o;
            for (long q = 0; q < qn; q++) dst[q] = src[q * g->opad] + bo;
        }
    }
}

/* sample n of y = conv(x, W) + b (b may be NULL), through xbuf (planes) and ybuf */
static void forward_sample(const Geom *g, const real *x, const real *wt, const real *b, long n,
                           real *xbuf, real *ybuf, real *y)
{
    to_planes(g, x, n, xbuf);
    cproduct(g, xbuf, wt, ybuf);
    from_positions(g, ybuf, b, n, y);
}

/* samples [n0, n1): y = conv(x, W) + b; wt[c][t][o] = W[o][c][t] for o < O, zeros on to
   opad (O rounded up to whole vectors), 64-byte aligned; b may be NULL; x's
   (H, W) planes dense, xn and xc apart (elements); work: conv_sizes' forward elements */
void conv_forward(const real *x, long xn, long xc, const real *wt, const real *b, real *y,
                  long n, long c, long h, long w, long o, long k, long s, long p,
                  long n0, long n1, real *work)
{
    Geom g;
    geometry(&g, n, c, h, w, o, k, s, p);
    g.xn = xn;
    g.xc = xc;
    for (long i = n0; i < n1; i++)
        forward_sample(&g, x, wt, b, i, work, work + g.xsize, y);
}

/* Winograd's F(2x2, 3x3) for 3x3 stride-1 layers (Lavin and Gray 2016; the equations in
   layers/conv_direct.py): every 2x2 block of outputs ("tile") from a 4x4 block of the padded
   input, in 16 products over the channels (xi = 4a + b), each a 1x1 convolution over a band of
   tiles that cproduct (forward) and weight_grad (dW) run as one row of positions. Small
   images go in groups of m samples, their rows of tiles one under the other, so that a band
   holds enough tiles to reuse each weight it reads. */
#ifndef WINO_BAND_BYTES
#define WINO_BAND_BYTES (1 << 20)
#endif
#ifndef WINO_BAND_TILES
#define WINO_BAND_TILES 128
#endif
#ifndef WINO_DW_TILES
#define WINO_DW_TILES 512
#endif

typedef struct {
    Geom gp;                    /* one sample's padded input, its rows and planes whole tiles
                                   + 2 */
    long th, tw;                /* tiles down and across a sample */
    long m, band;               /* samples per group; rows of tiles per band (of a group's
                                   m * th) */
    long vsize, msize;          /* one product's input (V) and output (M) for a whole band */
} Wino;

/* the tiles, groups and bands of g for bands of at least `least` tiles: their V and M take
   about WINO_BAND_BYTES (L2), but every band reads all of U */
static void wino_geometry(const Geom *g, long least, Wino *wi)
{
    Geom g1;
    wi->gp = *g;
    wi->th = (g->oh + 1) / 2;
    wi->tw = (g->ow + 1) / 2;
    wi->gp.pw = 2 * wi->tw + 2;
    wi->gp.ph = 2 * wi->th + 2;
    wi->gp.plane = wi->gp.cplane = wi->gp.ph * wi->gp.pw;
    /* + VL: wino_input's vector loads reach one element past a row (a lane it drops) */
    wi->gp.xsize = (g->c * wi->gp.cplane + 2 * VL - 1) / VL * VL;
    wi->m = (least + wi->th * wi->tw - 1) / (wi->th * wi->tw);
    long row = 16 * wi->tw * (g->c + g->opad) * (long)sizeof(real);
    long rows = WINO_BAND_BYTES / row, fewest = (least + wi->tw - 1) / wi->tw;
    rows = rows > fewest ? rows : fewest;
    wi->band = rows < wi->m * wi->th ? rows : wi->m * wi->th;
    geometry(&g1, 1, g->c, 1, wi->band * wi->tw, g->o, 1, 1, 0);
    wi->vsize = g1.xsize;
    wi->msize = g1.ysize;
}

/* the 4x4 input blocks' transform, B^T d B, of one tile (T real) or of VL tiles side by side
   (T a vector): d the first block's top left corner (rows pw apart), LD(d + j) the blocks'
   column j (every other value from there for a vector), out their place in V (vs apart per
   xi) */
#define WINO_IN(T, LD, ST)                                                                 \
    do {                                                                                   \
        T dd[4][4], t[4][4];                                                               \
        for (int i = 0; i < 4; i++)                                                        \
            for (int j = 0; j < 4; j++) dd[i][j] = LD(d + i * pw + j);                     \
        for (int j = 0; j < 4; j++) {                                                      \
            t[0][j] = dd[0][j] - dd[2][j]; t[1][j] = dd[1][j] + dd[2][j];                  \
            t[2][j] = dd[2][j] - dd[1][j]; t[3][j] = dd[1][j] - dd[3][j];                  \
        }                                                                                  \
        for (int a = 0; a < 4; a++) {                                                      \
            ST(out + (4 * a + 0) * vs, t[a][0] - t[a][2]);                                 \
            ST(out + (4 * a + 1) * vs, t[a][1] + t[a][2]);                                 \
            ST(out + (4 * a + 2) * vs, t[a][2] - t[a][1]);                                 \
            ST(out + (4 * a + 3) * vs, t[a][1] - t[a][3]);                                 \
        }                                                                                  \
    } while (0)
#define SCALAR_LD(p) (*(p))
#define SCALAR_ST(p, v) (*(p) = (v))

/* the even lanes of a followed by b's (a permute; a loop of scalar loads measured 0.85-0.94x
   on vgg16's first layers): GCC's __builtin_shuffle, clang's __builtin_shufflevector */
#ifdef __clang__
typedef float v16f __attribute__((vector_size(64)));
typedef double v8d __attribute__((vector_size(64)));
AI v16f evens_f(v16f a, v16f b)
{
    return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28,
                                   30);
}
AI v8d evens_d(v8d a, v8d b) { return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14); }
#define EVENS(a, b) _Generic((a), v16f: evens_f, default: evens_d)(a, b)
#else
typedef __typeof__(_Generic((real)0, float: (int __attribute__((vector_size(64)))){0},
                            default: (long __attribute__((vector_size(64)))){0})) vi;
AI vr EVENS(vr a, vr b)
{
    vi ev;
    for (int l = 0; l < VL; l++) ev[l] = 2 * l;
    return __builtin_shuffle(a, b, ev);
}
#endif

/* VL values from p, every other one (p[0], p[2], ..., from two vectors) */
AI vr every_other(const real *p)
{
    return EVENS(ld(p), ld(p + VL));
}

/* v[xi][c][t] = (B^T d B)[xi] for the tiles t of a group's tile rows [r0, r0 + rows), d the
   4x4 block of channel c's padded plane at (2 ty, 2 tx) of its sample (xbuf: the group's
   samples, gp.xsize apart); vs apart per xi. VL tiles at a time, their columns by shuffles. */
static void wino_input(const Wino *wi, const real *xbuf, long r0, long rows, long vs, real *v)
{
    long pw = wi->gp.pw, tb = rows * wi->tw;
    for (long c = 0; c < wi->gp.c; c++)
        for (long r = 0; r < rows; r++) {
            long i = (r0 + r) / wi->th, ty = (r0 + r) % wi->th, tx = 0;
            const real *row = xbuf + i * wi->gp.xsize + c * wi->gp.cplane + 2 * ty * pw;
            real *first = v + c * tb + r * wi->tw;
            for (; tx + VL <= wi->tw; tx += VL) {
                const real *d = row + 2 * tx;
                real *out = first + tx;
                WINO_IN(vr, every_other, st);
            }
            for (; tx < wi->tw; tx++) {
                const real *d = row + 2 * tx;
                real *out = first + tx;
                WINO_IN(real, SCALAR_LD, SCALAR_ST);
            }
        }
}

/* where the outputs of tile tx of a group's tile row `row` start in its samples'
   positions-major buffers (ysize apart): their offset; *oh, *ow: the first's row and column */
static long tile_outputs(const Geom *g, const Wino *wi, long row, long tx, long *oh, long *ow)
{
    *oh = 2 * (row % wi->th);
    *ow = 2 * tx;
    return row / wi->th * g->ysize + (*oh * g->ow + *ow) * g->opad;
}

/* the outputs of a group's tile rows [r0, r0 + rows) into ybuf (its samples positions-major,
   ysize apart) = A^T m A, m[xi] = the products' M[xi][t] (ms apart per xi), a vector of
   output channels at a time */
static void wino_output(const Geom *g, const Wino *wi, const real *m, long r0, long rows,
                        long ms, real *ybuf)
{
    long opad = g->opad, oh, ow;
    for (long r = 0; r < rows; r++)
        for (long tx = 0; tx < wi->tw; tx++) {
            long t = r * wi->tw + tx;
            real *yt = ybuf + tile_outputs(g, wi, r0 + r, tx, &oh, &ow);
            for (long o = 0; o < opad; o += VL) {
                const real *mt = m + t * opad + o;
                vr s[2][4], y[2][2];
                for (int b = 0; b < 4; b++) {
                    vr m0 = ld(mt + b * ms), m1 = ld(mt + (4 + b) * ms);
                    vr m2 = ld(mt + (8 + b) * ms), m3 = ld(mt + (12 + b) * ms);
                    s[0][b] = m0 + m1 + m2;
                    s[1][b] = m1 - m2 - m3;
                }
                for (int a = 0; a < 2; a++) {
                    y[a][0] = s[a][0] + s[a][1] + s[a][2];
                    y[a][1] = s[a][1] - s[a][2] - s[a][3];
                }
                for (int a = 0; a < 2 && oh + a < g->oh; a++)
                    for (int b = 0; b < 2 && ow + b < g->ow; b++)
                        st(yt + (a * g->ow + b) * opad + o, y[a][b]);
            }
        }
}

/* the band of a group's tile rows from r0 (at most wi->band, fewer for the last of mm
   samples) and its products' geometry (1x1 over its tiles) */
static long wino_band(const Geom *g, const Wino *wi, long r0, long mm, Geom *g1)
{
    long rows = mm * wi->th - r0 < wi->band ? mm * wi->th - r0 : wi->band;
    geometry(g1, 1, g->c, 1, rows * wi->tw, g->o, 1, 1, 0);
    return rows;
}

/* samples [n0, n1) of y = conv(x, W) + b by Winograd (g: 3x3, stride 1; x as g->xn, g->xc
   say), u as conv_wino_weights gives it, b may be NULL; work: wino_size elements */
static void wino_forward(const Geom *g, const real *x, const real *u, const real *b, long n0,
                         long n1, real *work, real *y)
{
    Wino wi;
    wino_geometry(g, WINO_BAND_TILES, &wi);
    real *xbuf = work, *ybuf = xbuf + wi.m * wi.gp.xsize, *v = ybuf + wi.m * g->ysize;
    real *m = v + 16 * wi.vsize;
    for (long i0 = n0; i0 < n1; i0 += wi.m) {
        long mm = n1 - i0 < wi.m ? n1 - i0 : wi.m;
        for (long i = 0; i < mm; i++)
            to_padded(&wi.gp, x, i0 + i, xbuf + i * wi.gp.xsize);
        for (long r0 = 0, rows; r0 < mm * wi.th; r0 += rows) {
            Geom g1;
            rows = wino_band(g, &wi, r0, mm, &g1);
            wino_input(&wi, xbuf, r0, rows, wi.vsize, v);
            for (long xi = 0; xi < 16; xi++)
                cproduct(&g1, v + xi * wi.vsize, u + xi * g->c * g->opad, m + xi * wi.msize);
            wino_output(g, &wi, m, r0, rows, wi.msize, ybuf);
        }
        for (long i = 0; i < mm; i++)
            from_positions(g, ybuf + i * g->ysize, b, i0 + i, y);
    }
}

/* wino_forward's workspace (elements) */
static long wino_size(const Geom *g)
{
    Wino wi;
    wino_geometry(g, WINO_BAND_TILES, &wi);
    return wi.m * (wi.gp.xsize + g->ysize) + 16 * (wi.vsize + wi.msize);
}

/* u[xi][i][outpad] = (G k G^T)[xi], for the input channels i in [i0, i1) of a 3x3 convolution
   with nin input and nout output channels whose kernel k[a][b] for (out, in) is
   w[out * so + in * si + 3a + b] (flip: w[... + 8 - 3a - b]); zeros for out >= nout */
void conv_wino_weights(const real *w, long so, long si, long nin, long nout, long outpad,
                       long flip, long i0, long i1, real *u)
{
    for (long i = i0; i < i1; i++)
        for (long o = 0; o < outpad; o++) {
            real k[3][3], t[4][3];
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++)
                    k[a][b] = o < nout ? w[o * so + i * si + (flip ? 8 - 3 * a - b : 3 * a + b)]
                                       : 0;
            for (int b = 0; b < 3; b++) {
                t[0][b] = k[0][b];
                t[1][b] = (k[0][b] + k[1][b] + k[2][b]) / 2;
                t[2][b] = (k[0][b] - k[1][b] + k[2][b]) / 2;
                t[3][b] = k[2][b];
            }
            for (int a = 0; a < 4; a++) {
                real *dst = u + (4 * a * nin + i) * outpad + o;
                dst[0] = t[a][0];
                dst[nin * outpad] = (t[a][0] + t[a][1] + t[a][2]) / 2;
                dst[2 * nin * outpad] = (t[a][0] - t[a][1] + t[a][2]) / 2;
                dst[3 * nin * outpad] = t[a][2];
            }
        }
}

/* samples [n0, n1): y = conv(x, W) + b by Winograd, for k = 3, s = 1; u from
   conv_wino_weights (nin = c, nout = o), the rest as in conv_forward */
void conv_forward_wino(const real *x, long xn, long xc, const real *u, const real *b, real *y,
                       long n, long c, long h, long w, long o, long p, long n0, long n1,
                       real *work)
{
    Geom g;
    geometry(&g, n, c, h, w, o, 3, 1, p);
    g.xn = xn;
    g.xc = xc;
    wino_forward(&g, x, u, b, n0, n1, work, y);
}

/* sample n of dy as positions-major rows, dyt[q * opad + o] = dy[o, n, q] (zeros for o >= O),
   in blocks of VL positions (their rows of dyt stay in L1 while every channel is copied in) */
static void to_positions(const Geom *g, const real *dy, long n, real *dyt)
{
    long ohw = g->oh * g->ow;
    for (long q0 = 0; q0 < ohw; q0 += VL) {
        long qn = ohw - q0 < VL ? ohw - q0 : VL;
        for (long o = 0; o < g->opad; o++) {
            real *dst = dyt + q0 * g->opad + o;
            const real *src = dy + (o * g->n + n) * ohw + q0;
            for (long q = 0; q < qn; q++) dst[q * g->opad] = o < g->o ? src[q] : 0;
        }
    }
}

/* The weight gradient's kernel, vectors along output channels as in the forward's:
   acc[v][b][j] = the sum over m samples i, output rows r0 <= r < r1 and columns u of
   dyt_i[(r * ow + u) * opad + v * VL + lane] times the one value x_i[b * cplane + r * pw + u + j]
   (x_i = x + i * xsize: the planes from some channel and tap on, dyt_i = dyt + i * ysize),
   for OV vectors of output channels, CB input channels and TB taps that are consecutive in
   one plane; stored to out[((v * CB + b) * TB + j) * VL]. */
#define DTILE(OV, CB, TB)                                                                  \
NOPC static void dtile_##OV##_##CB##_##TB(const Geom *g, const real *x, const real *dyt, long m, \
                                          long r0, long r1, real *out)                     \
{                                                                                          \
    vr acc[OV][CB][TB];                                                                    \
    for (int v = 0; v < OV; v++)                                                           \
        for (int b = 0; b < CB; b++)                                                       \
            for (int j = 0; j < TB; j++) acc[v][b][j] = (vr){0};                           \
    for (long i = 0; i < m; i++)                                                           \
        for (long r = r0; r < r1; r++) {                                                   \
            const real *xr = x + i * g->xsize + r * g->pw;                                 \
            const real *dr = dyt + i * g->ysize + r * g->ow * g->opad;                     \
            for (long u = 0; u < g->ow; u++) {                                             \
                vr d[OV];                                                                  \
                for (int v = 0; v < OV; v++) d[v] = *(const vr *)(dr + u * g->opad + v * VL); \
                for (int b = 0; b < CB; b++)                                               \
                    for (int j = 0; j < TB; j++) {                                         \
                        vr xv = xr[b * g->cplane + u + j] - (vr){0};                       \
                        for (int v = 0; v < OV; v++) acc[v][b][j] += d[v] * xv;            \
                    }                                                                      \
            }                                                                              \
        }                                                                                  \
    for (int v = 0; v < OV; v++)                                                           \
        for (int b = 0; b < CB; b++)                                                       \
            for (int j = 0; j < TB; j++)                                                   \
                *(vr *)(out + ((v * CB + b) * TB + j) * VL) = acc[v][b][j];                \
}
#define CB_4(OV, TB) DTILE(OV, 1, TB) DTILE(OV, 2, TB) DTILE(OV, 3, TB) DTILE(OV, 4, TB)
#define CB_6(OV, TB) CB_4(OV, TB) DTILE(OV, 5, TB) DTILE(OV, 6, TB)
#define CB_8(OV, TB) CB_6(OV, TB) DTILE(OV, 7, TB) DTILE(OV, 8, TB)
CB_8(1, 1) CB_8(1, 2) CB_8(1, 3)
CB_8(2, 1) CB_6(2, 2) CB_4(2, 3)
typedef void (*dtile_fn)(const Geom *, const real *, const real *, long, long, long, real *);
#define D(OV, CB, TB) dtile_##OV##_##CB##_##TB
#define DCB_4(OV, TB) D(OV, 1, TB), D(OV, 2, TB), D(OV, 3, TB), D(OV, 4, TB)
#define DCB_6(OV, TB) DCB_4(OV, TB), D(OV, 5, TB), D(OV, 6, TB)
#define DCB_8(OV, TB) DCB_6(OV, TB), D(OV, 7, TB), D(OV, 8, TB)
/* dtiles[OV - 1][TB - 1][CB - 1], cbmax[OV - 1][TB - 1]: OV * CB * TB <= 24 accumulators, CB
   <= 8 (a register for each channel's row) */
static const dtile_fn dtiles[2][3][8] = {{{DCB_8(1, 1)}, {DCB_8(1, 2)}, {DCB_8(1, 3)}},
                                         {{DCB_8(2, 1)}, {DCB_6(2, 2)}, {DCB_4(2, 3)}}};
static const long cbmax[2][3] = {{8, 8, 8}, {8, 6, 4}};

/* what dW's tiles sweep: the planes and dY of m samples (dyt_i = dyt + i * ysize), rows
   [r0, r1) of their outputs */
typedef struct {
    const real *xbuf, *dyt;
    long m, r0, r1;
} Sweep;

/* the tiles of vn vectors of output channels from v0 (vn <= 2) for the taps t, t + ts, ...
   (tb of them, consecutive in one plane) of every input channel, added into dw */
static void dtiles_taps(const Geom *g, const Sweep *a, long v0, long vn, long t, long ts,
                        long tb, real *dw)
{
    long kk = g->k * g->k;
    for (long c0 = 0, cb; c0 < g->c; c0 += cb) {
        real out[24 * VL] __attribute__((aligned(64)));
        cb = g->c - c0 < cbmax[vn - 1][tb - 1] ? g->c - c0 : cbmax[vn - 1][tb - 1];
        dtiles[vn - 1][tb - 1][cb - 1](g, a->xbuf + c0 * g->cplane + g->off[t],
                                       a->dyt + v0 * VL, a->m, a->r0, a->r1, out);
        for (long v = 0; v < vn; v++)
            for (long l = 0, o = (v0 + v) * VL; l < VL && o < g->o; l++, o++)
                for (long b = 0; b < cb; b++)
                    for (long j = 0; j < tb; j++)
                        dw[(o * g->c + c0 + b) * kk + t + j * ts] +=
                            out[((v * cb + b) * tb + j) * VL + l];
    }
}

/* dw += the weight gradient of m samples (dw (O, C, k, k), this worker's partial): over bands
   of output rows (band_rows), for output channels two vectors at a time, every kernel row's
   taps in groups of up to 3 that share a plane (j, j + s, ...: consecutive in it) */
static void weight_grad(const Geom *g, const real *xbuf, const real *dyt, long m, real *dw)
{
    long k = g->k, s = g->s, nov = g->opad / VL, band = band_rows(g, m);
    for (long r0 = 0; r0 < g->oh; r0 += band) {
        Sweep a = {xbuf, dyt, m, r0, r0 + band < g->oh ? r0 + band : g->oh};
        for (long v0 = 0; v0 < nov; v0 += 2)
            for (long i = 0; i < k; i++)
                for (long b = 0; b < s && b < k; b++)
                    for (long j = b; j < k;) {
                        long left = (k - 1 - j) / s + 1, tb = left >= 3 ? 3 : left;
                        dtiles_taps(g, &a, v0, nov - v0 < 2 ? 1 : 2, i * k + j, s, tb, dw);
                        j += tb * s;
                    }
    }
}

/* dm[xi][t][opad] = (A D A^T)[xi] for the tiles of a group's tile rows [r0, r0 + rows), D
   the 2x2 block of dY at (2 ty, 2 tx) of its sample (dyt: the group's samples positions-major,
   ysize apart), zeros past OH and OW; ms apart per xi (the adjoint of wino_output) */
static void wino_dy(const Geom *g, const Wino *wi, const real *dyt, long r0, long rows,
                    long ms, real *dm)
{
    long opad = g->opad, oh, ow;
    for (long r = 0; r < rows; r++)
        for (long tx = 0; tx < wi->tw; tx++) {
            long t = r * wi->tw + tx;
            const real *d = dyt + tile_outputs(g, wi, r0 + r, tx, &oh, &ow);
            int down = oh + 1 < g->oh, across = ow + 1 < g->ow;
            for (long o = 0; o < opad; o += VL) {
                vr y[2][2], z[4][2];
                y[0][0] = ld(d + o);
                y[0][1] = across ? ld(d + opad + o) : (vr){0};
                y[1][0] = down ? ld(d + g->ow * opad + o) : (vr){0};
                y[1][1] = down && across ? ld(d + (g->ow + 1) * opad + o) : (vr){0};
                for (int b = 0; b < 2; b++) {
                    z[0][b] = y[0][b];
                    z[1][b] = y[0][b] + y[1][b];
                    z[2][b] = y[0][b] - y[1][b];
                    z[3][b] = -y[1][b];
                }
                real *out = dm + t * opad + o;
                for (int a = 0; a < 4; a++) {
                    st(out + (4 * a + 0) * ms, z[a][0]);
                    st(out + (4 * a + 1) * ms, z[a][0] + z[a][1]);
                    st(out + (4 * a + 2) * ms, z[a][0] - z[a][1]);
                    st(out + (4 * a + 3) * ms, -z[a][1]);
                }
            }
        }
}

/* dw[o][c][3][3] = G^T D G, D[a][b] = du[4a + b][o][c] (the adjoint of conv_wino_weights) */
static void wino_dw_out(const real *du, long o, long c, real *dw)
{
    long oc = o * c;
    for (long i = 0; i < oc; i++) {
        real d[4][4], p[3][4];
        for (int x = 0; x < 16; x++) d[x / 4][x % 4] = du[x * oc + i];
        for (int b = 0; b < 4; b++) {
            p[0][b] = d[0][b] + (d[1][b] + d[2][b]) / 2;
            p[1][b] = (d[1][b] - d[2][b]) / 2;
            p[2][b] = (d[1][b] + d[2][b]) / 2 + d[3][b];
        }
        for (int a = 0; a < 3; a++) {
            dw[i * 9 + 3 * a] = p[a][0] + (p[a][1] + p[a][2]) / 2;
            dw[i * 9 + 3 * a + 1] = (p[a][1] - p[a][2]) / 2;
            dw[i * 9 + 3 * a + 2] = (p[a][1] + p[a][2]) / 2 + p[a][3];
        }
    }
}

/* dw = the weight gradient of samples [n0, n1) by Winograd: dU[xi][o][c] = the sum over the
   tiles t of dM[xi][t][o] * V[xi][c][t], 16 products that weight_grad runs as 1x1 layers
   over bands of tiles, then dw = G^T dU G; work: wino_dw_size elements */
static void wino_weight_grad(const Geom *g, const real *x, const real *dy, long n0, long n1,
                             real *work, real *dw)
{
    Wino wi;
    wino_geometry(g, WINO_DW_TILES, &wi);
    real *xbuf = work, *dyt = xbuf + wi.m * wi.gp.xsize, *v = dyt + wi.m * g->ysize;
    real *dm = v + 16 * wi.vsize, *du = dm + 16 * wi.msize;
    memset(du, 0, sizeof(real) * 16 * g->o * g->c);
    for (long i0 = n0; i0 < n1; i0 += wi.m) {
        long mm = n1 - i0 < wi.m ? n1 - i0 : wi.m;
        for (long i = 0; i < mm; i++) {
            to_padded(&wi.gp, x, i0 + i, xbuf + i * wi.gp.xsize);
            to_positions(g, dy, i0 + i, dyt + i * g->ysize);
        }
        for (long r0 = 0, rows; r0 < mm * wi.th; r0 += rows) {
            Geom g1;
            rows = wino_band(g, &wi, r0, mm, &g1);
            wino_input(&wi, xbuf, r0, rows, wi.vsize, v);
            wino_dy(g, &wi, dyt, r0, rows, wi.msize, dm);
            for (long xi = 0; xi < 16; xi++)
                weight_grad(&g1, v + xi * wi.vsize, dm + xi * wi.msize, 1,
                            du + xi * g->o * g->c);
        }
    }
    wino_dw_out(du, g->o, g->c, dw);
}

/* wino_weight_grad's workspace (elements) */
static long wino_dw_size(const Geom *g)
{
    Wino wi;
    wino_geometry(g, WINO_DW_TILES, &wi);
    return wi.m * (wi.gp.xsize + g->ysize) + 16 * (wi.vsize + wi.msize + g->o * g->c);
}

/* one sample's dx for a strided layer: every tap's sum over o of W[o][c][t] * dyb[o][q]
   added into the planes at off[t] + q (the adjoint of the forward's reads; taps outer, so
   that no add reads a vector that the previous add has just written shifted), then the
   planes' pixels copied out. wf as in conv_backward. */
static void scatter_sample(const Geom *g, const real *dyb, const real *wf, real *dxbuf, long n,
                           real *dx)
{
    long kk = g->k * g->k, zero = 0, cpad = (g->c + VL - 1) / VL * VL;
    memset(dxbuf, 0, sizeof(real) * g->xsize);
    for (long t = 0; t < kk; t++) {
        Product a = {dyb, g->npos, g->o, 1, &zero, wf + (kk - 1 - t) * cpad, kk * cpad, g->c,
                     dxbuf + g->off[t], g->cplane, PB * VL};
        product(&a, g->npos, 1);
    }
    from_planes(g, dxbuf, n, dx);
}

/* whether dx is the forward of the transposed convolution: stride 1 and p <= k - 1 (else the
   scatter: a negative pad would crop dy) */
static int transposes(const Geom *g)
{
    return g->s == 1 && g->p <= g->k - 1;
}

/* the transposed convolution that gives dx for stride 1: dy (O channels, OH x OW) convolved
   with the flipped kernel, pad k - 1 - p, into C channels of H x W */
static void transposed(const Geom *g, Geom *t)
{
    geometry(t, g->n, g->o, g->oh, g->ow, g->c, g->k, 1, transposes(g) ? g->k - 1 - g->p : 0);
}

/* dx's workspace (elements): the transposed convolution's (by Winograd if wino_dx), or the
   scatter's rows of dy */
static long dx_size(const Geom *g, long wino_dx)
{
    Geom gt;
    transposed(g, &gt);
    return !transposes(g) ? g->dysize : wino_dx ? wino_size(&gt) : gt.xsize + gt.ysize;
}

/* samples [n0, n1), m at a time: dw (this worker's partial, overwritten) and, unless dx is
   NULL, dx (channel-major); x as in conv_forward; wf[o][t][c] = W[o][c][kk - 1 - t] for
   c < C, zeros on to C rounded up to whole vectors, 64-byte aligned; uf: NULL, or the
   transposed convolution's Winograd weights (conv_wino_weights: nin = o, nout = c, flipped),
   which then gives dx; wino_dw: dw by Winograd (pad <= 2: dx is not the scatter's); work:
   conv_sizes' backward elements */
void conv_backward(const real *x, long xn, long xc, const real *dy, const real *wf,
                   const real *uf, long wino_dw, real *dw, real *dx, long n, long c, long h,
                   long w, long o, long k, long s, long p, long n0, long n1, long m, real *work)
{
    Geom g, gt;
    geometry(&g, n, c, h, w, o, k, s, p);
    transposed(&g, &gt);
    g.xn = xn;
    g.xc = xc;
    /* work: [m samples' planes and dyt, or wino_weight_grad's] [dx's] */
    long first = wino_dw ? wino_dw_size(&g) : m * (g.xsize + g.ysize);
    real *xbuf = work, *dyt = work + m * g.xsize, *tbuf = work + first;
    memset(dw, 0, sizeof(real) * o * c * k * k);
    if (wino_dw)
        wino_weight_grad(&g, x, dy, n0, n1, work, dw);
    for (long i0 = n0; i0 < n1 && (!wino_dw || (dx && !uf)); i0 += m) {
        long mm = n1 - i0 < m ? n1 - i0 : m;
        for (long i = 0; i < mm && !wino_dw; i++) {
            to_planes(&g, x, i0 + i, xbuf + i * g.xsize);
            to_positions(&g, dy, i0 + i, dyt + i * g.ysize);
        }
        if (!wino_dw)
            weight_grad(&g, xbuf, dyt, mm, dw);
        for (long i = 0; dx && !uf && i < mm; i++)
            if (transposes(&g))
                forward_sample(&gt, dy, wf, NULL, i0 + i, tbuf, tbuf + gt.xsize, dx);
            else {
                to_rows(&g, dy, i0 + i, tbuf);
                scatter_sample(&g, tbuf, wf, xbuf + i * g.xsize, i0 + i, dx);
            }
    }
    if (dx && uf)
        wino_forward(&gt, dy, uf, NULL, n0, n1, tbuf, dx);
}

/* out[0]: the forward's workspace (elements; by Winograd if wino); out[1]: the backward's
   per sample of m (none if wino_dw: dW by Winograd), out[2]: the backward's besides (dx by
   Winograd if wino_dx). Workspaces start 64-byte aligned (every part then is). */
void conv_sizes(long c, long h, long w, long o, long k, long s, long p, long wino,
                long wino_dx, long wino_dw, long *out)
{
    Geom g;
    geometry(&g, 1, c, h, w, o, k, s, p);
    out[0] = wino ? wino_size(&g) : g.xsize + g.ysize;
    out[1] = wino_dw ? 0 : g.xsize + g.ysize;
    out[2] = dx_size(&g, wino_dx) + (wino_dw ? wino_dw_size(&g) : 0);
}
