"""Every test runs in its own temporary folder, so run folders (runs/...) land there."""
import pytest


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
