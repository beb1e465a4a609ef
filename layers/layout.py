"""Memory layout of the CPU's activations: indexed (N, C, H, W), stored channel-major.

The layer API fixes the index order, NCHW; where the elements lie in memory is up to the
layers (as with PyTorch's ``channels_last``, which keeps NCHW indices over NHWC memory). On the
CPU the convolutions write their outputs **channel-major**: memory ordered (C, N, H, W), the
array handed on being the transposed view. BatchNorm, ReLU, pooling and Concat keep that layout,
so that

- a convolution's GEMMs read and write whole (C, N*H*W) matrices (a sample range is a column
  range), with no transposes between its (channels, positions) products and the activations;
- BatchNorm's per-channel sums and its affine pass run over contiguous rows of N*H*W;
- Concat's channel slices, and the gradients it hands its branches, are contiguous blocks.

Every layer still accepts any layout (a batch from the loader is sample-major, NCHW in C
order); a layer that needs channel-major data converts it once (``to_channel_major``). Other
array libraries (CuPy) keep C order: these helpers are for NumPy arrays.
"""
import numpy as np


def _order(ndim):
    """Axis order of channel-major memory: channels, samples, then the rest."""
    return (1, 0) + tuple(range(2, ndim))


def is_channel_major(a):
    """Whether ``a`` (N, C, ...) is a NumPy array stored channel-major and dense."""
    return isinstance(a, np.ndarray) and a.ndim >= 2 and \
        a.transpose(_order(a.ndim)).flags.c_contiguous


def empty(shape, dtype):
    """A new channel-major array of ``shape`` (N, C, ...)."""
    order = _order(len(shape))
    return np.empty([shape[i] for i in order], dtype).transpose(order)


def empty_as(shape, dtype, channel_major, xp=np):
    """A new array of ``shape``: channel-major if ``channel_major`` (NumPy), else C order."""
    return empty(shape, dtype) if channel_major else xp.empty(shape, dtype)


def to_channel_major(a):
    """``a`` itself when it is channel-major, else a channel-major copy."""
    if is_channel_major(a):
        return a
    out = empty(a.shape, a.dtype)
    out[...] = a
    return out


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
    if not isinstance(a, np.ndarray):
        return None
    order = sorted(range(a.ndim), key=lambda i: -a.strides[i])
    t = a.transpose(order)
    return t.reshape(-1) if t.flags.c_contiguous else None
