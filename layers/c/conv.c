/* Direct convolution on the CPU (layers/conv_direct.py has the equations and the layout).

   y and dy (O, N, OH, OW) and dx (C, N, H, W) are channel-major; x is read through its sample
   and channel strides (xn, xc; its (H, W) planes dense: C order, channel-major). One sample's input is laid out as "phase planes": the zero-padded input xpad split into its
   s*s sub-lattices, plane (a, b) holding xpad[s*r + a, s*u + b] for r < PH, u < PW, so that
   every tap (i, j) reads one plane at a fixed flat offset, off[t] = plane(i % s, j % s) +
   (i / s) * PW + j / s, from an output position q = oh * PW + ow (rows of PW: the columns
   ow >= OW are scratch, never copied out, and read as zeros on the way back). With stride 1
   there is one plane, the padded input.

   The products are vectors of VL outputs (64 bytes: 16 floats or 8 doubles) at consecutive
   positions, a tile of OB channels by PB vectors held in registers. */
#include <stddef.h>
#include <string.h>

typedef real vr __attribute__((vector_size(64)));
typedef real vru __attribute__((vector_size(64), aligned(sizeof(real))));
#define VL ((long)(64 / sizeof(real)))
#define KMAX 16                                  /* the largest kernel side taken here */
#define AI static inline __attribute__((always_inline))

AI vr ld(const real *p) { return *(const vru *)p; }
AI void st(real *p, vr v) { *(vru *)p = v; }

typedef real vh __attribute__((vector_size(32)));
typedef real vq __attribute__((vector_size(16)));

/* the sum of v's lanes, halving the vector (the adds of a tree, not a chain of VL) */
AI real hsum(vr v)
{
    vh a, b;
    vq c, d;
    memcpy(&a, &v, 32);
    memcpy(&b, (char *)&v + 32, 32);
    a += b;
    memcpy(&c, &a, 16);
    memcpy(&d, (char *)&a + 16, 16);
    c += d;
    real sum = 0;
    for (unsigned l = 0; l < 16 / sizeof(real); l++) sum += c[l];
    return sum;
}

