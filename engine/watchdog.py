"""Stall watchdog: says which ranks have not reached an exchange that this rank waits in.

Each rank runs a daemon thread that every ``interval`` seconds writes a heartbeat file into
the run folder (``heartbeat.rank<r>.json``: step, the phase the rank is in, since when) and
checks its own phase: when the rank has waited in an exchange for more than
``watchdog_seconds``, it prints once, to stderr, which ranks are behind (a lower step, or not
in an exchange) and how long ago each was last heard of. The files need no MPI, so the report
works while MPI itself is stuck (on several hosts, when the run folder is shared). After
``abort_seconds`` in one exchange it reports again and calls ``abort`` (``MPI.Abort``: every
rank ends, the hung one too), so a stuck job does not hold its machines forever.
"""
import json
import sys
import time
from pathlib import Path

from sync.periodic import Periodic


class Watchdog(Periodic):
    name = "watchdog"

    def __init__(self, folder, rank, size, log, progress, seconds, interval=2.0, out=None,
                 abort_seconds=None, abort=None):
        super().__init__(interval)
        self.folder, self.rank, self.size = Path(folder), rank, size
        self.log, self.progress, self.seconds = log, progress, seconds
        self.abort_seconds, self.abort = abort_seconds, abort
        self.out = out or sys.stderr
        self.reported = self.write_error = None

    def tick(self):
        phase, since = self.log.current
        beat = {"rank": self.rank, "step": self.progress.step, "phase": phase,
                "since": since, "written": time.time()}
        path = self.folder / f"heartbeat.rank{self.rank}.json"
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(beat))
            temporary.replace(path)
        except OSError as err:            # a full disk must not end the run
            if self.write_error is None:
                self.out.write(f"watchdog: cannot write {path}: {err}\n")
            self.write_error = err
        waited = time.time() - since
        if phase != "exchange":
            return
        if self.abort_seconds is not None and waited > self.abort_seconds:
            self.out.write(self.report(beat, waited) + f"; ending the job (stall_abort: "
                           f"{self.abort_seconds:g} s)\n")
            self.out.flush()
            self.abort()
        elif self.seconds is not None and waited > self.seconds and self.reported != since:
            self.reported = since
            self.out.write(self.report(beat, waited) + "\n")
            self.out.flush()

    def report(self, mine, waited):
        behind = []
        for rank in range(self.size):
            if rank == self.rank:
                continue
            try:
                beat = json.loads((self.folder / f"heartbeat.rank{rank}.json").read_text())
            except (OSError, ValueError):
                behind.append(f"{rank} (no heartbeat)")
                continue
            if beat["step"] < mine["step"] or beat["phase"] != "exchange":
                behind.append(f"{rank} ({beat['step']} steps done, in {beat['phase']}, heard "
                              f"of {time.time() - beat['written']:.0f} s ago)")
        return (f"stall: rank {self.rank} has waited {waited:.0f} s in an exchange with "
                f"{mine['step']} steps done; ranks not there: "
                f"{', '.join(behind) or 'none known'}")
