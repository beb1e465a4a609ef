"""What the reporting worker shows while it trains.

On a terminal: a tqdm progress bar per epoch (images/s, loss, ETA); otherwise (CI, Slurm logs,
a pipe) a plain line every ``print_every`` steps. Validation results and other messages are
printed as lines either way. Every other rank shows nothing.
"""
import os
import time

from tqdm import tqdm


class ProgressDisplay:
    def __init__(self, out, enabled, total_steps, print_every, workers, bar=None):
        self.out = out if enabled else open(os.devnull, "w")
        self.enabled, self.total_steps = enabled, total_steps
        self.print_every, self.workers = print_every, workers
        self.bar_wanted = enabled and (bar if bar is not None else
                                       getattr(out, "isatty", lambda: False)())
        self.bar = None
        self._tick, self._seen, self._waited = time.perf_counter(), 0, 0.0

    def message(self, text):
        if self.bar is not None:
            self.bar.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def start_epoch(self, epoch, steps):
        if self.bar_wanted:
            self.bar = tqdm(total=steps, desc=f"epoch {epoch}", unit="step", file=self.out,
                            leave=True, dynamic_ncols=True)
        self._tick, self._seen, self._waited = time.perf_counter(), 0, 0.0

    def step(self, epoch, step, loss, lr, images, data_wait):
        """After a step of ``images`` images on this worker that waited ``data_wait`` s."""
        self._seen += images
        self._waited += data_wait
        if self.bar is not None:
            self.bar.update()
            if step % self.print_every == 0:
                rate = self._rate()
                self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}",
                                     refresh=False)
        elif step % self.print_every == 0:
            rate = self._rate()
            wait_ms = self._waited * 1e3 / self.print_every
            self.message(f"epoch {epoch} step {step}/{self.total_steps} loss {loss:.4f} "
                         f"lr {lr:.4g} {rate:.1f} img/s, data wait {wait_ms:.1f} ms/step")
            self._tick, self._seen, self._waited = time.perf_counter(), 0, 0.0

    def _rate(self):
        """Images/s of all workers since the last report (this worker's rate x workers)."""
        return self._seen * self.workers / max(time.perf_counter() - self._tick, 1e-9)

    def end_epoch(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
