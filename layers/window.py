"""Window geometry shared by the convolution and the pooling layers: output sizes, the outputs
whose window tap reads real input, and the polyphase split of a strided sweep.

A sweep of k x k windows with stride s and padding p places window o at input rows
[o*s - p, o*s - p + k); tap i of window o reads input row o*s + i - p.

- Convolution output size: floor((H + 2p - k) / s) + 1.
- Pooling output size (Caffe, ceil mode): ceil((H + 2p - k) / s) + 1, minus one if p > 0 and
  the last window would start at or beyond H + p; floor mode as for the convolution.
- Polyphase split: phase a of a sweep holds the rows a + r*s; tap i of window o reads row
  o + floor((i - p) / s) of phase (i - p) mod s, a fixed offset from o for every window, so a
  strided sweep becomes s*s unstrided ones (``tap_phase``).

Everything here is integers and slices; the array work stays in the layers' routes.
"""
from functools import lru_cache


def conv_out_size(size, k, stride, pad):
    """Output length of a window sweep: floor((size + 2 pad - k) / stride) + 1."""
    return (size + 2 * pad - k) // stride + 1


def pool_out_size(size, k, stride, pad, ceil_mode=True):
    """Number of pooling windows along one axis (Caffe's rule, see the module docstring)."""
    if ceil_mode:
        out = -(-(size + 2 * pad - k) // stride) + 1
        if pad > 0 and (out - 1) * stride >= size + pad:
            out -= 1
        return out
    return (size + 2 * pad - k) // stride + 1


def check_pool_args(name, ksize, stride, pad):
    """Raise ValueError naming the layer unless ksize, stride >= 1 and 0 <= pad < ksize."""
    if not (isinstance(ksize, int) and isinstance(stride, int) and isinstance(pad, int)) or \
            ksize < 1 or stride < 1 or not 0 <= pad < ksize:
        raise ValueError(f"{name}: need ints ksize >= 1, stride >= 1 and 0 <= pad < ksize; "
                         f"got ksize={ksize!r}, stride={stride!r}, pad={pad!r}")


def pool_geometry(name, shape, k, stride, pad, ceil_mode):
    """(OH, OW, Hp, Wp) of a pooling layer ``name`` for an input of ``shape`` (N, C, H, W):
    the output size and a padded size that holds every window."""
    _, _, h, w = shape
    if h + 2 * pad < k or w + 2 * pad < k:
        raise ValueError(f"{name}: input {tuple(shape)} is smaller than the {k}x{k} window "
                         f"with pad {pad}")
    oh = pool_out_size(h, k, stride, pad, ceil_mode)
    ow = pool_out_size(w, k, stride, pad, ceil_mode)
    return oh, ow, max(h + 2 * pad, (oh - 1) * stride + k), max(w + 2 * pad, (ow - 1) * stride + k)


def valid_range(i, stride, pad, size, out):
    """Outputs o < out with 0 <= o*stride + i - pad < size (tap i reads real input), as
    [lo, hi)."""
    lo = min(out, max(0, -((i - pad) // stride)))
    hi = max(lo, min(out, (size - 1 + pad - i) // stride + 1))
    return lo, hi


def tap_phase(i, stride, pad):
    """Tap i of window o reads phase (i - pad) mod stride at o + floor((i - pad) / stride):
    returns (phase, shift)."""
    return (i - pad) % stride, (i - pad) // stride


@lru_cache(maxsize=256)
def conv_taps(k, stride, pad, h, w):
    """Geometry of every convolution tap t = i*k + j: the valid output rows [h0, h1) and
    columns [w0, w1), the input rows/columns they read (slices, None when empty), the flat
    offset between an output pixel and the input pixel it reads when ``flat`` (stride 1 and
    OW == W), and the valid flat output range [a, b) of one plane in that case. Returns
    (OH, OW, flat, taps)."""
    oh, ow = conv_out_size(h, k, stride, pad), conv_out_size(w, k, stride, pad)
    flat = stride == 1 and ow == w
    taps = []
    for i in range(k):
        h0, h1 = valid_range(i, stride, pad, h, oh)
        for j in range(k):
            w0, w1 = valid_range(j, stride, pad, w, ow)
            hs, ws = h0 * stride + i - pad, w0 * stride + j - pad
            rows = slice(hs, hs + (h1 - h0 - 1) * stride + 1, stride) if h1 > h0 else None
            cols = slice(ws, ws + (w1 - w0 - 1) * stride + 1, stride) if w1 > w0 else None
            off = (i - pad) * w + (j - pad)
            a, b = max(h0 * ow, -off), min(h1 * ow, h * w - off)
            taps.append((i * k + j, h0, h1, w0, w1, rows, cols, off, a, max(a, b)))
    return oh, ow, flat, tuple(taps)


@lru_cache(maxsize=256)
def conv_phase_taps(k, stride, pad, h, w):
    """Polyphase geometry of a strided convolution whose output is the input divided by the
    stride (H, W multiples of s, OH = H/s, OW = W/s: k3 s2 p1, k7 s2 p3, ...), else None.

    Phase f = a*s + b holds the input pixels (s*r + a, s*q + b) at (r, q), an (OH, OW) plane.
    Tap (i, j) of output (oh, ow) reads phase ((i-p) mod s, (j-p) mod s) at (oh + di, ow + dj),
    di = floor((i-p)/s), dj = floor((j-p)/s): a fixed flat offset di*OW + dj, as for a stride-1
    "same" convolution, so im2col and col2im become contiguous shifted 1-D copies and adds.
    Per tap, like ``conv_taps``: (t, phase, h0, h1, w0, w1, offset, a, b)."""
    if stride == 1 or h % stride or w % stride:
        return None
    oh, ow = conv_out_size(h, k, stride, pad), conv_out_size(w, k, stride, pad)
    if (oh, ow) != (h // stride, w // stride):
        return None
    taps = []
    for i in range(k):
        pa, di = tap_phase(i, stride, pad)
        h0, h1 = max(0, -di), max(0, min(oh, oh - di))
        for j in range(k):
            pb, dj = tap_phase(j, stride, pad)
            w0, w1 = max(0, -dj), max(0, min(ow, ow - dj))
            off = di * ow + dj
            a, b = max(h0 * ow, -off), min(h1 * ow, oh * ow - off)
            phase = pa * stride + pb
            taps.append((i * k + j, phase, h0, max(h0, h1), w0, max(w0, w1), off, a, max(a, b)))
    return tuple(taps)


def phase_range(a, stride, pad, size, out):
    """Rows r < out of phase a of the padded input (padded rows a + r*stride) that hold input
    rows, as a slice, and the input rows they hold (a slice)."""
    lo, hi = valid_range(a, stride, pad, size, out)
    first = a + lo * stride - pad
    return slice(lo, hi), slice(first, first + (hi - lo - 1) * stride + 1 if hi > lo else first,
                                stride)


@lru_cache(maxsize=256)
def pool_phases(k, stride, pad, h, w, oh, ow):
    """Polyphase layout of a padded pooling input: phase f = a*s + b holds padded pixels
    (a + r*s, b + q*s) at (r, q), r < Hq = OH + (k-1)//s, q < Wq = OW + (k-1)//s. Window tap
    (i, j) of output (oh, ow) is then pixel (oh + i//s, ow + j//s) of phase (i%s, j%s): in a
    phase's flat (planes, Hq, Wq) layout, a fixed offset from the output's anchor.
    Returns Hq, Wq, the input-to-phase copies (phase, rows, columns, input rows, input columns)
    and, per tap, (phase, flat offset)."""
    hq, wq = oh + (k - 1) // stride, ow + (k - 1) // stride
    copies = []
    for a in range(stride):
        dst_rows, src_rows = phase_range(a, stride, pad, h, hq)
        for b in range(stride):
            dst_cols, src_cols = phase_range(b, stride, pad, w, wq)
            if dst_rows.stop > dst_rows.start and dst_cols.stop > dst_cols.start:
                copies.append((a * stride + b, dst_rows, dst_cols, src_rows, src_cols))
    taps = []
    for i in range(k):
        pa, di = tap_phase(i, stride, 0)          # windows of the padded input: no offset
        for j in range(k):
            pb, dj = tap_phase(j, stride, 0)
            taps.append((pa * stride + pb, di * wq + dj))
    return hq, wq, tuple(copies), tuple(taps)
