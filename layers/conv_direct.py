"""Conv2D on the CPU by direct convolution (``layers/c/conv.c``): no im2col, no GEMM packing.

With xpad the input zero-padded by p, split into its s*s phase planes (plane (a, b) holds
xpad[s*r + a, s*u + b], r < PH = ceil((H + 2p)/s), u < PW = ceil((W + 2p)/s)), every tap
(i, j) reads one plane at a fixed flat offset from the output position q = oh*PW + ow:

    off[i, j] = plane(i mod s, j mod s) + (i div s)*PW + (j div s)
    y[o, q]   = b[o] + sum_{c, i, j} W[o, c, i, j] * planes[c, q + off[i, j]]

The vectors run along output channels (VL = 16 floats or 8 doubles, W stored as
Wt[c, i, j, o] with o padded to whole vectors): a tile of OV vectors of output channels by UW
positions of one output row (OV*UW <= 28 registers) sums, over (c, i, j), the weight vector
times one input value broadcast to every lane. Loads of the weights are aligned, the inputs
are single values at any offset, so rows need no padding to whole vectors. OV (1-4) is picked
per layer for the most accumulators per tile on its rows; the sum over c runs in chunks
whose weights for one tile take 96 KiB (from L2), each chunk added to the last. The tiles
write y positions-major (q, o), copied out to channel-major at the end of each sample; a
large image is swept in bands of output rows that fit in L2 (at least 1,024 positions each).
Backward, with dY[q, o] = dy positions-major:

    dW[o, c, i, j] = sum_{n, q} dY[q, o] * planes[c, q + off[i, j]]
    dx = the transposed convolution: with stride 1 and p <= k-1, the forward again on dy
         padded by k-1-p, with the flipped kernel Wf[o, c, i, j] = W[o, c, k-1-i, k-1-j] (in
         and out channels swapped); otherwise every tap's sum over o of W[o, c, i, j] * dy[o, q]
         added into a plane at q + off[i, j], then the planes' pixels copied out.

dW's tiles hold 1 or 2 vectors of output channels by up to 8 input channels by up to 3 taps
that share a plane (consecutive there), at most 24 accumulators, and run over the positions of
m samples (``Conv2D.direct_chunk_bytes`` bounds their planes and dY; a large sample in bands
of rows as above), each worker into its own partial; the partials are added in worker order.
The strided dx's scatter keeps vectors along positions (8 channels by 3 vectors of positions
per tile).

A 3x3 stride-1 layer with pad <= 2 may go by Winograd's F(2x2, 3x3) (Lavin and Gray 2016;
``Conv2D.winograd``, ``winograd`` below): the output in 2x2 tiles t, tile (ty, tx) from the 4x4
block d[c, t] of channel c's padded input at (2 ty, 2 tx), xi = 4a + b over the 16 points:

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
    U[xi, c, o] = (G W[o, c] G^T)[xi]            V[xi, c, t] = (B^T d[c, t] B)[xi]
    M[xi, t, o] = sum_c V[xi, c, t] * U[xi, c, o]
    y[o, t]     = A^T M[:, t, o] A + b[o]         (the 2x2 outputs of tile t; 4x4 -> 2x2)
    dM[xi, t, o] = (A dy[o, t] A^T)[xi]          dU[xi, c, o] = sum_t V[xi, c, t] * dM[xi, t, o]
    dW[o, c]    = G^T dU[:, c, o] G
    dx          = the same forward on dy padded by 2 - p, with the flipped kernel

Each of the 16 products is a 1x1 convolution over a band of tiles, run by the tiles above as
one row of positions: 16 multiply-adds per input and output channel per tile where the direct
products take 36 for its 4 outputs (2.25x fewer). The transforms cost about (C + O) per tile
against the products' C * O, hence the channel bounds of "auto". Small images go in groups of
samples so that a band holds at least 128 tiles (512 for dW's sums). In float32 the results
differ from the direct products' by rounding, about 1e-6 of the largest output (tests compare
the two); an infinite input gives NaN in its tiles (inf - inf in the transforms) where the
direct sums give an infinity.

Why: the im2col route's GEMMs are (O, k*k*C) @ (k*k*C, positions); with O and C of 16-64
(CIFAR ResNets) OpenBLAS spends more on packing col than on the products, and on larger layers
the broadcast tiles reach the GEMMs' rate without col; Winograd takes 3x3 layers of 64
channels and more past both (bench/README.md).

Activations are channel-major (``layers/layout.py``) in and out; every worker takes a
contiguous range of samples (``layers/parallel.py``) with its own workspace, scratch taken
fresh each call (``layers.c.scratch``: kept per layer, vgg16's buffers would add 1.7 GB).
"""
import numpy as np

from layers import c as ckernels
from layers import layout, parallel

_c_long = ckernels.integer


def library(dtype):
    """The convolution's C library for ``dtype``, or None (``layers.c.library``)."""
    return ckernels.library("conv", dtype)


