"""Optimizers that update a model's flat 1-D ``params`` buffer from its flat ``grads`` buffer.

Each ``step(params, grads, lr)`` is a few in-place ufunc calls (``out=``) over the whole
buffer; state (momentum velocity, Adagrad's sum of squares) and one or two scratch buffers are
allocated on the first step and reused, so a step allocates nothing afterwards. ``grads`` is only
read. Works on NumPy or CuPy buffers alike (``xp`` comes from ``params``). The learning rate
is the schedule's (``core/schedules.py``, its one owner), given to every step.

Equations, with g = grad + weight_decay * p (L2 regularization folded into the gradient):

- SGD (PyTorch convention, lr outside the velocity, so changing lr does not rescale v)::

      v = mu * v + g
      p = p - lr * v                 (heavy ball)
      p = p - lr * (g + mu * v)      (nesterov, Sutskever et al. 2013 in this form)

  With mu = 0 there is no velocity: p = p - lr * g.
- Adagrad (Duchi, Hazan, Singer 2011)::

      s = s + g^2
      p = p - lr * g / (sqrt(s) + eps)
"""
import inspect
import math

import numpy as np

from core.registry import OPTIMIZERS
from layers import backend, cuda, parallel
from layers.backend import array_module

BLOCK = 1 << 16      # CPU: elements updated at a time, so that a block's operands stay in cache


