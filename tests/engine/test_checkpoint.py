"""Checkpoints: exact BSP resume, keeping K, damaged files, changed setups, full disks."""
import json
from pathlib import Path

import numpy as np
import pytest

from engine.checkpoint import CheckpointError, export_weights, import_weights
from core.config import load_config
from core.models import build_model
from engine.train import main, train
from tests.mpi import ROOT, run_mpi
from tests.sync.helpers import COMMON, run_rule

TWO_EPOCHS = ["batch_size=8", "epochs=2", "lr_schedule.policy=cosine",
              "lr_schedule.warmup_epochs=0.5"]


@pytest.mark.parametrize("exchange", [
    [],                                                 # the mlp's gradient goes by Allreduce
    ["exchange.method=shared"],                         # the gradient in shared memory
    ["exchange.method=shared", "avg_freq=4"],           # the parameters in shared memory
])
def test_a_resumed_bsp_run_ends_with_the_parameters_of_an_uninterrupted_one(tmp_path, exchange):
    settings = TWO_EPOCHS + exchange
    whole, _ = run_rule(tmp_path / "whole", 2, settings + [f"log.dir={tmp_path / 'a'}"])
    run = f"log.dir={tmp_path / 'b'}"
    first, _ = run_rule(tmp_path / "first", 2, settings + [run, "max_steps=45"])
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == \
        ["step-00000030", "step-00000045"]             # end of epoch 1, and where it stopped
    rest, summaries = run_rule(tmp_path / "rest", 2, settings + [run, "resume=auto"])
    assert all(s["shared"] for s in summaries) == bool(exchange)
    assert np.abs(first[0] - whole[0]).max() > 1e-3     # it had really stopped early
    for params in rest:
        np.testing.assert_array_equal(params, whole[0])


def one_process(tmp_path, *extra):
    return load_config(None, COMMON + TWO_EPOCHS + [f"log.dir={tmp_path / 'run'}", *extra])


def test_only_the_last_k_checkpoints_are_kept(tmp_path):
    train(one_process(tmp_path, "epochs=4", "checkpoint.keep=2"))
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["step-00000180", "step-00000240"]


def test_a_corrupted_checkpoint_is_named_and_auto_falls_back(tmp_path, capsys):
    train(one_process(tmp_path, "epochs=3"))
    newest = tmp_path / "run" / "checkpoints" / "step-00000180" / "rank0.npz"
    newest.write_bytes(newest.read_bytes()[:1000])            # truncated
    result = train(one_process(tmp_path, "epochs=3", "resume=auto"))
    out = capsys.readouterr().out
    assert "step-00000180/rank0.npz: corrupted or truncated" in out
    assert "falling back to" in out and "step-00000120" in out
    assert result["resumed_from"].name == "step-00000120" and result["step"] == 180
    newest.write_bytes(newest.read_bytes()[:1000])            # rewritten by that run: again
    with pytest.raises(CheckpointError, match="rank0.npz: corrupted or truncated"):
        train(one_process(tmp_path, "epochs=3", f"resume={newest.parent}"))


def test_resuming_with_a_different_model_or_rule_says_what_differs(tmp_path, capsys):
    train(one_process(tmp_path, "max_steps=60"))
    config = tmp_path / "c.yaml"
    config.write_text("")
    sets = ["--set", f"log.dir={tmp_path / 'run'}", "--set", "model_options={hidden: [9]}"]
    for s in COMMON + TWO_EPOCHS:
        sets = ["--set", s] + sets
    assert main([str(config), *sets, "--resume"]) == 4
    err = capsys.readouterr().err
    assert "what differs" in err and "model_options" in err and "parameters" in err
    assert main([str(config), *sets[:-2], "--set", "optimizer.lr=0.01", "--resume"]) == 0


def test_a_full_disk_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch, capsys):
    train(one_process(tmp_path, "max_steps=60"))
    import engine.checkpoint as checkpoint

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint.np, "savez", no_space)
    train(one_process(tmp_path, "epochs=3", "resume=auto"))
    out = capsys.readouterr().out
    assert "checkpoint at step 120 not written (the previous one is intact)" in out
    assert "No space left on device" in out
    folders = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [p.name for p in folders if (p / "manifest.json").exists()] == ["step-00000060"]
    assert not list((tmp_path / "run" / "checkpoints").rglob("*.tmp"))
    manifest = json.loads((folders[0] / "manifest.json").read_text())
    assert manifest["step"] == 60 and manifest["model"] == "mlp"