def _dims(x_shape, layer):
    n, c, h, w = x_shape
    return [_c_long(v) for v in (n, c, h, w, layer.out_ch, layer.k, layer.stride, layer.pad)]


def _sizes(lib, x, layer):
    """(forward workspace, backward's per sample of a chunk, backward's besides), elements."""
    _, c, h, w = x.shape
    out = np.zeros(3, np.int64)
    lib.conv_sizes(*[_c_long(v) for v in (c, h, w, layer.out_ch, layer.k, layer.stride,
                                          layer.pad, winograd(layer, x),
                                          winograd(layer, x, "input"),
                                          winograd(layer, x, "weights"))],
                   ckernels.pointer(out))
    return [int(v) for v in out]


# Where "auto" takes this route, from bench/README.md's per-layer table (2 workers, float32):
# everywhere but layers with both large weights and few positions (ResNet-50's last stage:
# its GEMMs there run as fast, and dW's sums run over 49 positions per sample).
AUTO_WEIGHTS = 1 << 20                  # elements of one group's W ...
AUTO_POSITIONS = 64                     # ... beyond which fewer output positions per sample
# A strided layer's dx comes out of a scatter (vectors along positions), which beats the
# im2col route's col2im up to about this many weights (ResNet-50's 256-channel stride-2
# layer is past it).
AUTO_SCATTER_WEIGHTS = 1 << 18
# Winograd's products are 1x1 convolutions over the tiles, summing over the input channels;
# below this many the transforms cost more than they save (bench/README.md).
AUTO_WINO_CHANNELS = 64
# dW's transforms (of x and of dy) cost more per product than the forward's: Winograd for dW
# with this many channels on both sides, or output rows this wide (whole vectors of tiles).
AUTO_WINO_DW_CHANNELS = 128
AUTO_WINO_DW_WIDTH = 32
MODES = ("auto", "always", "never")


def _check_modes(layer):
    """ValueError unless ``layer.direct`` and ``layer.winograd`` are both ``MODES``."""
    for name in ("direct", "winograd"):
        if getattr(layer, name) not in MODES:
            raise ValueError(f"{layer.name}: {name} must be one of {', '.join(MODES)}, "
                             f"got {getattr(layer, name)!r}")


def takes(layer, x, phase="forward"):
    """Whether ``layer`` takes this route for ``phase`` ("forward" or "backward") on input
    ``x``: a kernel other than 1x1 stride 1, of side <= 16, with the C library built for x's
    dtype, and ``layer.direct``: "always", or "auto" within the bounds above (in backward, for
    a strided layer that needs dx, within ``AUTO_SCATTER_WEIGHTS`` too)."""
    _check_modes(layer)
    if layer.direct == "never" or layer.pointwise or layer.k > 16 or \
            library(x.dtype) is None:
        return False
    if layer.direct == "always":
        return True
    _, o, oh, ow = layer.out_shape(x.shape)
    weights = o * layer.in_ch * layer.k * layer.k
    fits = weights <= AUTO_WEIGHTS or oh * ow >= AUTO_POSITIONS
    return fits and (phase == "forward" or layer.stride == 1 or not layer.needs_input_grad
                     or weights <= AUTO_SCATTER_WEIGHTS)


def winograd(layer, x, phase="forward"):
    """Whether the direct route computes ``phase``'s product on input ``x`` by Winograd's
    F(2x2, 3x3): "forward" y, "input" dx (the transposed convolution; only where the layer
    needs dx) or "weights" dW. A 3x3 layer of stride 1 and pad <= 2, and ``layer.winograd``
    "always", or "auto" with at least ``AUTO_WINO_CHANNELS`` channels summed over (C forward,
    O for dx); for dW, at least ``AUTO_WINO_DW_CHANNELS`` on both sides, or output rows of at
    least ``AUTO_WINO_DW_WIDTH``."""
    _check_modes(layer)
    if layer.winograd == "never" or layer.k != 3 or layer.stride != 1 or layer.pad > 2 or \
            phase == "input" and not layer.needs_input_grad:
        return False
    if layer.winograd == "always":
        return True
    c, o = layer.in_ch // layer.groups, layer.out_ch // layer.groups
    if phase == "weights":
        return min(c, o) >= AUTO_WINO_DW_CHANNELS or \
            x.shape[3] + 2 * layer.pad - 2 >= AUTO_WINO_DW_WIDTH
    return (c if phase == "forward" else o) >= AUTO_WINO_CHANNELS


