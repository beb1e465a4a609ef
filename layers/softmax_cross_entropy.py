"""Softmax followed by the cross-entropy loss, averaged over the batch.

Unlike the other layers this one takes the labels and returns a scalar (a float; on the kernel
route a 0-d array left on the device, so that the step does not wait to read it):

    loss = layer.forward(logits, labels)   # logits (N, K) float, labels (N,) int in [0, K)
    dlogits = layer.backward(scale=1.0)    # (softmax(logits) - onehot(labels)) / N * scale

loss = -1/N sum_n log softmax(z_n)[l_n], computed as log-sum-exp of the max-shifted logits
(z - max z), so huge logits neither overflow nor lose the loss. ``scale`` weights this loss in a
sum of losses (e.g. 0.3 for a GoogLeNet auxiliary head). After ``forward``, ``probs`` holds the
softmax (N, K) and ``labels`` the labels; ``accuracy(k)`` is the top-k accuracy of that batch.
"""
from typing import NamedTuple

import numpy as np

from layers import backend, cuda
from layers.backend import array_module
from layers.base import Layer


class Saved(NamedTuple):
    """What a forward keeps for backward and ``accuracy``."""
    probs: object     # softmax of the logits, (N, K)
    labels: object    # (N,) integers
    rows: object      # arange(N), to index probs[rows, labels]


class SoftmaxCrossEntropy(Layer):
    @property
    def probs(self):
        """softmax(logits) (N, K) of the last forward."""
        return self.saved(Saved).probs

    @property
    def labels(self):
        """The labels (N,) of the last forward."""
        return self.saved(Saved).labels

    def forward(self, logits, labels, train=True):
        self.check_input(logits, 2)
        xp = array_module(logits)
        n, k = logits.shape
        if getattr(labels, "shape", None) != (n,):
            got = getattr(labels, "shape", type(labels).__name__)
            raise ValueError(f"{self.name}: expected labels of shape ({n},) for logits of shape "
                             f"{logits.shape}, got {got}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: expected integer labels of shape ({n},), "
                            f"got dtype {labels.dtype}")
        # on a GPU the labels were checked on the host as the batch was made (reading them
        # here would make the host wait for the GPU)
        if n and not backend.on_device(labels) and (int(labels.min()) < 0 or
                                                     int(labels.max()) >= k):
            raise ValueError(f"{self.name}: labels must lie in [0, {k}) for logits of shape "
                             f"{logits.shape}, got values in [{int(labels.min())}, "
                             f"{int(labels.max())}]")
        rows = xp.arange(n)
        if backend.uses_kernels(xp):
            labels = xp.ascontiguousarray(labels, dtype=np.int64)
            probs, losses = xp.empty((n, k), logits.dtype), xp.empty(n, np.float64)
            cuda.launch("elementwise", "softmax_forward", logits.dtype, n,
                        (xp.ascontiguousarray(logits), labels, probs, losses, n, k))
            self.save(Saved(probs, labels, rows))
            return losses.sum() / max(n, 1)        # on the device: read it when it is needed
        z = logits - logits.max(axis=1, keepdims=True)
        probs = xp.exp(z)
        total = probs.sum(axis=1, keepdims=True)
        probs /= total
        self.save(Saved(probs, labels, rows))
        # -log p[l] = log(sum exp z) - z[l], with z[l] <= 0 <= log(sum exp z)
        return float((xp.log(total[:, 0]) - z[rows, labels]).sum()) / max(n, 1)

    def backward(self, scale=1.0):
        probs, labels, rows = self.saved(Saved)
        xp = array_module(probs)
        if backend.uses_kernels(xp):
            n, k = probs.shape
            dlogits = xp.empty_like(probs)
            cuda.launch("elementwise", "softmax_backward", dlogits.dtype, dlogits.size,
                        (probs, labels, dlogits, scale / max(n, 1), n, k))
            return dlogits
        dlogits = probs.copy()
        dlogits[rows, labels] -= 1.0
        dlogits *= scale / max(len(labels), 1)
        return dlogits

    def accuracy(self, k=1):
        """Fraction of the last batch whose label is among the k largest probabilities (a tie
        with the label counts in its favour)."""
        probs, labels, rows = self.saved(Saved)
        n, classes = probs.shape
        if k >= classes:
            return 1.0
        mine = probs[rows, labels][:, None]
        # rank = number of classes strictly more probable than the label
        rank = (probs > mine).sum(axis=1)
        return float((rank < k).sum()) / max(n, 1)
