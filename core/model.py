"""A network with flat parameter/gradient buffers, optional auxiliary heads and a loss.

The trunk is a list of stages; an auxiliary head takes the output of one stage (GoogLeNet's
classifiers after inception 4a and 4d). Training loss = main loss + sum_h weight_h * loss_h;
evaluation runs the trunk only. ``params`` and ``grads`` are contiguous 1-D arrays, identical
in layout on every rank, of which every layer's parameters and gradients are views.
"""
import numpy as np

from layers.backend import copy_into
from layers.base import bind_flat, leaves
from layers.softmax_cross_entropy import SoftmaxCrossEntropy


class Head:
    """An auxiliary classifier fed by the output of trunk stage ``after_stage``."""

    def __init__(self, after_stage, layer, weight):
        self.after_stage, self.layer, self.weight = after_stage, layer, weight
        self.loss = SoftmaxCrossEntropy()


class Model:
    def __init__(self, name, stages, heads=(), dtype=np.float32, seed=0, xp=np, allocate=None):
        """``allocate(name, count, dtype, xp)`` makes the flat ``params`` and ``grads`` buffers
        (a sync rule places the one it exchanges where that is fastest); default: plain
        arrays of ``xp``."""
        self.name = name
        self.stages = list(stages)
        self.heads = list(heads)
        self.loss = SoftmaxCrossEntropy()
        self.dtype = np.dtype(dtype)
        self.xp = xp
        self.params, self.grads = bind_flat(self.layers(), self.dtype,
                                            np.random.default_rng(seed), xp, allocate)
        self._leaves = list(leaves(self.layers()))   # the layer tree is fixed from here on
        sizes = [sum(int(np.prod(v.shape)) for leaf in leaves([layer])
                     for v in leaf.params.values()) for layer in self.layers()]
        self.starts = [int(s) for s in np.cumsum([0] + sizes[:-1])]   # flat offset of each

    def layers(self):
        """Top-level layers in parameter order: the trunk stages, then the heads."""
        return self.stages + [head.layer for head in self.heads]

    def leaves(self):
        """Leaf layers in parameter order."""
        return self._leaves

    @property
    def num_params(self):
        return int(self.params.size)

    @property
    def forward_flops(self):
        """2 x multiply-adds of the last forward pass (GEMM layers)."""
        return sum(layer.forward_flops for layer in self.leaves())

    @property
    def step_flops(self):
        """The FLOPs of a training step after the last forward: forward, weight gradient and
        input gradient of every GEMM layer (3x the forward), less the first layer's input
        gradient when the last backward skipped it."""
        first = self._leaves[0]
        return 3 * self.forward_flops - (0 if first.needs_input_grad else first.forward_flops)

    def state(self):
        """Non-averaged buffers (BatchNorm running statistics), keyed by leaf index and name."""
        return {f"{i}.{name}": value for i, layer in enumerate(self.leaves())
                for name, value in layer.state.items()}

    def load_state(self, state):
        """Copy ``state`` (as returned by ``state()``) into the layers' buffers."""
        for i, layer in enumerate(self.leaves()):
            for name, value in layer.state.items():
                copy_into(value, state[f"{i}.{name}"])

    def forward(self, x, train=False):
        """Main-head logits. In training mode the auxiliary heads run too (see ``loss``)."""
        self._taps = []
        for stage in self.stages:
            x = stage.forward(x, train)
            self._taps.append(x)
        self._head_logits = [h.layer.forward(self._taps[h.after_stage], train)
                             for h in self.heads] if train else []
        return x

    def forward_loss(self, x, labels):
        """Training forward pass; returns (total loss, main-head logits)."""
        logits = self.forward(x, train=True)
        total = self.loss.forward(logits, labels)
        for head, head_logits in zip(self.heads, self._head_logits):
            total += head.weight * head.loss.forward(head_logits, labels)
        return total, logits

    def backward(self, on_ready=None, input_grad=True):
        """Gradients of the last ``forward_loss`` into ``self.grads``; returns d loss / d x, or
        None with ``input_grad=False``: then the first layer skips that gradient, which nothing
        in training reads (GoogLeNet's 7x7 and AlexNet's 11x11 convolution save a third).

        ``on_ready(offset)``, if given, is called whenever ``grads[offset:]`` is final: the
        heads (at the end of the buffer) finish first, then the stages from the last one."""
        self._leaves[0].needs_input_grad = input_grad
        extra = {}
        for head in self.heads:
            d = head.layer.backward(head.loss.backward(head.weight))
            extra[head.after_stage] = d if head.after_stage not in extra \
                else extra[head.after_stage] + d
        if on_ready is not None and self.heads:
            on_ready(self.starts[len(self.stages)])
        dy = self.loss.backward()
        for i in range(len(self.stages) - 1, -1, -1):
            if i in extra:
                dy += extra[i]
            dy = self.stages[i].backward(dy)
            if on_ready is not None:
                on_ready(self.starts[i])
        return dy
