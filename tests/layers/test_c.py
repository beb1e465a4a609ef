"""Building and loading the layers' C kernels (layers/c)."""
import shutil

import numpy as np
import pytest

from layers import c as ckernels


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and no library loaded; the process's libraries come back after."""
    monkeypatch.setenv("PT_KERNEL_CACHE", str(tmp_path))
    ckernels.library.cache_clear()
    yield tmp_path
    monkeypatch.undo()
    ckernels.library.cache_clear()


def test_built_once_into_the_cache(fresh):
    if ckernels.compiler() is None:
        pytest.fail("no C compiler (cc or gcc): " + ckernels.status())
    lib = ckernels.library("conv", np.float32)
    assert lib is not None, ckernels.status()
    built = sorted(p.name for p in fresh.iterdir())
    assert len(built) == 1 and built[0].startswith("conv-float-") and built[0].endswith(".so")
    stamp = (fresh / built[0]).stat().st_mtime_ns
    ckernels.library.cache_clear()
    assert ckernels.library("conv", np.float32) is not None
    assert (fresh / built[0]).stat().st_mtime_ns == stamp          # loaded, not rebuilt
    assert ckernels.library("conv", np.float64) is not None
    assert len(list(fresh.iterdir())) == 2                         # no temporary files left
    assert ckernels.status().startswith(
        "C kernels (direct convolution, BatchNorm, MaxPool's backward), built by ")


@pytest.mark.skipif(shutil.which("clang") is None, reason="no clang here")
@pytest.mark.parametrize("name", sorted(ckernels.KERNELS))
def test_every_kernel_builds_with_clang(fresh, monkeypatch, name):
    """CC=clang (macOS's cc): no GCC-only builtin (conv.c's shuffles have both spellings)."""
    monkeypatch.setenv("CC", "clang")
    for dtype in (np.float32, np.float64):
        assert ckernels.library(name, dtype) is not None, ckernels.status(dtype)


def test_switched_off(fresh, monkeypatch):
    monkeypatch.setenv("PT_C_KERNELS", "0")
    assert not ckernels.enabled()
    assert ckernels.library("conv", np.float32) is None
    assert ckernels.status() == "NumPy routes; C kernels off (PT_C_KERNELS=0)"
    assert list(fresh.iterdir()) == []


def test_a_failed_build_is_reported(fresh, monkeypatch, tmp_path_factory):
    """A compiler that fails: no library, a status line naming the file and the error, and no
    file left in the cache."""
    bad = tmp_path_factory.mktemp("bin") / "badcc"
    bad.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo badcc 1; exit 0; fi\n"
                   "echo 'conv.c:1: error: no vectors here' >&2\nexit 1\n")
    bad.chmod(0o755)
    monkeypatch.setenv("CC", str(bad))
    assert ckernels.library("conv", np.float32) is None
    assert ckernels.status() == ("NumPy routes; C kernels off (conv.c did not build: "
                                 "conv.c:1: error: no vectors here)")
    assert list(fresh.iterdir()) == []


def test_no_compiler(fresh, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert ckernels.library("conv", np.float32) is None
    assert "no C compiler" in ckernels.status()


def test_scratch_is_aligned():
    for dtype in (np.float32, np.float64):
        a, b = ckernels.scratch(1001, dtype), ckernels.scratch(1001, dtype)
        for buf in (a, b):
            assert buf.size == 1001 and buf.dtype == dtype
            assert buf.ctypes.data % ckernels.ALIGN == 0
        assert not np.shares_memory(a, b)          # fresh each call
