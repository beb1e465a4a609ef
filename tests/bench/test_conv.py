"""bench/conv.py: its rows (every route's forward and backward rate), its FLOP count and its
refusals. No assertion on speed."""
import pytest

from bench import conv


def test_flops_count_two_per_multiply_add():
    n, c, h, o, k, s, p = conv.SHAPES["r20s3"]
    assert conv.flops(conv.SHAPES["r20s3"]) == 2 * n * o * h * h * c * k * k
    assert conv.flops((1, 3, 227, 96, 11, 4, 0)) == 2 * 96 * 55 * 55 * 3 * 121   # alexnet conv1


def test_a_row_per_shape_with_every_route(capsys):
    conv.main(["--shapes", "r20s3", "--routes", "always,never", "--rounds", "1",
               "--threads", "1", "--malloc-defaults"])
    _, header, row = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:5] == ["layer", "always", "fwd", "always", "bwd"]
    name, *rates = row.split()
    assert name == "r20s3" and len(rates) == 4 and all(float(r) > 0 for r in rates)


def test_winograd_modes_after_a_colon(capsys):
    conv.main(["--shapes", "r20s3", "--routes", "always:never,always:always", "--rounds", "1",
               "--threads", "1", "--malloc-defaults"])
    _, header, row = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:5] == ["layer", "always:never", "fwd", "always:never", "bwd"]
    assert len(row.split()) == 5
    with pytest.raises(ValueError, match="winograd must be one of auto, always, never, got "
                                         "'sometimes'"):
        conv.main(["--shapes", "r20s3", "--routes", "always:sometimes", "--rounds", "1",
                   "--malloc-defaults"])


def test_unknown_shapes_are_named():
    with pytest.raises(SystemExit, match="unknown r99; known: r20s1"):
        conv.main(["--shapes", "r20s3,r99"])


def test_the_fma_peak_is_measured():
    assert float(conv.peak()) > 0
