"""Every test runs in its own temporary folder, so run folders (runs/...) land there; every
sync rule is registered, so that configs naming their settings resolve (as in the driver)."""
import pytest

import sync  # noqa: F401


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
