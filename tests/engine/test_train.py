"""The training driver end to end: learning, NaN guard, config errors, exit codes."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from core.config import load_config
from core.errors import ConfigError
from engine.train import NonFiniteLoss, main, train

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model=mlp", "model_options={hidden: [32]}", "data.num_train=512", "data.num_val=256",
        "data.image_size=8", "data.channels=1", "data.noise=0.5", "batch_size=32", "epochs=3",
        "optimizer.lr=0.05", "print_every=1000", "threads=1"]


def test_mlp_learns_the_synthetic_classes(capsys):
    result = train(load_config(None, TINY))
    assert result["top1"] > 0.9          # chance is 0.1
    assert result["top5"] >= result["top1"]
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert "final: top1" in capsys.readouterr().out


def test_inception_small_trains_a_few_steps():
    cfg = load_config(None, ["model=inception_small", "model_options={width: 0.125}",
                             "data.image_size=28", "data.channels=1", "data.num_train=64",
                             "data.num_val=32", "batch_size=16", "max_steps=3",
                             "print_every=1", "threads=1"])
    result = train(cfg)
    assert result["step"] == 3 and np.isfinite(result["loss"])


@pytest.mark.parametrize("override, message", [
    ("epochs=0.001", "less than one step"),
    ("model_options={width: abc}", "model_options: model 'inception_small' cannot be built"),
    ("model_options={widht: 0.5}", "widht.*allowed.*width"),
])
def test_impossible_runs_stop_with_a_config_error(override, message):
    cfg = load_config(None, TINY + ["model=inception_small", "model_options={}", override])
    with pytest.raises(ConfigError, match=message):
        train(cfg)


def test_nonfinite_loss_stops_with_the_step_and_last_finite_loss():
    cfg = load_config(None, TINY + ["optimizer.lr=1e12", "optimizer.momentum=0"])
    with pytest.raises(NonFiniteLoss, match=r"at step \d+ .*last finite loss: \d"):
        train(cfg)


def test_a_loss_nonfinite_from_the_first_step_says_there_was_no_finite_loss(monkeypatch):
    from data.loader import Loader
    make = Loader._make

    def nan_batches(self, epoch, b, *rest):
        x, y = make(self, epoch, b, *rest)
        x[...] = np.nan
        return x, y
    monkeypatch.setattr(Loader, "_make", nan_batches)
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at step 1 \(epoch 1\); no finite "
                                            r"loss yet$"):
        train(load_config(None, TINY))


def test_skipped_nonfinite_batches_leave_batchnorm_statistics_finite(monkeypatch):
    from data.loader import Loader
    make = Loader._make

    def nan_in_first_training_batch(self, epoch, b, *rest):
        x, y = make(self, epoch, b, *rest)
        if self.train and b == 0:
            x[0, 0, 0, 0] = np.nan
        return x, y
    monkeypatch.setattr(Loader, "_make", nan_in_first_training_batch)
    cfg = load_config(None, ["model=inception_small", "model_options={width: 0.125}",
                             "data.image_size=28", "data.channels=1", "data.num_train=64",
                             "data.num_val=32", "batch_size=16", "epochs=2",
                             "on_nonfinite=skip", "threads=1"])
    result = train(cfg)
    assert result["skipped_steps"] == 2          # the first batch of each epoch
    assert np.isfinite(result["loss"])           # evaluation uses the running statistics


def test_rules_with_servers_need_more_ranks_than_servers():
    with pytest.raises(ConfigError, match="sync_rule: EASGD needs more than 1 ranks"):
        train(load_config(None, TINY + ["sync_rule=EASGD"]))


def test_main_reports_config_errors_before_any_work(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"modle": "mlp"}))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "modle" in err and "did you mean 'model'" in err


def test_main_names_a_missing_config_file(capsys):
    assert main(["/nonexistent/run.yaml"]) == 2
    assert "/nonexistent/run.yaml" in capsys.readouterr().err


def test_main_exit_status_for_a_diverging_run(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("print_every: 1000\n")
    args = [str(path)] + [a for item in TINY + ["optimizer.lr=1e12"] for a in ("--set", item)]
    assert main(args) == 1
    assert "training stopped: loss became" in capsys.readouterr().err


def test_default_config_is_valid():
    cfg = load_config(str(ROOT / "config.yaml"))
    assert cfg["sync_rule"] == "BSP" and cfg["model"] == "inception_small"


def colour_classes(root, per_class=24, size=12, seed=0):
    """An image folder of 3 classes told apart by their dominant colour, with noise."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 60, (size, size, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")


