"""The shared window geometry (layers/window.py) against brute force: the outputs whose tap
reads real input, the polyphase split of a padded pooling input, the convolution's polyphase
taps, and the pooling geometry checks."""
import itertools

import numpy as np
import pytest

from layers.window import (check_pool_args, conv_out_size, conv_phase_taps, pool_geometry,
                           pool_out_size, pool_phases, tap_phase, valid_range)


@pytest.mark.parametrize("stride, pad, size, out", [(1, 0, 7, 5), (1, 2, 7, 9), (2, 1, 8, 4),
                                                    (3, 1, 9, 4), (2, 3, 2, 4), (2, 0, 5, 7)])
def test_valid_range_is_the_outputs_whose_tap_reads_the_input(stride, pad, size, out):
    for i in range(7):
        lo, hi = valid_range(i, stride, pad, size, out)
        assert 0 <= lo <= hi <= out
        assert list(range(lo, hi)) == [o for o in range(out) if 0 <= o * stride + i - pad < size]


def test_tap_phase():
    for i, stride, pad in itertools.product(range(8), (1, 2, 3), (0, 1, 3)):
        phase, shift = tap_phase(i, stride, pad)
        assert 0 <= phase < stride and shift * stride + phase == i - pad


@pytest.mark.parametrize("k, s, p, h, w, ceil", [(3, 2, 0, 9, 9, True), (3, 2, 1, 8, 7, True),
                                                 (3, 1, 1, 5, 6, True), (2, 2, 1, 5, 5, True),
                                                 (5, 3, 2, 7, 5, False), (3, 3, 0, 4, 4, True)])
def test_pool_phases_read_every_window_of_the_padded_input(k, s, p, h, w, ceil):
    """Phase planes filled with -inf and the copies from x give, at every tap's offset from an
    output's anchor, the pixel of the -inf padded input that the window reads."""
    x = np.arange(1.0, h * w + 1).reshape(h, w)
    oh, ow, hp, wp = pool_geometry("pool", (1, 1, h, w), k, s, p, ceil)
    hq, wq, copies, taps = pool_phases(k, s, p, h, w, oh, ow)
    phases = np.full((s * s, hq, wq), -np.inf)
    for f, dst_rows, dst_cols, src_rows, src_cols in copies:
        phases[f, dst_rows, dst_cols] = x[src_rows, src_cols]
    padded = np.full((hp + k, wp + k), -np.inf)
    padded[p:p + h, p:p + w] = x
    flat = phases.reshape(s * s, -1)
    for a, b in itertools.product(range(oh), range(ow)):
        for t, (f, off) in enumerate(taps):
            i, j = divmod(t, k)
            assert flat[f, a * wq + b + off] == padded[a * s + i, b * s + j]


@pytest.mark.parametrize("k, s, p, h, w", [(3, 2, 1, 8, 6), (7, 2, 3, 8, 8), (4, 2, 1, 6, 8),
                                           (3, 3, 1, 9, 6), (7, 2, 3, 2, 2)])
def test_conv_phase_taps_read_the_input_pixel_or_padding(k, s, p, h, w):
    """Tap (i, j) of output (a, b) reads phase plane f at a fixed offset: the input pixel
    (a*s + i - p, b*s + j - p) inside the valid rows and columns, padding outside them."""
    oh, ow = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    x = np.arange(1.0, h * w + 1).reshape(h, w)
    planes = np.stack([x[f // s::s, f % s::s].reshape(-1) for f in range(s * s)])
    for t, f, h0, h1, w0, w1, off, lo, hi in conv_phase_taps(k, s, p, h, w):
        i, j = divmod(t, k)
        for a, b in itertools.product(range(oh), range(ow)):
            r, c = a * s + i - p, b * s + j - p
            inside = 0 <= r < h and 0 <= c < w
            assert inside == (h0 <= a < h1 and w0 <= b < w1)
            if inside:
                assert lo <= a * ow + b < hi and planes[f, a * ow + b + off] == x[r, c]


def test_conv_phase_taps_only_for_outputs_of_the_input_over_the_stride():
    assert conv_phase_taps(3, 1, 1, 8, 8) is None          # stride 1
    assert conv_phase_taps(3, 2, 1, 7, 8) is None          # H not a multiple of the stride
    assert conv_phase_taps(3, 2, 0, 8, 8) is None          # OH = 3, not 4


def test_pool_geometry_and_arguments_name_the_layer():
    assert pool_geometry("P", (1, 1, 8, 8), 3, 2, 0, True) == (4, 4, 9, 9)
    assert pool_out_size(8, 3, 2, 0, ceil_mode=False) == conv_out_size(8, 3, 2, 0) == 3
    with pytest.raises(ValueError, match=r"P: input \(1, 2, 2, 2\) is smaller than the 3x3"):
        pool_geometry("P", (1, 2, 2, 2), 3, 1, 0, True)
    with pytest.raises(ValueError, match=r"P: need ints .*got ksize=3, stride=1, pad=3"):
        check_pool_args("P", 3, 1, 3)
