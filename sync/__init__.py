"""Sync rules: how workers (and servers) started by mpiexec combine their training."""
from sync.bsp import BSP, Local
from sync.downpour import Downpour
from sync.easgd import EASGD
from sync.gossip import Gossip

RULES = {"BSP": BSP, "EASGD": EASGD, "DOWNPOUR": Downpour, "GOSSIP": Gossip, "LOCAL": Local}


def build_rule(world, cfg):
    """The configured rule for this rank of ``world``."""
    return RULES[cfg["sync_rule"]](world, cfg)
