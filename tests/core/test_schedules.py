import math

import pytest

from core.schedules import Schedule, build_schedule


def test_constant():
    s = Schedule("constant", 0.1)
    assert [s.lr_at(t) for t in (0, 0.5, 100)] == [0.1, 0.1, 0.1]


def test_step():
    s = Schedule("step", 0.1, total=90, step_size=30, gamma=0.1)
    for t, want in [(0, 0.1), (29.99, 0.1), (30, 0.01), (59.5, 0.01), (60, 0.001), (90, 1e-4)]:
        assert s.lr_at(t) == pytest.approx(want, rel=1e-12), t


def test_step_boundary_computed_in_floating_point():
    s = Schedule("step", 1.0, step_size=0.1, gamma=0.5)
    assert s.lr_at(0.7) == pytest.approx(0.5 ** 7)   # 0.7 / 0.1 = 6.999999999999999


def test_poly():
    s = Schedule("poly", 0.2, total=10, power=2.0)
    for t, want in [(0, 0.2), (5, 0.05), (7.5, 0.2 * 0.25 ** 2), (10, 0.0), (12, 0.0)]:
        assert s.lr_at(t) == pytest.approx(want, rel=1e-12, abs=1e-15), t
    assert Schedule("poly", 0.2, total=10, power=0.5).lr_at(7.5) == pytest.approx(0.1)


def test_cosine():
    s = Schedule("cosine", 1.0, total=8, final_lr=0.2)
    for t, want in [(0, 1.0), (2, 0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2), (4, 0.6),
                    (8, 0.2), (20, 0.2)]:
        assert s.lr_at(t) == pytest.approx(want, rel=1e-12), t


@pytest.mark.parametrize("policy", ["constant", "step", "poly", "cosine"])
def test_warmup_is_linear_to_the_policy_value(policy):
    s = Schedule(policy, 0.4, total=10, step_size=1.5, gamma=0.5, power=1.0, final_lr=0.0,
                 warmup_epochs=2, warmup_start=0.25)
    plain = Schedule(policy, 0.4, total=10, step_size=1.5, gamma=0.5, power=1.0, final_lr=0.0,
                     warmup_epochs=0)
    start, end = 0.25 * 0.4, plain.lr_at(2)
    assert s.lr_at(0) == pytest.approx(start)
    assert s.lr_at(0.5) == pytest.approx(start + (end - start) * 0.25)
    assert s.lr_at(1.5) == pytest.approx(start + (end - start) * 0.75)
    for t in (2, 3.3, 9, 11):
        assert s.lr_at(t) == pytest.approx(plain.lr_at(t)), t


def test_warmup_from_zero_and_negative_time():
    s = Schedule("constant", 0.1, warmup_epochs=4, warmup_start=0.0)
    assert s.lr_at(-1) == 0.0
    assert s(1) == pytest.approx(0.025)


def test_build_schedule_from_config_section():
    cfg = {"policy": "cosine", "step_size": 30, "gamma": 0.1, "power": 0.5, "final_lr": 0.001,
           "warmup_epochs": 1, "warmup_start": 0.1}
    s = build_schedule(cfg, 0.05, 20)
    assert s.lr_at(0) == pytest.approx(0.005)
    assert s.lr_at(20) == pytest.approx(0.001)
    assert s.lr_at(10) == pytest.approx(0.001 + 0.049 / 2)
    assert build_schedule({"policy": "step", "step_size": 2}, 1.0, 5).lr_at(4) == \
        pytest.approx(0.01)
    assert build_schedule({}, 0.3, 5).lr_at(4) == 0.3
    with pytest.raises(ValueError, match="warmup"):
        build_schedule({"policy": "step", "warmup": 1}, 1.0, 5)


@pytest.mark.parametrize("kwargs,match", [
    ({"policy": "exp"}, "policy"), ({"policy": "cosine"}, "total"),
    ({"policy": "step", "step_size": 0}, "step_size"),
    ({"policy": "step", "gamma": -1}, "gamma"),
    ({"policy": "constant", "warmup_epochs": -1}, "warmup")])
def test_rejects_bad_parameters(kwargs, match):
    policy = kwargs.pop("policy")
    with pytest.raises(ValueError, match=match):
        Schedule(policy, 0.1, **kwargs)


@pytest.mark.parametrize("lr", [0.0, -0.1, True, float("nan")])
def test_the_learning_rate_is_checked_once_by_its_owner(lr):
    with pytest.raises(ValueError, match=r"lr_schedule.lr must be a finite number > 0"):
        Schedule("constant", lr)
