"""The layer protocol, the flat parameter buffers and shape/dtype checks.

A layer declares its parameters (``param_shapes`` and ``initializers``); ``bind_flat`` allocates
one contiguous ``params`` and one ``grads`` buffer for a list of layers and makes every layer's
``params[name]`` and ``grads[name]`` a view into them, in a fixed order (depth-first over the
layer tree, then parameter declaration order). ``backward`` overwrites ``grads`` in place.

State that must not be averaged across workers (BatchNorm running statistics) lives in
``layer.state``, outside the flat buffers. What a forward keeps for its backward goes through
``Layer.save`` and ``Layer.saved`` (one object per layer: a route's named tuple, an array).
"""
import numpy as np

from layers import backend
from layers.backend import array_module

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Layer:
    """Base class. Subclasses define ``forward(x, train=True) -> y`` and ``backward(dy) -> dx``.

    ``forward`` keeps what backward needs with ``self.save(state)`` (one object: a route's
    named tuple, an array, ...; None when there is nothing to keep, as after most
    ``train=False`` passes). ``backward`` takes it back with ``self.saved()``, which raises a
    RuntimeError naming the layer when no forward saved anything.

    ``backward(dy)`` overwrites the layer's gradients (``grads``) in place, never accumulating,
    and returns the input gradient dx. It may overwrite ``dy``'s memory (dx may even be ``dy``
    itself): callers must not reuse ``dy`` after passing it in. A layer whose input is the
    network's own (nothing reads its dx) may be told ``needs_input_grad = False``; the
    convolution and the fully connected layer then return None without computing dx.
    """

    needs_input_grad = True

    def __init__(self):
        self.param_shapes = {}   # name -> shape, declared by the layer
        self.initializers = {}   # name -> callable(rng, array) filling it in place
        self.params = {}         # name -> view into the model's flat params buffer
        self.grads = {}          # name -> view into the model's flat grads buffer
        self.state = {}          # name -> array kept outside the flat buffers
        self.forward_flops = 0   # 2 x multiply-adds of the last forward (GEMM layers set it)
        self._work = {}
        self._saved = None       # what the last forward kept for backward (``save``)

    @property
    def name(self):
        return type(self).__name__

    def children(self):
        """Sub-layers of a container, in parameter order; empty for a leaf."""
        return []

    # -- helpers for subclasses -------------------------------------------------------------
    def save(self, state):
        """Keep ``state`` for the next ``backward`` (None: keep nothing)."""
        self._saved = state

    def saved(self, kind=None):
        """What the last forward saved; a RuntimeError naming the layer if it saved nothing, or
        (with ``kind``, a route's state class) something other than a ``kind``."""
        state = getattr(self, "_saved", None)
        if state is None:
            raise RuntimeError(f"{self.name}: backward needs a forward(x, train=True) first")
        if kind is not None and not isinstance(state, kind):
            raise RuntimeError(f"{self.name}: backward expected the state that "
                               f"{kind.__module__} saves, got {type(state).__module__}."
                               f"{type(state).__qualname__} (forward ran on another route)")
        return state

    def workspace(self, key, shape, dtype, xp=np):
        """A buffer kept across calls: reused while ``shape`` and ``dtype`` stay the same."""
        buf = self._work.get(key)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype or \
                array_module(buf) is not xp:
            buf = xp.empty(shape, dtype=dtype)
            self._work[key] = buf
        return buf

    def check_input(self, x, ndim, channels=None, axis=1):
        """Raise ValueError naming the layer, the expected and the given shape/dtype."""
        expected = ["N"] + ["*"] * (ndim - 1)
        if channels is not None:
            expected[axis] = str(channels)
        want = "(" + ", ".join(expected) + ")"
        if getattr(x, "ndim", None) != ndim or (channels is not None and x.shape[axis] != channels):
            raise ValueError(f"{self.name}: expected input of shape {want}, "
                             f"got {getattr(x, 'shape', type(x).__name__)}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{self.name}: expected a float32 or float64 input of shape {want}, "
                            f"got dtype {x.dtype}")
        if self.params:
            pdtype = next(iter(self.params.values())).dtype
            if x.dtype != pdtype:
                raise TypeError(f"{self.name}: input dtype {x.dtype} does not match the "
                                f"parameters' dtype {pdtype} (input shape {x.shape})")

    def build(self, dtype=np.float32, seed=0, xp=np):
        """Give a standalone layer (or container) its own flat buffers; returns ``self``."""
        bind_flat([self], dtype, np.random.default_rng(seed), xp)
        return self



