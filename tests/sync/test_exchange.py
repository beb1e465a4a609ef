"""The BSP exchange methods against the exact mean, on 2 to 6 ranks (``exchange_check.py``)."""
import pytest

from tests.mpi import ROOT, run_mpi


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_every_method_averages_exactly_and_identically_on_every_rank(n):
    """Hierarchical (3 and 4 ranks: 2 pretend hosts; 6 ranks: 3 hosts x 2) included."""
    done = run_mpi(n, [ROOT / "tests" / "sync" / "exchange_check.py"], timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ok {146 if n == 2 else 222}" in done.stdout, done.stdout
    assert "exchange: no shared memory (rank 0 could not reserve" in done.stdout
