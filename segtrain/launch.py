"""Starting a segment job as several processes: the job's command becomes ``torchrun`` running
the same command once per process (``processes`` in the run's settings).

The launcher gets no restarts of its own (``--max-restarts 0``: Snakemake owns retries, and a
retry resumes from the newest checkpoint every rank wrote), forwards every stop signal the
clusters send (SLURM's SIGUSR1 included, which torchrun does not forward by default and which
would kill it unhandled), finds a free rendezvous port itself (``--standalone``), and gives the
ranks the run's grace period to save and exit after a signal before it kills them.
"""

from __future__ import annotations

import json
import os
import sys

from .lifecycle import JOB_PID_ENV

FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
# The job's arguments reach the ranks through the environment: torchrun's own parser reads
# options anywhere on its command line, and takes --run or --log for an abbreviation of its own
ARGUMENTS_ENV = "SEGTRAIN_RANK_ARGUMENTS"


def torchrun_argv(processes: int, script: str, grace_seconds: float) -> list[str]:
    """The command that runs ``script`` as ``processes`` ranks on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "--max-restarts=0", f"--signals-to-handle={','.join(FORWARDED_SIGNALS)}",
            f"--shutdown-timeout={max(1, int(grace_seconds))}", "--monitor-interval=0.5", script]


def arguments(environ=None) -> list[str]:
    """This command's arguments: its own, or, in a rank, those the job's command was given."""
    environ = os.environ if environ is None else environ
    given = environ.get(ARGUMENTS_ENV)
    return json.loads(given) if given and environ.get("WORLD_SIZE") else sys.argv[1:]


def as_ranks(processes: int, grace_seconds: float, environ=None) -> None:
    """Replace this process by torchrun starting ``processes`` copies of this command, unless
    this process already is one of them (or one process is asked for). Returns only then."""
    environ = os.environ if environ is None else environ
    if processes <= 1 or environ.get("WORLD_SIZE"):
        return
    argv = torchrun_argv(processes, sys.argv[0], grace_seconds)
    environ[ARGUMENTS_ENV] = json.dumps(sys.argv[1:])
    environ[JOB_PID_ENV] = str(os.getpid())  # the launcher keeps this PID: the ranks' job clock starts with it
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, environ)


def rank_label(environ=None) -> str:
    """'rank N: ' for a process of several, for its log lines; '' for one alone."""
    environ = os.environ if environ is None else environ
    if int(environ.get("WORLD_SIZE", "1") or 1) > 1:
        return f"rank {environ.get('RANK', '?')}: "
    return ""