def test_resume_auto_without_a_run_folder_is_a_config_error():
    with pytest.raises(Exception, match="resume: auto continues the run in log.dir"):
        load_config(None, ["resume=auto"])


def test_weights_export_and_load_alone(tmp_path):
    options = {"in_channels": 2, "num_classes": 10, "image_size": 6, "hidden": [16]}
    trained = build_model("mlp", options, "float32", 1)
    trained.params[...] = np.random.default_rng(0).standard_normal(trained.num_params)
    export_weights(tmp_path / "w.hkl", trained)
    fresh = build_model("mlp", options, "float32", 2)
    import_weights(tmp_path / "w.hkl", fresh)
    np.testing.assert_array_equal(fresh.params, trained.params)
    other = build_model("mlp", dict(options, hidden=[8]), "float32", 2)
    with pytest.raises(CheckpointError, match="w.hkl: weights of 'mlp' with"):
        import_weights(tmp_path / "w.hkl", other)


def test_checkpoints_of_rules_with_servers_include_the_servers(tmp_path):
    run_rule(tmp_path, 3, ["sync_rule=DOWNPOUR", "downpour.servers=1", "batch_size=8",
                           "epochs=1", f"log.dir={tmp_path / 'run'}"])
    (folder,) = (tmp_path / "run" / "checkpoints").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "rank0.npz",
                                                        "rank1.npz", "rank2.npz"]
    with np.load(folder / "rank0.npz") as server:
        # pushes per worker, written when worker 0 asked, after its own 30 (MPI keeps one
        # sender's messages in order); worker 1 may not have pushed all of its 30 by then
        assert server["rule/pushes"][0] == 30 and server["rule/pushes"][1] <= 30
        arrays = {key: server[key] for key in server.files}
    # a checkpoint of the older format (one push count in all) is refused on every rank,
    # not broadcast into the per-worker counts
    arrays["rule/pushes"] = arrays["rule/pushes"].sum(keepdims=True)
    np.savez(folder / "rank0.npz", **arrays)
    args = ["-m", "engine.train", ROOT / "config.yaml"]
    for setting in COMMON + ["sync_rule=DOWNPOUR", "batch_size=8", "epochs=2",
                             f"log.dir={tmp_path / 'run'}", "resume=auto"]:
        args += ["--set", setting]
    done = run_mpi(3, args, timeout=60)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "cannot restore rank 0: rule/pushes has shape (1,), not one count per worker (2,)" \
        in done.stderr


@pytest.mark.parametrize("settings, expected", [
    (["checkpoint.every_epochs=0", "checkpoint.every_minutes=1e-6"],
     ["step-00000060", "step-00000120"]),
    (["checkpoint.every_epochs=0"], []),
    (["checkpoint.every_epochs=2", "epochs=3"], ["step-00000120", "step-00000180"]),
])
def test_when_checkpoints_are_written(tmp_path, settings, expected):
    train(one_process(tmp_path, *settings))
    root = tmp_path / "run" / "checkpoints"
    written = sorted(p.name for p in root.iterdir()) if root.exists() else []
    assert written == expected


FIXTURE = Path(__file__).with_name("data") / "checkpoint-2026-12-06"


def test_a_checkpoint_written_before_the_redesign_resumes_to_the_same_parameters(tmp_path):
    """Written on 2026-12-06 by the engine before its modules moved (inception_small at width
    0.1, step 4 of 8); resumed here, the run must end where it ended then."""
    cfg = load_config(None, [
        "model=inception_small", "model_options={width: 0.1}", "data.dataset=synthetic",
        "data.num_train=64", "data.num_val=32", "data.image_size=8", "data.channels=1",
        "batch_size=16", "epochs=2", f"log.dir={tmp_path}", "log.export=false", "threads=1",
        "seed=5", "optimizer.nesterov=true", f"resume={FIXTURE}", "checkpoint.every_epochs=0"])
    final = train(cfg)
    assert final["resumed_from"] == FIXTURE
    np.testing.assert_allclose(final["model"].params,
                               np.load(FIXTURE / "params-after-epoch-2.npy"), rtol=1e-5,
                               atol=1e-7)
