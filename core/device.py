"""Where a rank's arrays live: ``device: cpu`` (NumPy) or ``device: gpu`` (CuPy, one GPU).

CuPy is imported here, and only for ``gpu``: a CPU run never loads it. Each worker uses one
GPU, the one its rank on this host picks among the GPUs it sees (local rank mod their number),
so more ranks than GPUs share them in turn, as for testing on one GPU; ``run/bind_gpu.sh`` may
already have left each rank a single one. Servers (EASGD, Downpour) stay on the CPU. Every error comes before any work, as a
``DeviceError`` that says what to change.

``tf32: true`` lets cuBLAS round the inputs of float32 matrix products to TF32 (a 10-bit
mantissa, Ampere and later GPUs), CuPy's float32 compute type; float64 is unaffected.

Batches reach the GPU through ``feed``, one step ahead of the model; layers/backend.py has the
helpers for everything else that crosses between host and device.
"""
import os

import numpy as np

from core.errors import ConfigError


class DeviceError(ConfigError):
    """``device: gpu`` cannot be honoured here (no CuPy, no GPU)."""


def local_rank():
    """This process's rank among the ranks on its host, from the launcher's environment (Open
    MPI, Slurm, MPICH), 0 when started alone."""
    for name in ("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def array_module(device, rank_on_host=0, tf32=False):
    """NumPy for ``cpu``; for ``gpu``, CuPy with this rank's GPU made current."""
    if device == "cpu":
        return np
    if device != "gpu":
        raise DeviceError(f"device: {device!r} is not one of 'cpu', 'gpu'")
    try:
        import cupy
    except ImportError as err:
        raise DeviceError(f"device: gpu needs CuPy, which cannot be imported here ({err}); "
                          f"install it with pip install -e '.[gpu]' (or the cupy-cudaXXx "
                          f"wheel matching your CUDA), or use device: cpu") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:        # CUDARuntimeError: no driver, or no device
        raise DeviceError(f"device: gpu, but CUDA finds no usable GPU ({err}); use "
                          f"device: cpu") from None
    if count == 0:
        raise DeviceError("device: gpu, but CUDA sees no GPU (CUDA_VISIBLE_DEVICES may hide "
                          "them); use device: cpu")
    cupy.cuda.Device(rank_on_host % count).use()
    set_tf32(cupy, tf32)
    return cupy


def set_tf32(cupy, enabled):
    """float32 matrix products in TF32 (``enabled``) or in full float32: CuPy reads CUPY_TF32
    at its first float32 product; its compute-type setter changes it after that too."""
    os.environ["CUPY_TF32"] = "1" if enabled else "0"
    try:
        from cupy._core._routines_linalg import (COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_TF32,
                                                 set_compute_type)
    except ImportError:                       # a CuPy without the setter: the variable rules
        return
    set_compute_type(np.float32, COMPUTE_TYPE_TF32 if enabled else COMPUTE_TYPE_DEFAULT)


def pinned_empty(n, dtype):
    """A NumPy array of ``n`` elements in page-locked host memory (fast, asynchronous copies
    to and from the GPU)."""
    import cupyx
    return cupyx.empty_pinned((n,), dtype)


def feed(xp, batches):
    """``batches`` (an iterator of host (x, labels) pairs) as they should reach the model: the
    iterator itself for NumPy; for CuPy, a ``DeviceFeed`` copying one batch ahead."""
    return batches if xp is np else DeviceFeed(xp, batches)


class DeviceFeed:
    """Host batches copied to the GPU one step ahead, on a stream of their own.

    ``next`` hands out the batch copied during the previous step (the compute stream waits for
    that copy's event, not the host) and starts copying the following one from a page-locked
    buffer, so the transfer overlaps the step. Two such buffers take turns; before one is
    refilled, the copy that last read it must have finished. A batch's device memory goes back
    to CuPy's pool (for this feed's stream) when the step lets go of it; the training loop has
    waited for the GPU by then (it reads the loss and the gradient check on the host), so no
    kernel still reads it when the next copy reuses it."""

    def __init__(self, cupy, batches):
        self.cupy, self.batches = cupy, batches
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.staging = [None, None]   # per turn: (pinned x, pinned labels, event of its copy)
        self.turn = 0
        self.ahead = self._start()

    def __iter__(self):
        return self

    def __next__(self):
        if self.ahead is None:
            raise StopIteration
        x, labels, done = self.ahead
        self.cupy.cuda.get_current_stream().wait_event(done)
        self.ahead = self._start()
        return x, labels

    def _start(self):
        """Begin copying the next host batch; (device x, device labels, event), or None at
        the end of ``batches``."""
        try:
            x, labels = next(self.batches)
        except StopIteration:
            return None
        slot = self.staging[self.turn]
        if slot is not None:
            slot[2].synchronize()            # its last copy has read the pinned memory
        if slot is None or slot[0].shape != x.shape or slot[1].shape != labels.shape or \
                slot[0].dtype != x.dtype or slot[1].dtype != labels.dtype:
            slot = [pinned_empty(x.size, x.dtype).reshape(x.shape),
                    pinned_empty(labels.size, labels.dtype).reshape(labels.shape), None]
        slot[0][...] = x
        slot[1][...] = labels
        with self.stream:
            on_device = (self.cupy.empty(x.shape, x.dtype),
                         self.cupy.empty(labels.shape, labels.dtype))
            on_device[0].set(slot[0], stream=self.stream)
            on_device[1].set(slot[1], stream=self.stream)
            slot[2] = self.stream.record()
        self.staging[self.turn] = slot
        self.turn = 1 - self.turn
        return on_device + (slot[2],)

    def close(self):
        if hasattr(self.batches, "close"):
            self.batches.close()
