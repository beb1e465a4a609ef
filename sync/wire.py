"""What MPI is handed for a worker's messages when its buffers may live on a GPU (EASGD,
Downpour, gossip; BSP's exchange has its own device path, ``sync/exchange.py``).

With a CUDA-aware MPI (``sync.comm.cuda_aware``; ``PT_CUDA_AWARE=0/1`` overrides) MPI reads and
writes GPU memory itself: messages go from and to device buffers, once the GPU has finished
the work queued on them. Otherwise they go through pinned (page-locked) host buffers, kept
across steps, the device buffers copied in and out. NumPy buffers always go as they are. The
rules take their message buffers from ``buffer`` and hand MPI nothing else.
"""
from core import device
from layers import backend
from sync.comm import cuda_aware


class Wire:
    def __init__(self, like, aware=None, on_device=None):
        """For buffers like ``like``; ``aware`` (default: asked of the MPI library when
        ``like`` is on a GPU) and ``on_device`` (default: ``like``'s) may be given, for tests."""
        self.on_device = backend.on_device(like) if on_device is None else on_device
        if self.on_device and aware is None:
            aware = cuda_aware()[0]
        self.direct = not self.on_device or bool(aware)
        self._kept = {}

    def buffer(self, key, like):
        """A buffer of ``like``'s shape and dtype kept across steps under ``key``, for MPI to
        read or write: where ``like`` lives when MPI may go there, else pinned host memory."""
        buf = self._kept.get(key)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            if self.direct:
                buf = backend.array_module(like).empty_like(like)
            else:
                buf = device.pinned_empty(like.size, like.dtype).reshape(like.shape)
            self._kept[key] = buf
        return buf

    def ready(self, buffer):
        """Wait until the GPU has written ``buffer`` before MPI reads it (a device buffer)."""
        if self.on_device and self.direct:
            backend.synchronize(backend.array_module(buffer))

    def outgoing(self, key, source, copy=False):
        """What to send for ``source``: itself when MPI may read it where it is (unless
        ``copy``: a message that must not change while a non-blocking send reads it), else its
        values in the message buffer ``buffer(key)``; ready to send either way."""
        if self.direct and not copy:
            self.ready(source)
            return source
        buf = self.buffer(key, source)
        backend.copy_into(buf, source)
        self.ready(buf)
        return buf

    def where(self, received, like, key):
        """The values of ``received`` (a message buffer) where ``like`` lives: itself when it is
        there already, else a copy kept under ``key``."""
        if self.direct or not self.on_device:
            return received
        local = self._kept.get(key)
        if local is None or local.shape != like.shape:
            local = self._kept[key] = backend.array_module(like).empty_like(like)
        return backend.copy_into(local, received)