typedef struct {
    long n, c, h, w, o, k, s, p;                 /* the layer and its batch */
    long xn, xc;                                 /* x's sample and channel strides (elements) */
    long oh, ow, ph, pw, plane, cplane, npos;    /* phase geometry, as above */
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

/* sample n of x (strides xn, xc) as phase planes in xbuf (zeros where xpad is padding) */
static void to_planes(const Geom *g, const real *x, long n, real *xbuf)
{
    long s = g->s;
    memset(xbuf, 0, sizeof(real) * g->xsize);
    for (long c = 0; c < g->c; c++)
        for (long h = 0; h < g->h; h++)
            for (long b = 0; b < s; b++) {
                long w0, at, count = phase_run(g, h, b, &w0, &at);
                const real *src = x + c * g->xc + n * g->xn + h * g->w + w0;
                real *dst = xbuf + c * g->cplane + at;
                if (s == 1)
                    memcpy(dst, src, sizeof(real) * count);
                else
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

/* sample n of y = conv(x, W) + b (b may be NULL), through xbuf (planes) and ybuf (rows) */
static void forward_sample(const Geom *g, const real *x, const real *wt, const real *b, long n,
                           real *xbuf, real *ybuf, real *y)
{
    long reach = (g->k - 1) / g->s;             /* a tap's rows and columns past the first */
    Product a = {xbuf, g->cplane, g->c, g->k * g->k, g->off, wt, g->k * g->k * g->o, g->o,
                 ybuf, g->npos, g->s * g->s * (PB * VL + reach * (g->pw + 1))};
    to_planes(g, x, n, xbuf);
    product(&a, g->npos, 0);
    for (long o = 0; o < g->o; o++) {
        real bo = b ? b[o] : 0;
        real *dst = y + (o * g->n + n) * g->oh * g->ow;
        const real *src = ybuf + o * g->npos;
        for (long r = 0; r < g->oh; r++)
            for (long u = 0; u < g->ow; u++) dst[r * g->ow + u] = src[r * g->pw + u] + bo;
    }
}

/* samples [n0, n1): y = conv(x, W) + b; wt[c][t][o] = W[o][c][t]; b may be NULL; x's
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

/* dw[o][c][t0 + j * ts] += sum over the m samples i and positions q of
   dyb_i[o][q] * xbuf_i[c][off[t0] + j + q] (xbuf_i = xbuf + i * xsize, dyb_i = dyb + i * dysize)
   for OB channels o and TB taps of one row of the kernel that share a phase plane, ts apart
   (consecutive in the plane) */
#define WTILE(OB, TB)                                                                      \
AI void wtile_##OB##_##TB(const Geom *g, const real *xbuf, const real *dyb, long m,       \
                          long c, long o, long t0, long ts, real *dw)                      \
{                                                                                          \
    vr acc[OB][TB];                                                                        \
    for (int a = 0; a < OB; a++)                                                           \
        for (int j = 0; j < TB; j++) acc[a][j] = (vr){0};                                  \
    for (long i = 0; i < m; i++) {                                                         \
        const real *xc = xbuf + i * g->xsize + c * g->cplane + g->off[t0];                 \
        const real *dc = dyb + i * g->dysize + o * g->npos;                                \
        for (long q = 0; q < g->npos; q += VL) {                                           \
            vr xv[TB];                                                                     \
            for (int j = 0; j < TB; j++) xv[j] = ld(xc + j + q);                           \
            for (int a = 0; a < OB; a++) {                                                 \
                vr d = ld(dc + a * g->npos + q);                                           \
                for (int j = 0; j < TB; j++) acc[a][j] += d * xv[j];                       \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
    long kk = g->k * g->k;                                                                 \
    for (int a = 0; a < OB; a++)                                                           \
        for (int j = 0; j < TB; j++)                                                       \
            dw[((o + a) * g->c + c) * kk + t0 + j * ts] += hsum(acc[a][j]);                \
}
WTILE(8, 3)
WTILE(8, 2)
WTILE(8, 1)
WTILE(1, 3)
WTILE(1, 2)
WTILE(1, 1)

/* the wtiles of OB (8 or 1) channels from o for every tap of input channel c */
static void wtiles(const Geom *g, const real *xbuf, const real *dyb, long m, long c, long o,
                   int ob, real *dw)
{
    long k = g->k, s = g->s;
    for (long i = 0; i < k; i++)
        for (long b = 0; b < s && b < k; b++)
            for (long j = b; j < k;) {          /* taps j, j + s, ...: one plane, adjacent */
                long t = i * k + j, left = (k - 1 - j) / s + 1;
                int tb = left >= 3 ? 3 : (int)left;
                if (ob == 8 && tb == 3) wtile_8_3(g, xbuf, dyb, m, c, o, t, s, dw);
                else if (ob == 8 && tb == 2) wtile_8_2(g, xbuf, dyb, m, c, o, t, s, dw);
                else if (ob == 8) wtile_8_1(g, xbuf, dyb, m, c, o, t, s, dw);
                else if (tb == 3) wtile_1_3(g, xbuf, dyb, m, c, o, t, s, dw);
                else if (tb == 2) wtile_1_2(g, xbuf, dyb, m, c, o, t, s, dw);
                else wtile_1_1(g, xbuf, dyb, m, c, o, t, s, dw);
                j += tb * s;
            }
}

/* dw += the weight gradient of m samples (dw (O, C, k, k), this worker's partial) */
static void weight_grad(const Geom *g, const real *xbuf, const real *dyb, long m, real *dw)
{
    for (long c = 0; c < g->c; c++)
        for (long o = 0; o < g->o; o += (o + 8 <= g->o ? 8 : 1))
            wtiles(g, xbuf, dyb, m, c, o, o + 8 <= g->o ? 8 : 1, dw);
}

/* one sample's dx for a strided layer: every tap's sum over o of W[o][c][t] * dyb[o][q]
   added into the planes at off[t] + q (the adjoint of the forward's reads; taps outer, so
   that no add reads a vector that the previous add has just written shifted), then the
   planes' pixels copied out. wf[o][t][c] = W[o][c][kk - 1 - t]. */
static void scatter_sample(const Geom *g, const real *dyb, const real *wf, real *dxbuf, long n,
                           real *dx)
{
    long kk = g->k * g->k, zero = 0;
    memset(dxbuf, 0, sizeof(real) * g->xsize);
    for (long t = 0; t < kk; t++) {
        Product a = {dyb, g->npos, g->o, 1, &zero, wf + (kk - 1 - t) * g->c, kk * g->c, g->c,
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

/* samples [n0, n1), m at a time: dw (this worker's partial, overwritten) and, unless dx is
   NULL, dx (channel-major); x as in conv_forward; wf[o][t][c] = W[o][c][kk - 1 - t]; work:
   conv_sizes' backward elements */
void conv_backward(const real *x, long xn, long xc, const real *dy, const real *wf, real *dw,
                   real *dx, long n, long c, long h, long w, long o, long k, long s, long p,
                   long n0, long n1, long m, real *work)
{
    Geom g, gt;
    geometry(&g, n, c, h, w, o, k, s, p);
    transposed(&g, &gt);
    g.xn = xn;
    g.xc = xc;
    real *xbuf = work, *dyb = work + m * g.xsize, *tbuf = dyb + m * g.dysize;
    memset(dw, 0, sizeof(real) * o * c * k * k);
    for (long i0 = n0; i0 < n1; i0 += m) {
        long mm = n1 - i0 < m ? n1 - i0 : m;
        for (long i = 0; i < mm; i++) {
            to_planes(&g, x, i0 + i, xbuf + i * g.xsize);
            to_rows(&g, dy, i0 + i, dyb + i * g.dysize);
        }
        weight_grad(&g, xbuf, dyb, mm, dw);
        for (long i = 0; dx && i < mm; i++)
            if (transposes(&g))
                forward_sample(&gt, dy, wf, NULL, i0 + i, tbuf, tbuf + gt.xsize, dx);
            else
                scatter_sample(&g, dyb + i * g.dysize, wf, xbuf + i * g.xsize, i0 + i, dx);
    }
}

/* out[0]: the forward's workspace (elements); out[1]: the backward's per sample of m,
   out[2]: the backward's besides. Workspaces start 64-byte aligned (every part then is). */
void conv_sizes(long c, long h, long w, long o, long k, long s, long p, long *out)
{
    Geom g, gt;
    geometry(&g, 1, c, h, w, o, k, s, p);
    transposed(&g, &gt);
    out[0] = g.xsize + g.dysize;
    out[1] = g.xsize + g.dysize;
    out[2] = transposes(&g) ? gt.xsize + gt.dysize : 0;
}
