"""Stopping well (engine/stopping.py, sync/stop.py): a SIGINT or SIGTERM to any rank or to the
launcher stops every rank at a step boundary with a checkpoint, one line that says how to
resume, and status 130 or 143; resuming ends where an uninterrupted run ends; a second signal
stops at once; no process is left behind."""
import json
import os
import re
import shlex
import signal
import subprocess
import time

import numpy as np
import pytest

from engine.stopping import StopSignals, resume_command
from tests.mpi import ROOT, mpi_env, mpiexec, processes_with, run_mpi
from tests.sync.helpers import COMMON, run_rule

TWO_EPOCHS = ["batch_size=8", "epochs=2", "lr_schedule.policy=cosine"]   # 30 steps an epoch
STATUS = {"SIGINT": 130, "SIGTERM": 143}


def stopped_run(tmp_path, ranks, settings, signal_at):
    """save_params.py on ``ranks`` ranks with ``--signal R:S:NAME``; returns the run."""
    args = [ROOT / "tests" / "sync" / "save_params.py", tmp_path / "stopped"]
    for s in COMMON + settings:
        args += ["--set", s]
    return run_mpi(ranks, args + ["--signal", signal_at], timeout=120)


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_to_a_bsp_rank_mid_epoch_stops_both_and_the_resumed_run_ends_as_one_run(
        tmp_path, name):
    settings = TWO_EPOCHS + [f"log.dir={tmp_path / 'run'}"]
    whole, _ = run_rule(tmp_path / "whole", 2, TWO_EPOCHS + [f"log.dir={tmp_path / 'w'}"])
    done = stopped_run(tmp_path, 2, settings, f"1:50:{name}")          # rank 1, epoch 2
    assert done.returncode == STATUS[name], done.stdout + done.stderr
    line = re.search(rf"stopped by {name} after step 50 of 60 \(epoch 2\); checkpoint (\S+); "
                     r"resume with: (.*)", done.stdout)
    assert line, done.stdout
    folder = tmp_path / "run" / "checkpoints" / "step-00000050"
    assert line.group(1) == str(folder) and (folder / "manifest.json").exists()
    assert f"--set log.dir={tmp_path / 'run'} --set resume=auto" in line.group(2)
    summaries = [json.loads((tmp_path / f"stopped.{r}.json").read_text()) for r in (0, 1)]
    assert [s["stopped"] for s in summaries] == [STATUS[name]] * 2
    rest, _ = run_rule(tmp_path / "rest", 2, settings + ["resume=auto"])
    for params in rest:
        np.testing.assert_array_equal(params, whole[0])
    # the clock goes on across the resume: validations and logged steps
    with np.load(folder / "rank0.npz") as saved:
        elapsed = json.loads(saved["__values__"].tobytes())["elapsed"]
    times = [json.loads(row)["time"]
             for row in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(times) == 2 and times[0] < elapsed < times[1]    # epoch 1, the stop, the end
    steps = [json.loads(row) for row in (tmp_path / "run" / "log.rank0.jsonl").read_text()
             .splitlines()]
    assert [r["step"] for r in steps] == sorted(r["step"] for r in steps)
    assert [r["time"] for r in steps] == sorted(r["time"] for r in steps)
    assert processes_with(tmp_path) == []


def test_a_signal_while_a_rank_sets_up_stops_the_run_after_its_first_step(tmp_path):
    done = stopped_run(tmp_path, 2, TWO_EPOCHS + [f"log.dir={tmp_path / 'run'}"],
                       "1:0:SIGINT")
    assert done.returncode == 130, done.stdout + done.stderr
    assert "stopped by SIGINT after step 1 of 60 (epoch 1)" in done.stdout
    assert (tmp_path / "run" / "checkpoints" / "step-00000001" / "manifest.json").exists()


@pytest.mark.parametrize("target", [1, 0], ids=["the worker", "the server"])
def test_easgd_with_one_worker_stops_on_a_signal_to_any_rank_and_resumes_exactly(tmp_path,
                                                                                  target):
    rule = ["sync_rule=EASGD", "easgd.tau=2"]
    settings = TWO_EPOCHS + rule + [f"log.dir={tmp_path / 'run'}"]
    whole, _ = run_rule(tmp_path / "whole", 2, TWO_EPOCHS + rule + [f"log.dir={tmp_path / 'w'}"])
    at = "1:70:SIGTERM" if target == 1 else "0:20:SIGTERM"     # a server: its 20th message
    done = stopped_run(tmp_path, 2, settings, at)
    assert done.returncode == 143, done.stdout + done.stderr
    step = int(re.search(r"stopped by SIGTERM after step (\d+) of 120", done.stdout).group(1))
    assert 0 < step < 120 and (step == 70 or target == 0)      # one worker: 60 steps an epoch
    rest, _ = run_rule(tmp_path / "rest", 2, settings + ["resume=auto"])
    np.testing.assert_array_equal(rest[0], whole[0])              # the center
    np.testing.assert_array_equal(rest[1], whole[1])              # the worker
    assert processes_with(tmp_path) == []


def test_asynchronous_workers_stop_together_through_the_first_worker(tmp_path):
    """Gossip over 3 workers: a SIGTERM to the last worker reaches the first, which has every
    worker stop; each writes its part of one checkpoint, named by the first worker's step."""
    settings = TWO_EPOCHS + ["sync_rule=GOSSIP", "gossip.p=0.5", f"log.dir={tmp_path / 'run'}"]
    done = stopped_run(tmp_path, 3, settings, "2:25:SIGTERM")
    assert done.returncode == 143, done.stdout + done.stderr
    step = int(re.search(r"stopped by SIGTERM after step \d+ of 40 \(epoch \d\); checkpoint "
                         r"\S+step-(\d+);", done.stdout).group(1))
    folder = tmp_path / "run" / "checkpoints" / f"step-{step:08d}"
    assert sorted(p.name for p in folder.iterdir()) == \
        ["manifest.json", "rank0.npz", "rank1.npz", "rank2.npz"]
    rest, info = run_rule(tmp_path / "rest", 3, settings + ["resume=auto"])
    assert info[0]["top1"] is not None and all(np.isfinite(p).all() for p in rest)


def test_a_second_signal_during_the_checkpoint_leaves_the_previous_one_whole(tmp_path):
    """The first SIGTERM asks for the stop; a second one while its checkpoint is written ends
    the process at once (the handlers are back to the default): the stop's checkpoint has no
    manifest, and resuming takes the one before it."""
    settings = TWO_EPOCHS + [f"log.dir={tmp_path / 'run'}"]
    args = [ROOT / "tests" / "sync" / "save_params.py", tmp_path / "stopped"]
    for s in COMMON + settings:
        args += ["--set", s]
    done = run_mpi(1, args + ["--signal", "0:70:SIGTERM", "--signal-saving", "0:SIGTERM"],
                   timeout=120)                               # one rank: 60 steps an epoch
    assert done.returncode != 0
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "step-00000070" / "rank0.npz.tmp").exists()    # cut off there
    assert not (checkpoints / "step-00000070" / "manifest.json").exists()
    assert (checkpoints / "step-00000060" / "manifest.json").exists()
    whole, _ = run_rule(tmp_path / "whole", 1, TWO_EPOCHS + [f"log.dir={tmp_path / 'w'}"])
    rest, _ = run_rule(tmp_path / "rest", 1, settings + ["resume=auto"])
    np.testing.assert_array_equal(rest[0], whole[0])


