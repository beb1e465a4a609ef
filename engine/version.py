"""The project's version, and a fingerprint of its source that every rank compares at start:
a host running another checkout of the project stops the job before it trains."""
import functools
import hashlib
from pathlib import Path

VERSION = "0.1.0"
PACKAGES = ("engine", "layers", "sync", "data")
ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def source_fingerprint():
    """``VERSION+<12 hex digits>``: the SHA-1 over the path and bytes of every ``.py`` file
    of the packages, so two hosts agree only when their code is the same. Read once per
    process (the agreement at start and the run's metadata both ask)."""
    digest = hashlib.sha1()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return f"{VERSION}+{digest.hexdigest()[:12]}"
