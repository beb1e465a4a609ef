"""Whole-model checks: gradients by finite differences (float64), flat buffers, overfitting."""
import numpy as np
import pytest

from core.models import build_model
from core.optimizers import SGD
from layers.base import leaves
from layers.dropout import Dropout
from tests.gradient_check import numeric_directional

TINY = {
    "mlp": ({"in_channels": 2, "image_size": 5, "num_classes": 4, "hidden": [7, 6]}, (3, 2, 5, 5)),
    "inception_small": ({"in_channels": 2, "num_classes": 5, "width": 0.1}, (4, 2, 28, 28)),
    "googlenet": ({"in_channels": 3, "num_classes": 6, "image_size": 80}, (2, 3, 80, 80)),
    "alexnet": ({"in_channels": 3, "num_classes": 5, "image_size": 67, "width": 1 / 16},
                (2, 3, 67, 67)),
    "vgg16": ({"in_channels": 2, "num_classes": 5, "image_size": 32, "width": 1 / 32},
              (2, 2, 32, 32)),
    "resnet50": ({"in_channels": 2, "num_classes": 5, "width": 1 / 16}, (3, 2, 64, 64)),
    "resnet20": ({"in_channels": 2, "num_classes": 4, "width": 0.25}, (3, 2, 12, 12)),
    "resnet56": ({"in_channels": 2, "num_classes": 4, "width": 0.125}, (2, 2, 8, 8)),
}
# the published sizes: AlexNet (BVLC reference), torchvision's VGG-16 and ResNet-50 at 1000
# classes, the CIFAR ResNets of He et al. 2016 (0.27M, 0.85M) at 10
PARAMETERS = {"alexnet": 60_965_224, "vgg16": 138_357_544, "resnet50": 25_557_032,
              "resnet20": 269_722, "resnet56": 853_018}


def reseed_dropout(model):
    """Same dropout masks in every forward pass of a finite-difference probe."""
    drops = [layer for layer in model.leaves() if isinstance(layer, Dropout)]

    def reset():
        for i, layer in enumerate(drops):
            layer.reseed(100 + i)
    return reset


def model_gradient_check(model, x, labels, eps=1e-7, rtol=1e-4, atol=1e-9):
    """Directional derivatives of the training loss along a random unit direction in every
    layer's parameters (one layer at a time, so that a small step crosses no ReLU or max-pool
    kink) and in the input, against central finite differences."""
    reset = reseed_dropout(model)
    rng = np.random.default_rng(0)

    def loss():
        reset()
        return float(model.forward_loss(x, labels)[0])

    # a difference of two losses resolves nothing finer than their ulp: below 4 ulps over
    # 2 eps, the finite difference is rounding (googlenet's smallest gradients get there)
    atol = max(atol, 4 * float(np.spacing(abs(loss()))) / (2 * eps))
    dx = model.backward().copy()
    grads = model.grads.copy()
    checks = [("input", x, dx)]
    for i, layer in enumerate(model.leaves()):
        for name, p in layer.params.items():
            offset = (p.__array_interface__["data"][0] -
                      model.params.__array_interface__["data"][0]) // p.itemsize
            checks.append((f"{i}:{layer.name}.{name}", p, grads[offset:offset + p.size]
                           .reshape(p.shape)))
    for what, array, grad in checks:
        d = rng.standard_normal(array.shape)
        d /= np.linalg.norm(d)
        numeric = numeric_directional(loss, array, d, eps)
        exact = float(np.sum(grad * d))
        assert abs(numeric - exact) <= atol + rtol * max(abs(numeric), abs(exact)), \
            f"{model.name} d loss/d {what}: analytic {exact} vs finite differences {numeric}"


@pytest.mark.parametrize("name", sorted(TINY))
def test_model_gradients_match_finite_differences(name):
    options, shape = TINY[name]
    model = build_model(name, options, dtype="float64", seed=3)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    labels = rng.integers(0, options["num_classes"], size=shape[0])
    model_gradient_check(model, x, labels)


def test_googlenet_aux_heads_add_parameters_and_weighted_losses():
    options, shape = TINY["googlenet"]
    with_aux = build_model("googlenet", options, dtype="float64", seed=0)
    without = build_model("googlenet", dict(options, aux_heads=False), dtype="float64", seed=0)
    assert with_aux.num_params > without.num_params
    assert len(with_aux.heads) == 2 and not without.heads
    x = np.random.default_rng(0).standard_normal(shape)
    labels = np.array([0, 1])
    reseed_dropout(with_aux)()
    total, _ = with_aux.forward_loss(x, labels)
    main = with_aux.loss.forward(with_aux._taps[-1], labels)
    aux = [h.loss.forward(logits, labels)
           for h, logits in zip(with_aux.heads, with_aux._head_logits)]
    assert total == pytest.approx(main + 0.3 * aux[0] + 0.3 * aux[1], rel=1e-12)
    assert min(aux) > 0


def test_full_size_googlenet_has_the_papers_parameter_count():
    model = build_model("googlenet", {"aux_heads": False}, dtype="float32")
    # Szegedy et al. 2014: about 6.8 million parameters (without the auxiliary heads).
    assert 6.5e6 < model.num_params < 7.1e6


