"""core/memory.py: with keep_freed_memory the freed buffers stay in the process (resident)
for the next step; without it, or where the environment set glibc's own, they go back."""
import os
import platform
import subprocess
import sys

import pytest

from core import memory
from tests.mpi import ROOT

# In a fresh process (mallopt is process-wide): apply the setting, then hold and free 256 MB,
# printing the line, the resident MB while held and after the free.
PROBE = """
import sys
import numpy as np
from core.memory import keep_freed
line = keep_freed(sys.argv[1] == "1")
def resident():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) // 1024 for l in f if l.startswith("VmRSS"))
a = np.ones(1 << 26, np.float32)
held = resident()
del a
print(line, held, resident(), sep="|")
"""


def probe(keep, **env):
    """(line, MB resident while held, after the free); the MALLOC_* variables are only env's."""
    clean = {k: v for k, v in os.environ.items() if k not in memory.ENVIRONMENT}
    done = subprocess.run([sys.executable, "-c", PROBE, "1" if keep else "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env=dict(clean, **env))
    assert done.returncode == 0, done.stderr
    line, held, after = done.stdout.strip().split("|")
    return line, int(held), int(after)


needs_glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or
                                 not os.path.exists("/proc/self/status"),
                                 reason="glibc on Linux only")


@needs_glibc
def test_kept_memory_stays_resident_after_free():
    line, held, after = probe(True)
    assert line == memory.KEPT
    assert held >= 256 and after >= held - 16      # the 256 MB are still the process's


@needs_glibc
def test_defaults_give_freed_memory_back():
    line, held, after = probe(False)
    assert "defaults" in line and "keep_freed_memory false" in line
    assert held - after >= 240


@needs_glibc
def test_the_users_glibc_settings_are_left_alone():
    line, held, after = probe(True, MALLOC_TRIM_THRESHOLD_="131072")
    assert line == "glibc's settings from the environment (MALLOC_TRIM_THRESHOLD_)"
    assert held - after >= 240                     # not ours: glibc still gives it back


# A child started from this process after it held 512 MB: its getrusage peak and VmHWM.
CHILD = """
import resource
from core.memory import peak_rss
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, peak_rss())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux's /proc only")
def test_peak_rss_is_the_process_own():
    """peak_rss counts the child's own memory, where getrusage counts the parent's 512 MB
    (why bench/step.py's PyTorch twin reports its memory with it)."""
    held = bytearray(512 << 20)
    held[::4096] = b"\1" * len(held[::4096])     # resident
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    inherited, own = map(int, done.stdout.split())
    assert inherited >= 512 << 20 > 4 * own
    assert memory.peak_rss() >= 512 << 20
