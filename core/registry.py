"""Named registries: what a config key may name, filled by the modules that define it.

A model, optimizer, learning-rate policy or sync rule is one file plus its registration::

    @OPTIMIZERS.register("sgd")
    class SGD(Optimizer): ...

    MODELS.register("mlp")("core.models.mlp:mlp")     # by name: no layer is loaded for it

and the config's choices for ``model``, ``optimizer.name``, ``lr_schedule.policy`` and
``sync_rule`` are these registries, so adding one never means editing a second list. This module
imports nothing, so the configuration can name the registries without loading what fills them.
"""


class Registry(dict):
    """``name -> object``, in registration order; ``kind`` names what it holds in messages."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def register(self, name):
        """A decorator registering its argument under ``name`` (once)."""
        def add(obj):
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = obj
            return obj
        return add

    def get_or_raise(self, name, error=ValueError):
        """The object registered under ``name``; ``error`` naming the choices otherwise."""
        if name not in self:
            raise error(f"{self.kind} {name!r} is not one of {', '.join(self) or 'none'}")
        return self[name]


MODELS = Registry("model")
OPTIMIZERS = Registry("optimizer")
POLICIES = Registry("learning-rate policy")
RULES = Registry("sync rule")
