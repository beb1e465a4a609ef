"""Every layers/cuda/*.cu compiles with NVRTC, the compiler CuPy's RawModule uses (no GPU
needed), for float and double, as the layers build them (``-Dreal=...``; no headers: NVRTC has
no <math.h>, no INFINITY)."""
import ctypes
import importlib.metadata
from pathlib import Path

import pytest

from layers import cuda

SOURCES = sorted(p.stem for p in Path(cuda.__file__).parent.glob("*.cu"))


@pytest.fixture(scope="module")
def nvrtc():
    try:
        files = importlib.metadata.files("nvidia-cuda-nvrtc") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("nvidia-cuda-nvrtc is not installed (pip install -e '.[test]')")
    libraries = [f.locate() for f in files if f.name.startswith("libnvrtc.so")]
    if not libraries:
        pytest.skip("nvidia-cuda-nvrtc holds no libnvrtc.so for this platform")
    return ctypes.CDLL(str(libraries[0]))


def compile_source(nvrtc, name, real):
    """(return code, log) of compiling ``<name>.cu`` for sm_90 (the H100) with ``real``."""
    program = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), cuda.source(name).encode(),
                                    f"{name}.cu".encode(), 0, None, None) == 0
    options = [f"-Dreal={real}".encode(), b"-arch=compute_90"]
    code = nvrtc.nvrtcCompileProgram(program, len(options),
                                     (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    return code, log.value.decode()


def test_there_are_kernels_to_compile():
    assert {"conv", "pool", "lrn", "batch_norm", "elementwise"} <= set(SOURCES)


@pytest.mark.parametrize("real", ["float", "double"])
@pytest.mark.parametrize("name", SOURCES)
def test_kernel_source_compiles_with_nvrtc(nvrtc, name, real):
    code, log = compile_source(nvrtc, name, real)
    assert code == 0, log


def test_a_broken_source_fails_to_compile(nvrtc, monkeypatch):
    monkeypatch.setattr(cuda, "source", lambda name: "extern \"C\" __global__ void f() "
                                                     "{ float x = INFINITY; }")
    code, log = compile_source(nvrtc, "broken", "float")
    assert code != 0 and "INFINITY" in log
