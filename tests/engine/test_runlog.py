"""The run folder, the progress display, the report and the timeline."""
import io
import json
import platform
import subprocess
import sys

import numpy as np
import pytest

from core import memory
from core.config import load_config
from engine.progress import ProgressDisplay
from engine.report import main as report
from engine.train import train
from engine.version import source_fingerprint
from layers import c as ckernels
from tests.mpi import ROOT, run_mpi
from tests.sync.helpers import COMMON


def test_a_two_rank_run_leaves_its_folder_readable(tmp_path):
    args = ["-m", "engine.train", ROOT / "config.yaml"]
    for s in COMMON + ["batch_size=16", "epochs=2", f"log.dir={tmp_path / 'run'}",
                       "log.every=5", "timeline=true", "print_every=5"]:
        args += ["--set", s]
    done = run_mpi(2, args, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("model mlp") == 1            # only the first worker speaks
    run = tmp_path / "run"
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["roles"] == ["worker", "worker"] and meta["ranks"] == 2
    assert meta["hosts"] == [platform.node()] * 2 and meta["threads"] == [1, 1]
    assert meta["versions"]["parallel-training"] == source_fingerprint()
    assert meta["config"]["batch_size"] == 16 and "Open MPI" in meta["mpi"]
    assert meta["versions"]["numpy"] == np.__version__ and meta["steps_per_epoch"] == 15
    kernels = ckernels.status(np.float32)            # the CPU kernels: the line and the file
    assert meta["cpu_kernels"] == kernels and f"CPU kernels: {kernels}; memory: " in done.stdout
    assert meta["cpu_memory"] == memory.KEPT and f"memory: {memory.KEPT}" in done.stdout
    for rank in (0, 1):
        rows = [json.loads(line) for line in (run / f"log.rank{rank}.jsonl").open()]
        assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
        assert all(r["compute_s"] > 0 and r["exchange_s"] >= 0 and r["data_s"] >= 0
                   and np.isfinite(r["loss"]) for r in rows)
        trace = json.loads((run / f"timeline.rank{rank}.json").read_text())
        names = {e["name"] for e in trace["traceEvents"]}
        assert {"compute", "exchange", "data"} <= names
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [m["epoch"] for m in metrics] == [1, 2] and 0 <= metrics[-1]["top1"] <= 1
    assert (run / "weights.hkl").exists()


def test_servers_record_their_service_in_the_timeline(tmp_path):
    args = ["-m", "engine.train", ROOT / "config.yaml"]
    for s in COMMON + ["sync_rule=EASGD", "batch_size=16", "max_steps=8", "easgd.tau=2",
                       f"log.dir={tmp_path / 'run'}", "timeline=true"]:
        args += ["--set", s]
    done = run_mpi(3, args, timeout=120)
    assert done.returncode == 0, done.stderr
    events = json.loads((tmp_path / "run" / "timeline.rank0.json").read_text())["traceEvents"]
    assert sum(e["name"] == "serve" for e in events) >= 8      # 2 workers x 4 exchanges
    assert json.loads((tmp_path / "run" / "metadata.json").read_text())["roles"] == \
        ["server", "worker", "worker"]


def test_the_bar_on_a_terminal_and_lines_elsewhere():
    bar_out, line_out = io.StringIO(), io.StringIO()
    for out, bar in ((bar_out, True), (line_out, False)):
        display = ProgressDisplay(out, True, 20, 5, workers=2, bar=bar)
        display.start_epoch(1, 10)
        for step in range(1, 11):
            display.step(1, step, 0.5, 0.1, 8, 0.0)
        display.end_epoch()
    assert "epoch 1" in bar_out.getvalue() and "10/10" in bar_out.getvalue()
    lines = line_out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1 step 5/20 loss 0.5000")
    quiet = io.StringIO()
    ProgressDisplay(quiet, False, 20, 5, workers=2).message("not shown")
    assert quiet.getvalue() == ""


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A BSP and a LOCAL run of the small job, for the report."""
    folders = []
    for rule in ("BSP", "LOCAL"):
        folder = tmp_path_factory.mktemp("runs") / rule
        train(load_config(None, COMMON + ["batch_size=16", "epochs=2", f"sync_rule={rule}",
                                          f"log.dir={folder}", "log.every=3"]))
        folders.append(str(folder))
    return folders


def test_the_report_compares_runs_in_a_plot_and_a_table(two_runs, tmp_path, capsys):
    assert report(two_runs + ["--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "report.md").read_text()
    assert table.count("\n") == 4 and "BSP, 1 workers" in table and "LOCAL" in table
    png = (tmp_path / "cmp" / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000
    assert "final top-1" in capsys.readouterr().out


def test_the_report_without_matplotlib_writes_its_table_and_says_what_to_install(two_runs,
                                                                                 tmp_path):
    hide = "import sys; sys.modules['matplotlib'] = None; from engine.report import main; " \
           "sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", hide, *two_runs, "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"report: {tmp_path / 'report.png'} not drawn: matplotlib is not installed (pip install "
        "'matplotlib>=3.5', or reinstall this project: pip install -e .)"]
    assert "final top-1" in done.stdout and (tmp_path / "report.md").read_text().count("\n") == 4
    assert not (tmp_path / "report.png").exists()


def test_the_report_names_a_folder_that_is_no_run(tmp_path, capsys):
    assert report([str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
