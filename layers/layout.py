"""Memory layout of the activations: indexed (N, C, H, W), stored channel-major.

The layer API fixes the index order, NCHW; where the elements lie in memory is up to the
layers (as with PyTorch's ``channels_last``, which keeps NCHW indices over NHWC memory). On the
CPU and on the GPU the convolutions write their outputs **channel-major**: memory ordered
(C, N, H, W), the array handed on being the transposed view. BatchNorm, ReLU, pooling and Concat keep that layout,
so that

- a convolution's GEMMs read and write whole (C, N*H*W) matrices (a sample range is a column
  range), with no transposes between its (channels, positions) products and the activations;
- BatchNorm's per-channel sums and its affine pass run over contiguous rows of N*H*W;
- Concat's channel slices, and the gradients it hands its branches, are contiguous blocks.

Every layer still accepts any layout (a batch from the loader is sample-major, NCHW in C
order); a layer that needs channel-major data converts it once (``to_channel_major``). The
helpers take NumPy and CuPy arrays alike (on the GPU a channel's row is what a convolution's
one 2-D GEMM writes, and what BatchNorm's and LRN's kernels read as one (1, C, N*H*W) block).
"""
import numpy as np

from layers.backend import array_module


def _order(ndim):
    """Axis order of channel-major memory: channels, samples, then the rest."""
    return (1, 0) + tuple(range(2, ndim))


def is_channel_major(a):
    """Whether ``a`` (N, C, ...) is stored channel-major and dense."""
    return getattr(a, "ndim", 0) >= 2 and a.transpose(_order(a.ndim)).flags.c_contiguous


def empty(shape, dtype, xp=np):
    """A new channel-major array of ``shape`` (N, C, ...)."""
    order = _order(len(shape))
    return xp.empty([shape[i] for i in order], dtype).transpose(order)


def empty_as(shape, dtype, channel_major, xp=np):
    """A new array of ``shape``: channel-major if ``channel_major``, else C order."""
    return empty(shape, dtype, xp) if channel_major else xp.empty(shape, dtype)


def to_channel_major(a):
    """``a`` itself when it is channel-major, else a channel-major copy."""
    if is_channel_major(a):
        return a
    out = empty(a.shape, a.dtype, array_module(a))
    out[...] = a
    return out


def like(a):
    """A new array of ``a``'s shape and dtype, channel-major if ``a`` is, else C order."""
    return empty_as(a.shape, a.dtype, is_channel_major(a), array_module(a))


def dense_planes(a):
    """``a`` (N, C, H, W) itself if its (H, W) planes fill one dense block in some order (C
    order or channel-major), else a channel-major copy: what the pooling kernels read."""
    return a if a.flags.c_contiguous or is_channel_major(a) else to_channel_major(a)


def rows(a):
    """A channel-major ``a`` (N, C, ...) as its (C, N*...) matrix (a view)."""
    return a.transpose(_order(a.ndim)).reshape(a.shape[1], -1)


def planes(a):
    """``a`` (N, C, H, W) as a (planes, H, W) view in memory order ((n, c) planes for C order,
    (c, n) for channel-major), or None for other layouts."""
    n, c, h, w = a.shape
    if a.flags.c_contiguous:
        return a.reshape(n * c, h, w)
    if is_channel_major(a):
        return a.transpose(1, 0, 2, 3).reshape(c * n, h, w)
    return None


def dense(a):
    """All of ``a``'s elements as a 1-D view in memory order, when ``a`` fills one dense block
    in some axis order (C order, channel-major, any transpose of such); else None."""
    if not hasattr(a, "strides"):
        return None
    order = sorted(range(a.ndim), key=lambda i: -a.strides[i])
    t = a.transpose(order)
    return t.reshape(-1) if t.flags.c_contiguous else None


def channel_blocks(a):
    """``a`` (N, C, ...) as a C-contiguous 3-D array whose axis 1 is the channels, and whether
    that is the channel-major form: (1, C, N*...) viewing a channel-major ``a``, else
    (N, C, ...) in C order (a copy where ``a`` is neither): how the kernels of per-channel
    layers (BatchNorm, LRN) take either layout."""
    if is_channel_major(a) and not a.flags.c_contiguous:
        return rows(a)[None], True
    return array_module(a).ascontiguousarray(a.reshape(a.shape[0], a.shape[1], -1)), False


def from_channel_blocks(a3, shape, channel_major):
    """The (N, C, ...) array of ``shape`` whose memory is ``a3`` (``channel_blocks``' form)."""
    if channel_major:
        order = _order(len(shape))
        return a3.reshape([shape[i] for i in order]).transpose(order)
    return a3.reshape(shape)


def in_form(a, channel_major):
    """``a`` in the form ``channel_blocks`` gave another array of its shape (converted if it
    is not): so that a gradient matches its forward's memory order."""
    if channel_major:
        return rows(to_channel_major(a))[None]
    return array_module(a).ascontiguousarray(a.reshape(a.shape[0], a.shape[1], -1))
