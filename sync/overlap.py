"""Averaging the gradient buffer in buckets, overlapped with the backward pass.

The flat buffer is cut into buckets of about ``bucket_bytes``, from its end backwards, because
backward finishes the gradients in that order (``Model.backward(on_ready)`` reports the
offset from which they are final). Every rank issues the same buckets in the same order (as
PyTorch DDP and Horovod's tensor fusion do), so the exchanges pair up. With ``overlap`` a
communication thread averages each bucket as soon as backward has passed it, while the main
thread goes on computing (NumPy releases the GIL); without it the buckets go one after the
other once backward is done. MPI is initialized with thread support by mpi4py, and only this
thread calls MPI while it works.

``hidden`` accumulates the exchange time the backward pass covered: the time spent exchanging
minus the time the main thread waited for the exchange after backward.
"""
import queue
import threading
import time

from layers import backend


def bucket_bounds(size, itemsize, bucket_bytes):
    """[(lo, hi), ...] covering [0, size), from the end of the buffer backwards."""
    per = max(1, bucket_bytes // itemsize)
    bounds, hi = [], size
    while hi > 0:
        lo = max(0, hi - per)
        bounds.append((lo, hi))
        hi = lo
    return bounds


class BucketedExchange:
    def __init__(self, exchange, buffer, bucket_bytes, overlap):
        self.exchange, self.buffer, self.overlap = exchange, buffer, overlap
        self.bounds = bucket_bounds(buffer.size, buffer.itemsize, bucket_bytes)
        self.next = 0                       # index of the next bucket to issue
        self.exchange_time = self.waited = 0.0
        self._error = None
        if overlap:
            self._tasks = queue.Queue()
            threading.Thread(target=self._work, name="exchange", daemon=True).start()

    def _work(self):
        if backend.on_device(self.buffer):      # CuPy: this thread uses its GPU too
            self.buffer.device.use()
        while True:
            lo, hi, event = self._tasks.get()
            try:
                if self._error is None:
                    if event is not None:        # the backward's kernels for this bucket
                        event.synchronize()
                    tick = time.perf_counter()
                    self.exchange.mean(self.buffer, lo, hi)
                    self.exchange_time += time.perf_counter() - tick
            except BaseException as err:         # re-raised on the main thread by finish()
                self._error = err
            finally:
                self._tasks.task_done()

    def ready(self, offset):
        """Gradients from ``offset`` on are final: issue the buckets that lie there. On a GPU
        they are final once the kernels queued so far on this (the backward's) stream have
        run: an event recorded here, which the communication thread waits for."""
        if not self.overlap:
            return
        event = None
        while self.next < len(self.bounds) and self.bounds[self.next][0] >= offset:
            if event is None and backend.on_device(self.buffer):
                event = backend.array_module(self.buffer).cuda.get_current_stream().record()
            self._tasks.put(self.bounds[self.next] + (event,))
            self.next += 1

    def finish(self):
        """After backward: exchange what is left and wait until every bucket is averaged."""
        if self.overlap:
            self.ready(0)
            tick = time.perf_counter()
            self._tasks.join()
            self.waited += time.perf_counter() - tick
            if self._error is not None:
                raise self._error
        else:
            tick = time.perf_counter()
            for lo, hi in self.bounds:
                self.exchange.mean(self.buffer, lo, hi)
            self.exchange_time += time.perf_counter() - tick
            self.waited += time.perf_counter() - tick
        self.next = 0

    @property
    def hidden(self):
        """Seconds of exchange that ran during backward (0 without overlap)."""
        return max(0.0, self.exchange_time - self.waited)