def _wino_weights(layer, dtype, flip):
    """``layer``'s Winograd weights U[xi][i][outpad] in a scratch buffer: the forward's
    (i over C, out over O), or with ``flip`` the transposed convolution's (i over O, out over
    C, the kernel flipped); computed by the workers over ranges of i."""
    lib = library(dtype)
    w = np.ascontiguousarray(layer.params["W"], dtype=dtype)
    o, c = w.shape[:2]
    nin, nout, so, si = (o, c, 9, 9 * c) if flip else (c, o, 9 * c, 9)
    lanes = ckernels.ALIGN // np.dtype(dtype).itemsize
    outpad = -(-nout // lanes) * lanes
    u = ckernels.scratch(16 * nin * outpad, dtype)

    def work(start, stop, worker):
        lib.conv_wino_weights(ckernels.pointer(w), *[_c_long(v) for v in (
            so, si, nin, nout, outpad, flip, start, stop)], ckernels.pointer(u))

    parallel.split_work(np, nin, work)
    return u


def _vectors(w, dtype):
    """``w`` (..., m) copied into an aligned scratch buffer with its last axis padded with
    zeros to whole 64-byte vectors (the kernels load m's values a vector at a time)."""
    lanes = ckernels.ALIGN // np.dtype(dtype).itemsize
    shape = w.shape[:-1] + (-(-w.shape[-1] // lanes) * lanes,)
    out = ckernels.scratch(int(np.prod(shape)), dtype).reshape(shape)
    out[..., w.shape[-1]:] = 0
    out[..., :w.shape[-1]] = w
    return out


def planes(x):
    """(x, its sample stride, its channel stride), strides in elements, when x's (H, W) planes
    are dense (C order, channel-major, a channel range of either); None otherwise."""
    item = x.itemsize
    n_stride, c_stride, h_stride, w_stride = x.strides
    if w_stride != item or h_stride != x.shape[3] * item or n_stride <= 0 or c_stride <= 0 \
            or n_stride % item or c_stride % item:
        return None
    return x, _c_long(n_stride // item), _c_long(c_stride // item)


def forward(layer, x, y):
    """y = conv(x, W) + b into ``y`` (channel-major, ``layout.rows`` views its memory); x in
    any layout whose (H, W) planes are dense (``planes``)."""
    lib = library(x.dtype)
    b = layer.params.get("b")
    size, dims = _sizes(lib, x, layer)[0], _dims(x.shape, layer)
    (xd, xn, xc), yd = planes(x), layout.rows(y)
    if winograd(layer, x):
        kernel, weights = lib.conv_forward_wino, _wino_weights(layer, x.dtype, 0)
        dims = dims[:5] + dims[7:]                  # n, c, h, w, o, p: k = 3, s = 1
    else:
        kernel, weights = lib.conv_forward, _vectors(
            layer.params["W"].reshape(layer.out_ch, layer.in_ch, -1).transpose(1, 2, 0),
            x.dtype)

    def work(start, stop, worker):
        ws = ckernels.scratch(size, x.dtype)
        kernel(ckernels.pointer(xd), xn, xc, ckernels.pointer(weights), ckernels.pointer(b),
               ckernels.pointer(yd), *dims, _c_long(start), _c_long(stop), ckernels.pointer(ws))

    parallel.split_work(np, x.shape[0], work)


def backward(layer, x, dy, dx):
    """The weight and bias gradients into ``layer.grads``, and dx into ``dx`` unless it is
    None; dy and dx channel-major, x as in ``forward``."""
    lib = library(x.dtype)
    o, c, k = layer.out_ch, layer.in_ch, layer.k
    uf = _wino_weights(layer, x.dtype, 1) \
        if dx is not None and winograd(layer, x, "input") else None
    wf = _vectors(layer.params["W"].reshape(o, c, -1)[:, :, ::-1].transpose(0, 2, 1),
                  x.dtype) if dx is not None and uf is None else None
    _, per_sample, besides = _sizes(lib, x, layer)
    m = max(1, layer.direct_chunk_bytes // max(1, per_sample * x.dtype.itemsize))
    dims = _dims(x.shape, layer)
    (xd, xn, xc), dyr = planes(x), layout.rows(dy)
    dxd = layout.rows(dx) if dx is not None else None
    bias = "b" in layer.grads

    def work(start, stop, worker):
        mm = min(m, stop - start)
        ws = ckernels.scratch(mm * per_sample + besides, x.dtype)
        dw = layer.grads["W"] if worker == 0 else \
            layer.workspace(("dW", worker), layer.grads["W"].shape, x.dtype, np)
        lib.conv_backward(ckernels.pointer(xd), xn, xc, ckernels.pointer(dyr),
                          ckernels.pointer(wf), ckernels.pointer(uf),
                          _c_long(winograd(layer, x, "weights")), ckernels.pointer(dw),
                          ckernels.pointer(dxd),
                          *dims, _c_long(start), _c_long(stop), _c_long(mm),
                          ckernels.pointer(ws))
        l = dy.shape[2] * dy.shape[3]
        db = layer.workspace(("db", worker), (o,), x.dtype, np) if bias else None
        if bias:
            dyr[:, start * l:stop * l].sum(axis=1, out=db)
        return dw, db

    parts = parallel.split_work(np, x.shape[0], work)
    for dw, _ in parts[1:]:
        layer.grads["W"] += dw
    if bias:
        layer.grads["b"][...] = parts[0][1]
        for _, db in parts[1:]:
            layer.grads["b"] += db