class RoutedLayer(Layer):
    """A layer with two routes, one picked per call by ``backend.uses_kernels``: ``cpu_route``
    (NumPy) and ``gpu_route`` (the CUDA kernels), modules with ``forward(layer, x, train) ->
    (y, saved)``, ``backward(layer, saved, dy) -> dx`` and their ``Saved`` type. Subclasses set
    the two and check their input in ``check``."""

    cpu_route = gpu_route = None

    def route(self, xp):
        """The route module for arrays of ``xp``."""
        return self.gpu_route if backend.uses_kernels(xp) else self.cpu_route

    def check(self, x):
        """Raise an error naming the layer for an input it cannot take (here: not 4-D)."""
        self.check_input(x, 4)

    def forward(self, x, train=True):
        self.check(x)
        self.save(None)
        y, saved = self.route(array_module(x)).forward(self, x, train)
        self.save(saved)
        return y

    def backward(self, dy):
        route = self.route(array_module(dy))
        return route.backward(self, self.saved(route.Saved), dy)

def leaves(layers):
    """Depth-first leaf layers of ``layers`` (containers are expanded), in parameter order."""
    for layer in layers:
        kids = layer.children()
        if kids:
            yield from leaves(kids)
        else:
            yield layer


def param_slots(layers):
    """``[(layer, name, shape, offset)]`` for every parameter of ``layers``, in buffer order."""
    slots, offset = [], 0
    for layer in leaves(layers):
        for name, shape in layer.param_shapes.items():
            slots.append((layer, name, tuple(shape), offset))
            offset += int(np.prod(shape))
    return slots, offset


def bind_flat(layers, dtype, rng, xp=np, allocate=None):
    """Allocate the flat ``params``/``grads`` buffers for ``layers`` and bind every layer to them.

    ``allocate(name, count, dtype, xp)`` makes each buffer ('params', then 'grads'; default:
    ``xp.empty``), so that the memory is where it will be used from the start. Parameters are
    initialized (in float64 on the host, then cast) with each layer's initializer, drawing
    from ``rng`` in buffer order, so the result depends only on the seed.
    """
    slots, total = param_slots(layers)
    host = np.empty(total, dtype=np.float64)
    for layer, name, shape, offset in slots:
        view = host[offset:offset + int(np.prod(shape))].reshape(shape)
        layer.initializers[name](rng, view)
    allocate = allocate or (lambda name, count, dtype_, xp_: xp_.empty(count, dtype_))
    params = allocate("params", total, dtype, xp)
    params[...] = xp.asarray(host.astype(dtype))
    grads = allocate("grads", total, dtype, xp)
    grads[...] = 0
    bind_views(layers, params, grads)
    for layer in leaves(layers):
        for key, value in list(layer.state.items()):
            layer.state[key] = xp.asarray(value, dtype=dtype)
    return params, grads


def bind_views(layers, params, grads):
    """Point every layer's ``params``/``grads`` entries at its slice of the flat buffers."""
    for layer, name, shape, offset in param_slots(layers)[0]:
        size = int(np.prod(shape))
        layer.params[name] = params[offset:offset + size].reshape(shape)
        layer.grads[name] = grads[offset:offset + size].reshape(shape)