def test_a_prepared_image_folder_trains(tmp_path, capsys):
    from data.prepare import main as prepare
    colour_classes(tmp_path / "images")
    assert prepare(["imagefolder", str(tmp_path / "ds"), "--source", str(tmp_path / "images"),
                    "--size", "12", "--val-fraction", "0.25", "--batch-size", "16"]) == 0
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": "mlp", "model_options": {"hidden": [16]}, "batch_size": 9, "epochs": 4,
        "threads": 1, "print_every": 1000, "optimizer": {"lr": 0.05},
        "data": {"dataset": "prepared", "path": "ds", "crop": 10, "mirror": True}}))
    result = train(load_config(config))           # data.path is relative to the config file
    assert result["top1"] > 0.9                   # chance is 1/3
    assert "3 classes" in capsys.readouterr().out


def test_a_damaged_dataset_stops_before_training_with_the_file_named(tmp_path, capsys):
    from data.prepare import main as prepare
    colour_classes(tmp_path / "images", per_class=4)
    assert prepare(["imagefolder", str(tmp_path / "ds"), "--source", str(tmp_path / "images"),
                    "--size", "8"]) == 0
    np.save(tmp_path / "ds" / "img_mean.npy", np.zeros((3, 4, 4), np.float32))
    assert main([str(ROOT / "config.yaml"), "--set", f"data.path={tmp_path / 'ds'}"]) == 3
    err = capsys.readouterr().err
    assert "img_mean.npy: mean image has shape (3, 4, 4)" in err


def test_prepared_data_without_a_path_is_a_config_error():
    with pytest.raises(ConfigError, match="data.path: dataset 'prepared' needs"):
        load_config(None, ["data.dataset=prepared"])


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_non_finite_gradient_never_reaches_the_parameters(monkeypatch, policy):
    from core.model import Model
    backward, calls = Model.backward, []

    def nan_on_third_call(self, *args, **kwargs):
        dx = backward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            self.grads[5] = np.inf
        return dx
    monkeypatch.setattr(Model, "backward", nan_on_third_call)
    cfg = load_config(None, TINY + [f"on_nonfinite={policy}", "max_steps=6"])
    if policy == "stop":
        with pytest.raises(NonFiniteLoss, match="gradient became non-finite at step 3"):
            train(cfg)
        return
    result = train(cfg)
    assert result["skipped_steps"] == 1 and np.isfinite(result["model"].params).all()