def _number(name, value, low, low_open=False, high=None):
    """``value`` as a float, checked to lie in [low, high) (or (low, high) if low_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < low or (low_open and value == low) or \
            (high is not None and value >= high):
        interval = ("(" if low_open else "[") + f"{low}, " + (f"{high})" if high is not None
                                                               else "inf)")
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


class Optimizer:
    """Base class: flat-buffer checks, state buffers and checkpoints.

    Subclasses set ``name`` and ``buffer_names`` (the persistent per-element state) and
    implement ``_update(params, grads, lr, state, scratch)`` on a block of the buffers
    (``state``: the state buffers' blocks by name; ``scratch(key)``: a buffer like the block)
    and, for the GPU, ``_kernel(params, grads, lr, state)`` (True when it did the update). On
    the CPU the buffer is taken in blocks of ``BLOCK`` elements, split over the layers'
    worker threads: every equation of a block runs while its operands are in cache.
    """

    name = None
    buffer_names = ()

    def __init__(self, weight_decay=0.0):
        self.weight_decay = _number("weight_decay", weight_decay, 0.0)
        self.steps = 0
        self._state = {}    # name -> array like params, checkpointed
        self._scratch = {}  # name -> array like params, reused across steps

    def hyperparameters(self):
        """The constructor arguments, as a dict."""
        return {"weight_decay": self.weight_decay}

    def step(self, params, grads, lr):
        """Update ``params`` in place from ``grads`` at learning rate ``lr`` (the schedule's
        value for this step, checked there)."""
        if getattr(params, "ndim", None) != 1 or getattr(grads, "shape", None) != params.shape \
                or grads.dtype != params.dtype:
            raise ValueError(
                f"{type(self).__name__}.step: expected flat 1-D params and grads of the same "
                f"shape and dtype, got params {getattr(params, 'shape', type(params).__name__)} "
                f"{getattr(params, 'dtype', '')} and grads "
                f"{getattr(grads, 'shape', type(grads).__name__)} {getattr(grads, 'dtype', '')}")
        xp = array_module(params)
        state = {key: self._state_buffer(key, params) for key in self.state_names()}
        if not (backend.uses_kernels(xp) and self._kernel(params, grads, lr, state)):
            size = BLOCK if xp is np else params.size

            def run(start, stop, worker):
                for a in range(start, stop, size):
                    b = min(a + size, stop)
                    self._update(params[a:b], grads[a:b], lr,
                                 {key: buf[a:b] for key, buf in state.items()},
                                 lambda key, n=b - a: self._scratch_block(key, worker, n,
                                                                          params, size))
            parallel.split_work(xp, params.size, run, params.nbytes)
        self.steps += 1

    def state_names(self):
        """The state buffers this optimizer's update uses (all of ``buffer_names``)."""
        return self.buffer_names

    def _kernel(self, params, grads, lr, state):
        return False

    # -- buffers ----------------------------------------------------------------------------
    def _state_buffer(self, key, params):
        """Persistent state like ``params``: zeros on first use; a loaded checkpoint's array is
        moved to the parameters' device and dtype."""
        buf = self._state.get(key)
        xp = array_module(params)
        if buf is not None and buf.shape != params.shape:
            raise ValueError(f"{type(self).__name__}: state '{key}' has shape {buf.shape}, "
                             f"the parameters have shape {params.shape}")
        if buf is None:
            buf = xp.zeros_like(params)
        elif buf.dtype != params.dtype or array_module(buf) is not xp:
            buf = xp.asarray(buf, dtype=params.dtype)
        self._state[key] = buf
        return buf

    def _scratch_block(self, key, worker, n, params, size):
        """Worker ``worker``'s scratch ``key``: the first ``n`` of ``size`` elements kept
        across steps, of ``params``' dtype and array module."""
        buf = self._scratch.get((key, worker))
        xp = array_module(params)
        if buf is None or buf.size != size or buf.dtype != params.dtype or \
                array_module(buf) is not xp:
            buf = self._scratch[(key, worker)] = xp.empty(size, params.dtype)
        return buf[:n]

    def _decayed_grad(self, params, grads, scratch):
        """g = grads + weight_decay * params, in the scratch buffer 'g' (``grads`` if wd = 0)."""
        if not self.weight_decay:
            return grads
        xp = array_module(params)
        g = scratch("g")
        xp.multiply(params, self.weight_decay, out=g)
        xp.add(g, grads, out=g)
        return g

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self):
        """``{'name', 'steps', 'hyperparameters', 'buffers': {key: NumPy copy}}``."""
        return {"name": self.name, "steps": self.steps,
                "hyperparameters": self.hyperparameters(),
                "buffers": {key: np.array(backend.to_host(buf), copy=True)
                            for key, buf in self._state.items()}}

    def load_state_dict(self, state):
        """Restore the step count and state buffers saved by ``state_dict``.

        Hyperparameters are not restored: those of this optimizer (from the config) apply.
        The buffers move to the parameters' device and dtype on the next step.
        """
        if state.get("name") != self.name:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state is for optimizer "
                             f"{state.get('name')!r}, not {self.name!r}")
        unknown = set(state.get("buffers", {})) - set(self.buffer_names)
        if unknown:
            raise ValueError(f"{type(self).__name__}.load_state_dict: unknown buffers "
                             f"{sorted(unknown)}; allowed: {list(self.buffer_names)}")
        self.steps = int(state.get("steps", 0))
        self._state = {key: np.array(buf, copy=True)
                       for key, buf in state.get("buffers", {}).items()}


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """SGD with optional (Nesterov) momentum and L2 weight decay::

        g = grad + weight_decay * p
        v = momentum * v + g
        p -= lr * v                       (nesterov=False)
        p -= lr * (g + momentum * v)      (nesterov=True)
    """

    name = "sgd"
    buffer_names = ("velocity",)

    def __init__(self, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(weight_decay)
        self.momentum = _number("momentum", momentum, 0.0, high=1.0)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
        if nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.nesterov = bool(nesterov)

    def hyperparameters(self):
        return dict(super().hyperparameters(), momentum=self.momentum, nesterov=self.nesterov)

    def state_names(self):
        return self.buffer_names if self.momentum > 0.0 else ()

    def _kernel(self, params, grads, lr, state):
        if self.momentum == 0.0:
            return False                          # the element-wise route below
        cuda.launch("elementwise", "sgd_update", params.dtype, params.size,
                    (params, grads, state["velocity"], lr, self.momentum, self.weight_decay,
                     int(self.nesterov), params.size))
        return True

    def _update(self, params, grads, lr, state, scratch):
        xp = array_module(params)
        mu = self.momentum
        g = self._decayed_grad(params, grads, scratch)
        tmp = g if g is not grads else scratch("g")
        if mu == 0.0:
            xp.multiply(g, lr, out=tmp)
            xp.subtract(params, tmp, out=params)
            return
        v = state["velocity"]
        xp.multiply(v, mu, out=v)
        xp.add(v, g, out=v)
        if self.nesterov:
            xp.multiply(g, lr, out=tmp)
            xp.subtract(params, tmp, out=params)
            xp.multiply(v, lr * mu, out=tmp)
        else:
            xp.multiply(v, lr, out=tmp)
        xp.subtract(params, tmp, out=params)


@OPTIMIZERS.register("adagrad")
class Adagrad(Optimizer):
    """Adagrad (Duchi et al. 2011) with L2 weight decay::

        g = grad + weight_decay * p
        s += g^2
        p -= lr * g / (sqrt(s) + eps)
    """

    name = "adagrad"
    buffer_names = ("sum_sq",)

    def __init__(self, eps=1e-10, weight_decay=0.0):
        super().__init__(weight_decay)
        self.eps = _number("eps", eps, 0.0, low_open=True)

    def hyperparameters(self):
        return dict(super().hyperparameters(), eps=self.eps)

    def _kernel(self, params, grads, lr, state):
        cuda.launch("elementwise", "adagrad_update", params.dtype, params.size,
                    (params, grads, state["sum_sq"], lr, self.eps, self.weight_decay,
                     params.size))
        return True

    def _update(self, params, grads, lr, state, scratch):
        xp = array_module(params)
        g = self._decayed_grad(params, grads, scratch)
        s = state["sum_sq"]
        tmp = scratch("tmp")
        xp.multiply(g, g, out=tmp)
        xp.add(s, tmp, out=s)
        xp.sqrt(s, out=tmp)
        xp.add(tmp, self.eps, out=tmp)
        xp.divide(g, tmp, out=tmp)
        xp.multiply(tmp, lr, out=tmp)
        xp.subtract(params, tmp, out=params)


def build_optimizer(section):
    """The optimizer a config section names, e.g. ``{name: sgd, lr: 0.05, momentum: 0.9,
    nesterov: false, weight_decay: 5e-4}``, with the keys its constructor takes (one section
    can switch optimizers by name: ``momentum`` is ignored by adagrad, ``eps`` by sgd; ``lr``
    belongs to the schedule)."""
    kind = OPTIMIZERS.get_or_raise(section.get("name"))
    known = {"name", "lr", "scale_lr"}.union(             # lr and its scaling: the schedule's
        *(inspect.signature(k).parameters for k in OPTIMIZERS.values()))
    unknown = set(section) - known
    if unknown:
        raise ValueError(f"optimizer: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
    taken = inspect.signature(kind).parameters
    return kind(**{key: value for key, value in section.items() if key in taken})
