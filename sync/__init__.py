"""Sync rules: how workers (and servers) started by mpiexec combine their training.

Importing this package registers every rule in ``core.registry.RULES`` and its settings in
the configuration: a rule is one file here plus its line below.
"""
from core.registry import RULES
from sync import bsp, downpour, easgd, gossip   # noqa: F401  (each registers itself)


def build_rule(world, cfg):
    """The configured rule for this rank of ``world``."""
    return RULES[cfg["sync_rule"]](world, cfg)