def test_flat_buffers_are_shared_views_in_a_fixed_order():
    options, _ = TINY["inception_small"]
    a = build_model("inception_small", options, dtype="float32", seed=5)
    b = build_model("inception_small", options, dtype="float32", seed=5)
    np.testing.assert_array_equal(a.params, b.params)
    first = next(layer for layer in a.leaves() if layer.params)
    name = next(iter(first.params))
    assert np.shares_memory(first.params[name], a.params)
    assert np.shares_memory(first.grads[name], a.grads)
    a.params[:] = 7.0
    assert np.all(first.params[name] == 7.0)
    sizes = sum(p.size for layer in leaves(a.layers()) for p in layer.params.values())
    assert sizes == a.num_params


def test_the_flat_buffers_come_from_the_allocator_and_every_layer_uses_them():
    options, shape = TINY["mlp"]
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal(shape), rng.integers(0, 4, shape[0])
    plain = build_model("mlp", options, dtype="float64", seed=1)
    plain.forward_loss(x, y)
    plain.backward()
    made = {}

    def allocate(name, count, dtype, xp):
        made[name] = np.full(count, np.nan, dtype)     # as shared memory would come: anything
        return made[name]
    model = build_model("mlp", options, dtype="float64", seed=1, allocate=allocate)
    assert model.params is made["params"] and model.grads is made["grads"]
    for layer in model.leaves():
        for name in layer.params:
            assert np.shares_memory(layer.params[name], made["params"])
            assert np.shares_memory(layer.grads[name], made["grads"])
    np.testing.assert_array_equal(model.params, plain.params)     # initialised in place
    model.forward_loss(x, y)
    model.backward()
    np.testing.assert_allclose(model.grads, plain.grads, rtol=1e-12)


def test_unknown_model_option_is_refused():
    from core.errors import ConfigError
    with pytest.raises(ConfigError, match="widht.*allowed.*width"):
        build_model("inception_small", {"widht": 0.5})


def test_inception_small_overfits_a_fixed_batch():
    """Zhang et al. 2017: the network can fit (even random) labels: 100% training accuracy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, size=32)
    model = build_model("inception_small", {"in_channels": 1, "num_classes": 10, "width": 0.25},
                        seed=0)
    optimizer = SGD(momentum=0.9)
    for _ in range(60):
        model.forward_loss(x, labels)
        model.backward()
        optimizer.step(model.params, model.grads, lr=0.05)
    predictions = model.forward(x, train=False).argmax(axis=1)
    assert np.mean(predictions == labels) == 1.0


def test_googlenet_names_the_smallest_image_its_auxiliary_heads_take():
    import pytest
    from core.models import build_model
    from core.models.googlenet import size_at_4a
    assert size_at_4a(79) == 5 and size_at_4a(78) == 4
    with pytest.raises(ValueError, match="image_size >= 79 .got 78.*aux_heads: false"):
        build_model("googlenet", {"image_size": 78})


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_parameter_counts_are_the_published_ones(name):
    classes = 10 if name.startswith("resnet") and name != "resnet50" else 1000
    model = build_model(name, {"num_classes": classes}, dtype="float32")
    assert model.num_params == PARAMETERS[name]
    if classes == 10:                                    # 0.27M and 0.85M in the paper
        assert round(model.num_params / 1e6, 2) == {"resnet20": 0.27, "resnet56": 0.85}[name]


def test_resnet50_zero_init_residual_starts_every_block_as_its_shortcut():
    from layers.batch_norm import BatchNorm2D
    from layers.residual import Residual
    model = build_model("resnet50", {"num_classes": 10, "width": 1 / 16,
                                     "zero_init_residual": True}, dtype="float64")
    blocks = [layer for layer in _walk(model.layers()) if isinstance(layer, Residual)]
    assert len(blocks) == 16
    for block in blocks:
        last_bn = [leaf for leaf in leaves([block.body]) if isinstance(leaf, BatchNorm2D)][-1]
        assert not last_bn.params["gamma"].any() and last_bn.params["beta"].size


def _walk(layers):
    for layer in layers:
        yield layer
        yield from _walk(layer.children())


@pytest.mark.parametrize("depth", [7, 21, 2, "20"])
def test_a_cifar_resnet_depth_is_6n_plus_2(depth):
    with pytest.raises(ValueError, match="depth must be 6n \\+ 2"):
        build_model("cifar_resnet", {"depth": depth})


@pytest.mark.parametrize("name", ["googlenet", "alexnet", "resnet20", "vgg16"])
def test_the_first_layer_may_skip_the_input_gradient(name):
    options, shape = TINY[name]
    model = build_model(name, options, dtype="float64", seed=3)
    rng = np.random.default_rng(1)
    x, labels = rng.standard_normal(shape), rng.integers(0, options["num_classes"], shape[0])
    reseed = reseed_dropout(model)
    reseed()
    model.forward_loss(x, labels)
    full, grads = model.backward(), model.grads.copy()
    assert full.shape == shape and model.step_flops == 3 * model.forward_flops
    reseed()
    model.forward_loss(x, labels)
    assert model.backward(input_grad=False) is None
    # equal to rounding: a strided first layer that needs no dx takes the direct route for dW
    # (layers/conv_direct.py), the im2col route when it computes dx too
    np.testing.assert_allclose(model.grads, grads, rtol=1e-12, atol=1e-15)
    first = model.leaves()[0]
    assert first.forward_flops > 0
    assert model.step_flops == 3 * model.forward_flops - first.forward_flops