def test_check_prints_the_resolved_configuration_or_its_problems(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("model: mlp\neasgd:\n  tau: 4\n")
    assert main([str(path), "--check", "--set", "seed=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"] == "mlp" and printed["seed"] == 7 and printed["easgd"]["tau"] == 4
    assert main([str(path), "--check", "--set", "seed=x"]) == 2
    assert "seed: expected int >= 0, got str 'x'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


ACCUMULATE = ["model=mlp", "model_options={hidden: [16]}", "dtype=float64", "data.num_train=256",
              "data.num_val=64", "data.image_size=6", "data.channels=2", "epochs=2",
              "optimizer.momentum=0.9", "print_every=1000", "threads=1", "log.export=false",
              "checkpoint.every_epochs=0"]


def test_accumulating_four_micro_batches_is_one_batch_four_times_larger(tmp_path, capsys):
    one = train(load_config(None, ACCUMULATE + ["batch_size=32", "optimizer.lr=0.2",
                                                f"log.dir={tmp_path / 'one'}"]))
    four = train(load_config(None, ACCUMULATE + ["batch_size=8", "accumulate=4",
                                                 "optimizer.lr=0.05", "optimizer.scale_lr=linear",
                                                 f"log.dir={tmp_path / 'four'}"]))
    out = capsys.readouterr().out
    assert "batch 8 per worker x 4 micro-batches a step, 16 steps; learning rate 0.05 x 4 = " \
           "0.2 (scale_lr linear, total batch 32)" in out
    np.testing.assert_allclose(four["model"].params, one["model"].params, rtol=1e-10,
                               atol=1e-12)
    assert np.abs(one["model"].params).max() > 0 and one["history"][-1]["step"] == 16


def test_scaling_the_learning_rate_needs_one_batch_over_the_workers():
    with pytest.raises(ConfigError, match="optimizer.scale_lr: linear scales the rate with the "
                                          "total batch of BSP's workers"):
        load_config(None, ["optimizer.scale_lr=linear", "sync_rule=EASGD"])


def test_the_gpu_s_lazy_steps_train_as_the_cpu_s_and_still_stop_on_a_nan(monkeypatch, tmp_path):
    """The step the GPU takes (the loss read only when shown, one finiteness check a step),
    run here on NumPy: the same parameters as the CPU's step, and a NaN still stops it."""
    from engine import epochs
    settings = TINY + ["epochs=1", "print_every=5", "log.export=false",
                       "checkpoint.every_epochs=0"]
    plain = train(load_config(None, settings + [f"log.dir={tmp_path / 'plain'}"]))
    monkeypatch.setattr(epochs, "reads_lazily", lambda run: True)
    lazy = train(load_config(None, settings + [f"log.dir={tmp_path / 'lazy'}"]))
    np.testing.assert_array_equal(lazy["model"].params, plain["model"].params)
    assert lazy["history"][-1]["train_loss"] == plain["history"][-1]["train_loss"]
    with pytest.raises(NonFiniteLoss, match=r"the loss or the gradient became non-finite at "
                                            r"step \d+"):
        train(load_config(None, settings + ["optimizer.lr=1e12", "optimizer.momentum=0",
                                            f"log.dir={tmp_path / 'nan'}"]))


def test_fractional_eval_every_validates_within_epochs_and_times_training_apart(monkeypatch):
    from engine import epochs
    ticks = iter(range(10 ** 6))                  # a clock that advances one second a call
    monkeypatch.setattr(epochs, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    result = train(load_config(None, TINY + ["epochs=2", "eval_every=0.25"]))
    history = result["history"]
    steps = [h["step"] for h in history]
    assert steps == [4, 8, 12, 16, 20, 24, 28, 32]   # 16 steps an epoch: every 4, then the end
    assert [h["epoch"] for h in history] == [1, 1, 1, 1, 2, 2, 2, 2]
    for before, after in zip(history, history[1:]):
        assert after["train_time"] > before["train_time"] and after["time"] > after["train_time"]
    validating = [h["time"] - h["train_time"] for h in history]
    assert validating == sorted(validating) and validating[0] > 0   # validations left out


@pytest.mark.parametrize("rank, factor, slept", [(0, 3.0, True), (None, 3.0, False)])
def test_a_slowed_rank_sleeps_factor_minus_one_times_each_step(monkeypatch, rank, factor,
                                                               slept):
    from engine import epochs
    naps, ticks = [], iter(range(10 ** 6))        # a clock that advances one second a call
    monkeypatch.setattr(epochs, "time", SimpleNamespace(        # the driver's clock only
        sleep=naps.append, perf_counter=lambda: float(next(ticks))))
    cfg = load_config(None, TINY + ["max_steps=5", f"slowdown.factor={factor}"] +
                      ([f"slowdown.rank={rank}"] if rank is not None else []))
    train(cfg)
    assert len(naps) == (5 if slept else 0)
    # (factor - 1) x the step's whole seconds on this clock: even, at least 2 s
    assert all(n >= 2 and n % (factor - 1) == 0 for n in naps), naps


def test_slowing_a_rank_the_job_does_not_have_is_refused():
    with pytest.raises(ConfigError, match=r"slowdown.rank: 1, but this job has 1 rank\(s\)"):
        train(load_config(None, TINY + ["slowdown.rank=1"]))
