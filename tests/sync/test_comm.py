"""sync/comm.py: whether the MPI library is CUDA-aware, and how that was found."""
from sync.comm import cuda_aware, mpi_libraries

MAPS = """\
7f1c2a000000-7f1c2a100000 r-xp 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libmpi.so.40.30.5
7f1c2b000000-7f1c2b100000 r-xp 00000000 08:01 124 /opt/cray/pe/lib64/libmpi_cray.so.12.0.0
7f1c2c000000-7f1c2c100000 r-xp 00000000 08:01 125 /old/libmpi.so.40 (deleted)
7f1c2d000000-7f1c2d100000 r-xp 00000000 08:01 126 /opt/my mpi/lib/libmpi.so.12
7f1c2a000000-7f1c2a100000 r--p 00001000 08:01 123 /usr/lib/x86_64-linux-gnu/libmpi.so.40.30.5
7f1c2e000000-7f1c2e100000 rw-p 00000000 00:00 0
7f1c2f000000-7f1c2f100000 r-xp 00000000 08:01 127 /usr/lib/libmpi_something_else.so
"""


def test_the_mpi_libraries_are_found_in_the_maps_cray_s_too_and_no_deleted_file():
    assert mpi_libraries(MAPS.splitlines(True)) == [
        "/usr/lib/x86_64-linux-gnu/libmpi.so.40.30.5", "/opt/cray/pe/lib64/libmpi_cray.so.12.0.0",
        "/opt/my mpi/lib/libmpi.so.12"]


def test_the_answer_says_how_it_was_found_and_the_override_wins(monkeypatch):
    from mpi4py import MPI  # noqa: F401  (loads libmpi, as a run does)
    monkeypatch.delenv("PT_CUDA_AWARE", raising=False)
    aware, how = cuda_aware()
    assert aware in (True, False) and ("MPIX_Query_cuda_support" in how or "libmpi" in how)
    monkeypatch.setenv("PT_CUDA_AWARE", "1")
    assert cuda_aware() == (True, "PT_CUDA_AWARE")
    monkeypatch.setenv("PT_CUDA_AWARE", "0")
    assert cuda_aware() == (False, "PT_CUDA_AWARE")
