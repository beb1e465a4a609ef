"""Learning-rate policies as functions of training progress t (fractional epochs in the config;
any unit works if ``t``, ``total``, ``step_size`` and ``warmup`` share it, e.g. iterations).

With base rate lr and total length T:

- ``constant``: lr
- ``step``:     lr * gamma ^ floor(t / step_size)                (Caffe "step")
- ``poly``:     lr * (1 - t/T) ^ power, 0 for t >= T              (Caffe "poly")
- ``cosine``:   final + (lr - final) * (1 + cos(pi * t/T)) / 2, final for t >= T
                (Loshchilov & Hutter 2017, without restarts)

Linear warm-up (Goyal et al. 2017) composes with each: for t < W (``warmup_epochs``) the rate goes in a
straight line from ``warmup_start * lr`` at t = 0 to the policy's own value at t = W, and from W
on it is the policy's value. The policy is not shifted by the warm-up: T counts from t = 0.

A ``Schedule`` owns the run's learning rate: the optimizers take its value at every step. Its
keyword defaults are the config's (``core/config.py`` reads them from here).
"""
import inspect
import math
import numbers

from core.registry import POLICIES

for _policy in ("constant", "step", "poly", "cosine"):
    POLICIES.register(_policy)(_policy)


def _check(name, value, low=0.0, low_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not math.isfinite(value) or value < low or (low_open and value == low):
        bound = ">" if low_open else ">="
        raise ValueError(f"lr_schedule.{name} must be a finite number {bound} {low}, "
                         f"got {value!r}")
    return float(value)


class Schedule:
    """``lr_at(t)`` (also ``schedule(t)``): the learning rate at progress ``t``."""

    def __init__(self, policy, lr, total=None, *, step_size=30, gamma=0.1, power=0.5,
                 final_lr=0.0, warmup_epochs=0, warmup_start=0.1):
        if policy not in POLICIES:
            raise ValueError(f"lr_schedule.policy: {policy!r} is not one of {', '.join(POLICIES)}")
        self.policy = policy
        self.lr = _check("lr", lr, low_open=True)
        self.total = None if total is None else _check("total", total, low_open=True)
        if policy in ("poly", "cosine") and self.total is None:
            raise ValueError(f"lr_schedule.policy {policy!r} needs the total length (epochs)")
        self.step_size = _check("step_size", step_size, low_open=True)
        self.gamma = _check("gamma", gamma, low_open=True)
        self.power = _check("power", power, low_open=True)
        self.final_lr = _check("final_lr", final_lr)
        self.warmup = _check("warmup_epochs", warmup_epochs)
        self.warmup_start = _check("warmup_start", warmup_start)

    def base(self, t):
        """The policy's value at ``t``, without warm-up."""
        if self.policy == "constant":
            return self.lr
        if self.policy == "step":
            # the tolerance keeps t = k * step_size computed in floating point on step k
            return self.lr * self.gamma ** math.floor(t / self.step_size + 1e-9)
        frac = min(max(t / self.total, 0.0), 1.0)
        if self.policy == "poly":
            return self.lr * (1.0 - frac) ** self.power
        return self.final_lr + (self.lr - self.final_lr) * (1.0 + math.cos(math.pi * frac)) / 2

    def lr_at(self, t):
        """The learning rate at progress ``t`` (fractional epochs in the config; t < 0 is 0)."""
        t = max(float(t), 0.0)
        if t < self.warmup:
            start = self.warmup_start * self.lr
            return start + (self.base(self.warmup) - start) * t / self.warmup
        return float(self.base(t))

    __call__ = lr_at

    def __repr__(self):
        return (f"Schedule({self.policy!r}, lr={self.lr}, total={self.total}, "
                f"warmup={self.warmup})")


DEFAULTS = {name: p.default for name, p in inspect.signature(Schedule).parameters.items()
            if p.kind is p.KEYWORD_ONLY}


def build_schedule(section, lr, total):
    """A ``Schedule`` from a config section, e.g. ``{policy: cosine, warmup_epochs: 1,
    final_lr: 0.0}``, the base ``lr`` (optimizer.lr) and the ``total`` length (epochs); keys the
    policy does not use are ignored, missing ones take the defaults."""
    section = dict(section)
    unknown = set(section) - set(DEFAULTS) - {"policy"}
    if unknown:
        raise ValueError(f"lr_schedule: unknown keys {sorted(unknown)}; allowed: "
                         f"{sorted(DEFAULTS) + ['policy']}")
    return Schedule(section.pop("policy", "constant"), lr, total=total, **section)
