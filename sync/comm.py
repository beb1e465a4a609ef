"""The MPI world of a run: rank, size, the communicator, and abort-on-error.

mpi4py is imported only when the process was started by ``mpiexec`` with more than one rank
(or when asked for), so a single process runs without MPI installed. ``install_abort_hook``
makes an uncaught exception on any rank print that rank's error and call ``MPI.Abort``, which
ends every rank within seconds instead of leaving the others blocked in a collective (as
ChainerMN's global except hook does).
"""
import os
import sys
import traceback

LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")


def launched_by_mpi():
    """True when an MPI launcher started this process (its environment says so)."""
    return any(os.environ.get(v) for v in LAUNCHER_VARIABLES)


class World:
    """``rank`` and ``size`` of this run; ``comm`` is ``MPI.COMM_WORLD`` or None alone. The
    collectives the driver uses work alone too (a world of one answers for itself)."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1

    @property
    def MPI(self):
        from mpi4py import MPI
        return MPI

    def barrier(self):
        if self.comm is not None:
            self.comm.Barrier()

    def allgather(self, value):
        """Every rank's ``value``, in rank order."""
        return self.comm.allgather(value) if self.comm is not None else [value]

    def bcast(self, value, root=0):
        """``root``'s ``value``, on every rank."""
        return self.comm.bcast(value, root=root) if self.comm is not None else value

    def ranks_on_this_host(self):
        """How many ranks run on this host (collective)."""
        return ranks_on_this_host(self.comm) if self.comm is not None else 1

    def abort(self, code):
        """End every rank of the job with ``code`` (alone: this process)."""
        if self.comm is None:
            sys.exit(code)
        self.comm.Abort(code)


def ranks_on_this_host(comm):
    """How many ranks of ``comm`` run on this host (collective)."""
    from mpi4py import MPI
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_size()
    finally:
        local.Free()


MPI_LIBRARIES = ("libmpi.so", "libmpi_cray.so")     # Open MPI's and MPICH's; Cray's


def mpi_libraries(maps):
    """The MPI libraries among the lines of ``/proc/self/maps``: paths (the sixth field, which
    may hold spaces) whose file name starts with one of ``MPI_LIBRARIES``; a mapping of a file
    since deleted (marked ``(deleted)``) cannot be opened again and is left out."""
    found = []
    for line in maps:
        fields = line.rstrip("\n").split(maxsplit=5)
        if len(fields) < 6 or fields[5].endswith("(deleted)"):
            continue
        path = fields[5]
        if path.rsplit("/", 1)[-1].startswith(MPI_LIBRARIES) and path not in found:
            found.append(path)
    return found


def cuda_aware():
    """(whether the MPI library reads and writes GPU memory itself, how that was found):
    ``PT_CUDA_AWARE=0/1`` in the environment, else the library's own answer
    (``MPIX_Query_cuda_support``, looked up in the loaded MPI libraries), else no. Call after
    MPI is initialised."""
    forced = os.environ.get("PT_CUDA_AWARE")
    if forced in ("0", "1"):
        return forced == "1", "PT_CUDA_AWARE"
    import ctypes
    try:
        with open("/proc/self/maps") as maps:
            paths = mpi_libraries(maps)
    except OSError:
        return False, "no /proc/self/maps to find the MPI library in"
    for path in paths:
        try:
            query = getattr(ctypes.CDLL(path), "MPIX_Query_cuda_support", None)
        except OSError:
            continue
        if query is not None:
            return bool(query()), f"MPIX_Query_cuda_support of {path}"
    return False, f"no MPIX_Query_cuda_support in {', '.join(paths) or 'any MPI library'}"


def fault_tolerant():
    """True when ``mpiexec --with-ft ulfm`` started this process (Open MPI's ULFM: a dead
    rank is reported to the others instead of ending the job)."""
    return os.environ.get("OMPI_MCA_mpi_ft_enable") == "1"


def failed_ranks(comm):
    """Ranks of ``comm`` whose processes failed (ULFM), acknowledged so that receives from
    any source work again."""
    from mpi4py import MPI
    comm.Ack_failed()
    failed = comm.Get_failed()
    ranks = MPI.Group.Translate_ranks(failed, list(range(failed.Get_size())), comm.Get_group())
    return [r for r in ranks if r != MPI.UNDEFINED]


def leave(code):
    """End the process with ``code``. Under ULFM after a rank died, ``MPI_Finalize`` can wait
    forever for it, so a fault-tolerant run skips it: output is flushed and the process
    exits directly (all files are closed by then)."""
    if fault_tolerant() and "mpi4py.MPI" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def world():
    """The run's ``World``: MPI's when launched by ``mpiexec``, a world of one otherwise."""
    if not launched_by_mpi():
        return World()
    if fault_tolerant():
        import mpi4py
        mpi4py.rc.finalize = False          # see leave()
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise RuntimeError(f"started by an MPI launcher but mpi4py cannot be imported ({err}); "
                           f"pip install mpi4py") from None
    return World(MPI.COMM_WORLD)


def install_abort_hook(world):
    """On an uncaught exception: print it with the rank, then abort every rank."""
    if world.size == 1:
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        message = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write(f"rank {world.rank} of {world.size} failed:\n{message}")
        sys.stderr.flush()
        try:
            world.comm.Abort(1)
        finally:
            previous(kind, value, tb)
    sys.excepthook = hook
