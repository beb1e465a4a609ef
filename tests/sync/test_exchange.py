"""The BSP exchange methods against the exact mean, on 2 and 4 ranks (``exchange_check.py``)."""
import pytest

from tests.mpi import ROOT, run_mpi


@pytest.mark.parametrize("n", [2, 3, 4])
def test_every_method_averages_exactly_and_identically_on_every_rank(n):
    done = run_mpi(n, [ROOT / "tests" / "sync" / "exchange_check.py"], timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok 146" in done.stdout, done.stdout
    assert "exchange: no shared memory (rank 0 could not reserve" in done.stdout
