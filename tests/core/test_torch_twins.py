"""Every model against its PyTorch twin (bench/torch_models.py) with the same weights, in
float64: the logits and the loss of a training forward, then the gradients of every parameter
and of the input, to 1e-10 relative. Dropout is off (its masks cannot be shared); BatchNorm
runs on batch statistics in both."""
import importlib.util

import numpy as np
import pytest
import torch

from core.models import build_model
from layers.dropout import Dropout
from tests.mpi import ROOT

spec = importlib.util.spec_from_file_location("torch_models", ROOT / "bench" / "torch_models.py")
torch_models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(torch_models)

# model -> (options, input shape); small widths and sizes keep the test fast
CASES = {
    "mlp": None,                                   # no twin: a chain of Linear and ReLU
    "inception_small": ({"width": 0.25}, (3, 3, 28, 28)),
    "googlenet": ({"image_size": 80}, (2, 3, 80, 80)),
    "alexnet": ({"image_size": 99, "width": 0.125}, (2, 3, 99, 99)),
    "vgg16": ({"image_size": 32, "width": 0.0625}, (2, 3, 32, 32)),
    "resnet50": ({"width": 0.125}, (3, 3, 48, 48)),
    "resnet20": ({"width": 0.5}, (3, 3, 16, 16)),
    "resnet56": ({"width": 0.25}, (2, 3, 8, 8)),
    "cifar_resnet": ({"depth": 32, "width": 0.25}, (2, 3, 8, 8)),
}
TWINNED = sorted(name for name, case in CASES.items() if case is not None)


def assert_close(ours, theirs, what=""):
    """Equal to 1e-10 relative: elementwise, with the tolerance of an element near zero (a
    sum that cancels) taken relative to the array's largest entry."""
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10 * np.abs(theirs).max(),
                               err_msg=what)


def copy_weights(ours, twin):
    """Our parameters into the twin's, in their common order; shapes must agree."""
    theirs = list(twin.parameters())
    mine = [p for leaf in ours.leaves() for p in leaf.params.values()]
    assert [tuple(p.shape) for p in theirs] == [p.shape for p in mine]
    with torch.no_grad():
        for t, p in zip(theirs, mine):
            t.copy_(torch.from_numpy(p))
    return theirs, [g for leaf in ours.leaves() for g in leaf.grads.values()]


@pytest.mark.parametrize("name", TWINNED)
def test_the_model_equals_its_pytorch_twin(name):
    options, shape = CASES[name]
    classes = 7
    ours = build_model(name, dict(options, num_classes=classes, in_channels=shape[1]),
                       dtype="float64", seed=1)
    twin_options = {k: v for k, v in options.items() if k != "image_size"}
    twin = torch_models.build(name, classes, options.get("image_size", shape[-1]), shape[1],
                              **twin_options).double().train()
    theirs, grads = copy_weights(ours, twin)
    for layer in ours.leaves():                   # dropout off (the aux heads' too)
        if isinstance(layer, Dropout):
            layer.ratio = 0.0
    for module in twin.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    rng = np.random.default_rng(2)
    x, labels = rng.standard_normal(shape), rng.integers(0, classes, shape[0])

    loss, logits = ours.forward_loss(x, labels)
    dx = ours.backward()
    tx = torch.from_numpy(x.copy()).requires_grad_()
    t_logits, t_aux = twin(tx)
    cross = torch.nn.functional.cross_entropy
    t_loss = cross(t_logits, torch.from_numpy(labels)) + sum(
        0.3 * cross(a, torch.from_numpy(labels)) for a in t_aux)
    t_loss.backward()

    assert_close(logits, t_logits.detach().numpy(), "logits")
    assert float(loss) == pytest.approx(t_loss.item(), rel=1e-10)
    assert_close(dx, tx.grad.numpy(), "input gradient")
    for i, (g, t) in enumerate(zip(grads, theirs)):
        assert_close(g, t.grad.numpy(), f"{name}: parameter {i} {tuple(t.shape)}")


def test_every_model_has_a_case():
    from core.registry import MODELS
    assert set(MODELS) == set(CASES)
