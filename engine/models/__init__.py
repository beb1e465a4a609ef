"""Models by name: ``build_model(name, options, dtype, seed)``."""
import inspect

from engine.config import ConfigError
from engine.models.googlenet import googlenet
from engine.models.inception_small import inception_small
from engine.models.mlp import mlp

MODELS = {"mlp": mlp, "inception_small": inception_small, "googlenet": googlenet}


def build_model(name, options=None, dtype="float32", seed=0, xp=None):
    """Build model ``name`` with ``options`` (its keyword arguments), checked against its
    signature so that a misspelt option stops with the allowed ones."""
    import numpy as np
    factory = MODELS[name]
    options = dict(options or {})
    allowed = [p for p in inspect.signature(factory).parameters if p not in ("build", "seed")]
    for key in options:
        if key not in allowed:
            raise ConfigError(f"model_options.{key}: unknown option for model '{name}'; "
                              f"allowed: {', '.join(allowed)}")
    return factory(**options, seed=seed, dtype=dtype, xp=xp or np)
