"""Stopping a run well: a signal ends every rank at a step boundary, with a checkpoint, one line
saying how to resume, and the signal's exit status.

    SIGINT  (Ctrl-C; the launchers relay it to the ranks as SIGUSR2)           exit 130
    SIGTERM (kill, Slurm's time limit; relayed as SIGUSR1, as is Slurm's
             warning signal, which the sbatch scripts ask for before the limit)  exit 143

``mpiexec`` forwards SIGUSR1 and SIGUSR2 to every rank on every host; SIGINT and SIGTERM to it
would end the job at once, so the launchers run it in a session of its own and relay. On a
rank the first of these signals only records the request (``StopSignals.code``); the handlers
of SIGINT and SIGTERM then go back to the default, so a second one ends the process at once,
even inside an MPI call, and ``mpiexec`` the job (the previous checkpoint stays whole: a
checkpoint is complete only once its manifest is written, last).

Where the ranks stop is the rule's business (``SyncRule.agree_stop``): synchronous rules agree
every step; asynchronous ones through their first worker (sync/rule.py).
"""
import shlex
import signal
import sys

EXIT = {signal.SIGINT: 130, signal.SIGUSR2: 130, signal.SIGTERM: 143, signal.SIGUSR1: 143}
NAMES = {130: "SIGINT", 143: "SIGTERM"}


class StopSignals:
    """Records the first stop signal this process gets; ``code`` is 0 until then, afterwards
    the exit status it asks for (130 or 143) and ``name`` its signal."""

    def __init__(self):
        self.code, self.received = 0, None
        self._previous = {}

    def install(self):
        """Catch the stop signals (main thread only); returns self."""
        for signum in EXIT:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.code:
            return                              # a relayed repeat (USR1/USR2): nothing new
        self.code, self.received = EXIT[signum], signal.Signals(signum).name
        for again in (signal.SIGINT, signal.SIGTERM):   # a second one ends the process
            signal.signal(again, signal.SIG_DFL)

    def request(self, code):
        """Record a stop asked for by another rank (``code``: 130 or 143)."""
        if not self.code and code:
            self.code, self.received = code, "another rank"

    @property
    def name(self):
        return NAMES.get(self.code, "")


def resume_command(folder, argv=None, launcher=None, ranks=1):
    """The exact command that resumes this run: the launcher's own command line when a
    launcher started it (``PT_LAUNCH``, shell-quoted), else ``[mpiexec -n RANKS] python3 -m
    engine.train`` with this process's arguments; its ``log.dir`` and ``resume`` settings
    replaced by the run's folder and ``resume=auto``."""
    if launcher:
        words = shlex.split(launcher)
    else:
        words = (["mpiexec", "-n", str(ranks)] if ranks > 1 else []) + \
            ["python3", "-m", "engine.train", *(sys.argv[1:] if argv is None else argv)]
    kept = []
    for word in words:
        if kept and kept[-1] == "--set" and word.split("=")[0] in ("log.dir", "resume"):
            kept.pop()
        else:
            kept.append(word)
    return shlex.join(kept + ["--set", f"log.dir={folder}", "--set", "resume=auto"])
