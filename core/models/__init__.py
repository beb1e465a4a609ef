"""Models by name: ``build_model(name, options, dtype, seed, xp, geometry=..., allocate=...)``.

A model is one file here holding a builder ``f(in_channels, num_classes, [image_size],
**options, **build) -> Model``, plus its line below. The lines name the builders without
importing them, so the configuration can list the models without loading any layer.
"""
import importlib
import inspect

from core.errors import ConfigError
from core.registry import MODELS

MODELS.register("mlp")("core.models.mlp:mlp")
MODELS.register("inception_small")("core.models.inception_small:inception_small")
MODELS.register("googlenet")("core.models.googlenet:googlenet")
MODELS.register("alexnet")("core.models.alexnet:alexnet")
MODELS.register("vgg16")("core.models.vgg:vgg16")
MODELS.register("resnet50")("core.models.resnet:resnet50")
MODELS.register("cifar_resnet")("core.models.cifar_resnet:cifar_resnet")
MODELS.register("resnet20")("core.models.cifar_resnet:resnet20")
MODELS.register("resnet56")("core.models.cifar_resnet:resnet56")


def builder(name):
    """The builder function of model ``name``."""
    module, function = MODELS.get_or_raise(name, ConfigError).split(":")
    return getattr(importlib.import_module(module), function)


def build_model(name, options=None, dtype="float32", seed=0, xp=None, geometry=None,
                allocate=None):
    """Build model ``name``: the input ``geometry`` (``in_channels``, ``num_classes``,
    ``image_size``; each passed where the builder takes it), then ``options`` (its keyword
    arguments), checked against its signature so that a misspelt option stops with the
    allowed ones. ``allocate`` places the flat buffers (``layers.base.bind_flat``)."""
    import numpy as np
    factory = builder(name)
    allowed = [p for p in inspect.signature(factory).parameters if p not in ("build", "seed")]
    options = dict(options or {})
    for key in options:
        if key not in allowed:
            raise ConfigError(f"model_options.{key}: unknown option for model '{name}'; "
                              f"allowed: {', '.join(allowed)}")
    kwargs = {k: v for k, v in (geometry or {}).items() if k in allowed}
    kwargs.update(options)
    return factory(**kwargs, seed=seed, dtype=dtype, xp=xp or np, allocate=allocate)
