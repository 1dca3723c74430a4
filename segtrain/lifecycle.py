"""The training process's life: its clock, the stop signals, and its parent.

A segment stops cleanly (saves at the next step boundary, exits with EXIT_STOPPED) when a stop is
requested: SIGTERM (pod stopped, booking over, walltime), SIGUSR1 (SLURM's --signal), or the
Snakemake process that started the job disappearing (it was killed: nobody would collect this
job's result, and a rerun would find the run locked by it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time


class StopRequested(BaseException):
    """Raised by a stop signal inside ``StopFlag.interrupting()``: what ran there (a restore) is cut
    short, since nothing of it needs saving. A BaseException, so no ``except Exception`` swallows it."""

# Set by the workflow (common.smk) in every Snakemake process: the one whose jobs we are.
PARENT_ENV = "SEGTRAIN_SNAKEMAKE_PID"


JOB_PID_ENV = "SEGTRAIN_JOB_PID"  # set by segtrain.launch: the job's process, which became the launcher
# Set by segtrain.launch for a job on several nodes: when the job's command started (time.time())
JOB_STARTED_ENV = "SEGTRAIN_JOB_STARTED"


def process_age() -> float:
    """Seconds since this job's process started (the job's clock starts with the process; a
    rank's, with the job's command that became its launcher: the same PID, and its start; on
    several nodes, which share no PIDs, the wall-clock time that command started)."""
    started = os.environ.get(JOB_STARTED_ENV, "") if os.environ.get("WORLD_SIZE") else ""
    if started:
        try:
            return max(0.0, time.time() - float(started))
        except ValueError:
            pass
    pid = os.environ.get(JOB_PID_ENV, "self") if os.environ.get("WORLD_SIZE") else "self"
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _start_ticks(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (with the PID, it names the process); None
    when it has ended."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # a zombie has ended: only its parent has not reaped it
        return None
    return fields[19]


class StopFlag:
    """Set by SIGTERM/SIGUSR1/SIGINT/SIGHUP or a vanished parent; checked at step boundaries (saving inside a
    signal handler can deadlock)."""

    def __init__(self):
        self.signal: int | None = None
        self.reason: str = ""
        self.installed = False
        self._interrupting = 0
        self._from_watch = False

    def install(self):
        """Catch the stop signals from now on; call it before slow imports, since a signal that
        arrives while the framework loads would otherwise end the process by default."""
        # SIGINT: Ctrl-C; SIGHUP: the terminal (or the workspace's browser tab) closed
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._handler)
        self.installed = True

    def reclaim(self) -> list[str]:
        """Catch the stop signals again where a framework put its own handler in (Lightning's
        SIGTERM handler ends its loop at a batch's end, without the job's save); returns the
        names of the signals taken back."""
        if not self.installed:
            return []
        taken = [sig for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP)
                 if signal.getsignal(sig) != self._handler]
        for sig in taken:
            signal.signal(sig, self._handler)
        return [signal.Signals(sig).name for sig in taken]

    def _handler(self, signum, frame):
        self.request(f"signal {signal.Signals(signum).name}", signum)
        if self._interrupting:
            raise StopRequested(self.reason)

    @contextlib.contextmanager
    def interrupting(self):
        """Within it, a stop signal raises StopRequested at once (in the main thread, which a
        blocking read or a long load then leaves) instead of waiting for the next step boundary;
        a stop requested before it is raised on entry."""
        if self:
            raise StopRequested(self.reason)
        self._interrupting += 1
        try:
            yield
        finally:
            self._interrupting -= 1

    def request(self, reason: str, signum: int | None = None) -> None:
        """The first reason wins, except that a signal names the cause better than a vanished
        parent does: a scheduler's signal (SLURM's SIGUSR1 to every process of the job) ends the
        job's Snakemake in the same instant, and the watch may see that first."""
        if not self.reason or (signum is not None and self.signal is None and self._from_watch):
            self.signal, self.reason = signum, reason
            self._from_watch = False

    def request_from_watch(self, reason: str) -> None:
        if not self.reason:
            self.request(reason)
            self._from_watch = True

    def clear(self) -> None:
        self.signal, self.reason, self._from_watch = None, "", False

    def __bool__(self):
        return bool(self.reason)


STOP = StopFlag()  # one per process: signals are process-wide


def watch_parent(stop: StopFlag = STOP, pid: int | None = None, period: float = 0.5) -> threading.Thread | None:
    """Request a stop when the Snakemake process that started this job is gone, or, in one of
    several processes, the launcher that started it.

    ``kill -9`` of Snakemake leaves its jobs running with no one to collect them; the local
    executor does not pass its death on. The PID comes from the environment the workflow set;
    its start time guards against the PID being reused. Returns the watching thread, or None
    when there is nothing to watch. A signal that arrives after the parent's end still names the
    stop (it is what ended the parent too; ``StopFlag.request``). The stop itself is not delayed:
    an orphaned job must save and end at once."""
    if pid is None:
        text = os.environ.get(PARENT_ENV, "")
        pid = int(text) if text.isdigit() else None
    watched = []  # (pid, its start time, what it is)
    if pid is not None and pid != os.getpid():
        watched.append((pid, _start_ticks(pid), f"the Snakemake process {pid} that started this job"))
    # a rank also watches its launcher (torchrun: the job's own process): killed, it cannot end its
    # ranks, which would train on unsupervised, holding the run's lock against the retry
    launcher = os.environ.get(JOB_PID_ENV, "") if os.environ.get("WORLD_SIZE") else ""
    if launcher.isdigit() and int(launcher) != os.getpid():
        watched.append((int(launcher), _start_ticks(int(launcher)),
                        f"the launcher (torchrun, pid {launcher}) of this job's processes"))
    watched = [w for w in watched if w[1] is not None]
    if not watched:
        return None

    def watch():
        while not stop:
            for pid_, born, what in watched:
                if _start_ticks(pid_) != born:
                    stop.request_from_watch(f"{what} is gone")
                    return
            time.sleep(period)

    thread = threading.Thread(target=watch, name="watch-parent", daemon=True)
    thread.start()
    return thread
