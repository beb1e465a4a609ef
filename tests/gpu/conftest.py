"""GPU tests: CuPy against NumPy. Every test here gets ``cupy`` from the fixture below, which
skips it where CuPy or a GPU is missing; nothing is imported from CuPy at collection, so the
CPU suite never loads it."""
import pytest


@pytest.fixture(scope="session")
def cupy():
    try:
        import cupy
    except ImportError:
        pytest.skip("CuPy is not installed (pip install -e '.[gpu]')")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no GPU")
    except cupy.cuda.runtime.CUDARuntimeError as err:
        pytest.skip(f"no usable GPU ({err})")
    return cupy
