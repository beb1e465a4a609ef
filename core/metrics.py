"""Classification metrics over NumPy (or CuPy) score arrays."""
import numpy as np

from layers.backend import array_module, on_device


def topk_correct(scores, labels, ks=(1, 5)):
    """``{k: number of samples whose label is among the k highest scores}`` for each k in ``ks``.

    ``scores`` is (N, C) logits or probabilities (any monotone transform gives the same result),
    ``labels`` is (N,) integer class indices. The label's rank is the number of classes that beat
    it: a higher score, or an equal score at a lower index (so ties break as ``argmax`` and a
    stable descending sort do, and a constant output is not counted as correct). A sample is
    correct at k when its rank < k; k larger than C counts every sample. A row holding a NaN is
    never correct.
    """
    xp = array_module(scores)
    ks = tuple(ks)
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"topk_correct: each k must be an int >= 1, got {k!r}")
    if getattr(scores, "ndim", None) != 2:
        raise ValueError(f"topk_correct: scores must be (N, C), got shape "
                         f"{getattr(scores, 'shape', type(scores).__name__)}")
    n, c = scores.shape
    labels = xp.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"topk_correct: labels must be integers of shape ({n},), got "
                         f"{labels.dtype} of shape {labels.shape}")
    if n == 0:
        return {k: 0 for k in ks}
    if not on_device(labels) and (int(labels.min()) < 0 or int(labels.max()) >= c):
        raise ValueError(f"topk_correct: labels must lie in [0, {c}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    target = scores[xp.arange(n), labels][:, None]
    rank = xp.count_nonzero(scores > target, axis=1)
    rank += xp.count_nonzero((scores == target) & (xp.arange(c) < labels[:, None]), axis=1)
    valid = ~xp.isnan(scores).any(axis=1)
    return {k: int(xp.count_nonzero((rank < k) & valid)) for k in ks}