def launcher(tmp_path, run_dir, *extra):
    """run/run_bsp.sh 2 on the tiny job, its output piped, in a process group of its own."""
    sets = COMMON + ["batch_size=8", "epochs=4", "print_every=5", f"log.dir={run_dir}",
                     "log.export=true"]
    command = [str(ROOT / "run" / "run_bsp.sh"), "2",
               *[a for s in sets for a in ("--set", s)], *extra]
    env = dict(mpi_env(), PT_LAUNCH="")
    env.pop("PT_LAUNCH")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=tmp_path, start_new_session=True)


def signal_after(process, text, signals, pause=0.0):
    """Send ``signals`` to ``process`` once a line holding ``text`` was printed; its output."""
    lines, sent = [], False
    deadline = time.monotonic() + 120
    for line in process.stdout:
        lines.append(line)
        if not sent and text in line:
            for number in signals:
                process.send_signal(number)
                time.sleep(pause)
            sent = True
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the launcher did not end in 120 s:\n" + "".join(lines))
    process.wait(timeout=60)
    return "".join(lines)


def test_ctrl_c_to_the_launcher_saves_says_how_to_resume_and_the_command_resumes(tmp_path):
    mpiexec()
    whole = launcher(tmp_path, tmp_path / "whole")
    assert signal_after(whole, "never printed", []) and whole.returncode == 0
    stopped = launcher(tmp_path, tmp_path / "run")
    output = signal_after(stopped, "step 25/", [signal.SIGINT])
    assert stopped.returncode == 130, output
    assert "launcher: SIGINT: every rank stops at the next step boundary" in output
    line = re.search(r"stopped by SIGINT after step (\d+) of 120 .*resume with: (.*)", output)
    assert line and 25 <= int(line.group(1)) < 120, output
    command = shlex.split(line.group(2))
    assert command[:2] == [str(ROOT / "run" / "run_bsp.sh"), "2"]
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=120,
                             env=mpi_env(), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from {tmp_path / 'run'}/checkpoints/step-" in resumed.stdout
    import hickle
    ours = hickle.load(str(tmp_path / "run" / "weights.hkl"))["params"]
    np.testing.assert_array_equal(ours, hickle.load(str(tmp_path / "whole" / "weights.hkl"))
                                  ["params"])
    assert processes_with(tmp_path) == []


@pytest.mark.parametrize("first, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_second_signal_to_the_launcher_ends_the_job_at_once(tmp_path, first, status):
    mpiexec()
    process = launcher(tmp_path, tmp_path / "run")
    tick = time.monotonic()
    output = signal_after(process, "step 25/", [first, first], pause=0.05)
    assert process.returncode == status, output
    assert "again: ending the job now, without a checkpoint" in output
    assert time.monotonic() - tick < 60
    time.sleep(1)
    assert processes_with(tmp_path) == []


def test_the_handlers_record_the_first_signal_and_then_give_the_default_back():
    stop = StopSignals().install()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)              # what a launcher relays a Ctrl-C as
        assert (stop.code, stop.name, stop.received) == (130, "SIGINT", "SIGUSR2")
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        os.kill(os.getpid(), signal.SIGUSR1)              # a later relay changes nothing
        assert stop.code == 130
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_resume_command_keeps_the_launcher_and_replaces_its_folder_and_resume():
    launched = "./run/run_bsp.sh 2 config.yaml --set log.dir=old --set resume=foo --set epochs=2"
    assert resume_command("runs/a b", launcher=launched) == \
        "./run/run_bsp.sh 2 config.yaml --set epochs=2 --set 'log.dir=runs/a b' " \
        "--set resume=auto"
    assert resume_command("r", argv=["c.yaml", "--set", "x=1"], ranks=3) == \
        "mpiexec -n 3 python3 -m engine.train c.yaml --set x=1 --set log.dir=r --set resume=auto"
    assert resume_command("r", argv=[]) == "python3 -m engine.train --set log.dir=r " \
                                            "--set resume=auto"
