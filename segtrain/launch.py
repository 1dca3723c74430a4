"""Starting a segment job as several processes: the job's command becomes ``torchrun`` running
the same command once per process (``processes`` in the run's settings), and, for a run on
several nodes (``nodes``), first ``srun`` starting one ``torchrun`` per node of the SLURM job.

The launcher gets no restarts of its own (``--max-restarts 0``: Snakemake owns retries, and a
retry resumes from the newest checkpoint every rank wrote), forwards every stop signal the
clusters send (SLURM's SIGUSR1 included, which torchrun does not forward by default and which
would kill it unhandled), finds a free rendezvous port itself (one node: ``--standalone``;
several: a free port of the job's first node, where this command runs, and torchrun's c10d
rendezvous there), and gives the ranks the run's grace period to save and exit after a signal
before it kills them.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from .lifecycle import JOB_PID_ENV, JOB_STARTED_ENV, PARENT_ENV, process_age

FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
# The job's arguments reach the ranks through the environment: torchrun's own parser reads
# options anywhere on its command line, and takes --run or --log for an abbreviation of its own
ARGUMENTS_ENV = "SEGTRAIN_RANK_ARGUMENTS"
# Set for the per-node commands srun starts: where the c10d rendezvous is (host:port)
RENDEZVOUS_ENV = "SEGTRAIN_RENDEZVOUS"
# Set for the processes this module starts: their WORLD_SIZE is this job's, not one inherited
LAUNCHED_ENV = "SEGTRAIN_LAUNCHED"
# What a launcher gives its processes. Left in the environment Snakemake starts from (a Kubeflow
# pod sets WORLD_SIZE, a shell inside another torchrun job has them all), they are not this job's.
INHERITED_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                       "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


class LaunchError(RuntimeError):
    """The job cannot start its processes as the run's settings ask."""


TORCHRUN = (sys.executable, "-m", "torch.distributed.run")


def _options(processes: int, grace_seconds: float) -> list[str]:
    return [f"--nproc-per-node={processes}", "--max-restarts=0", f"--signals-to-handle={','.join(FORWARDED_SIGNALS)}",
            f"--shutdown-timeout={max(1, int(grace_seconds))}", "--monitor-interval=0.5"]


def torchrun_argv(processes: int, script: str, grace_seconds: float) -> list[str]:
    """The command that runs ``script`` as ``processes`` ranks on this machine."""
    return [*TORCHRUN, "--standalone", *_options(processes, grace_seconds), script]


def node_argv(processes: int, nodes: int, script: str, grace_seconds: float, rendezvous: str, job: str) -> list[str]:
    """The command one node runs: its ``processes`` ranks, meeting the other nodes' at ``rendezvous``."""
    return [*TORCHRUN, *_options(processes, grace_seconds), f"--nnodes={nodes}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rendezvous}", f"--rdzv-id=segtrain-{job}", script]


def srun_argv(nodes: int, cpus_per_node: int, command: list[str]) -> list[str]:
    """The command that starts ``command`` once per node of this SLURM job, each with the node's
    CPUs; the SLURM job's own geometry (``--nodes N --ntasks N``, from the rule's resources)
    places one on each node. A node whose launcher fails ends the others at once."""
    return ["srun", f"--ntasks={nodes}", f"--cpus-per-task={cpus_per_node}", "--kill-on-bad-exit=1",
            "--export=ALL", *command]


def free_port() -> int:
    """A TCP port free on this host now (the rendezvous binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def arguments(environ=None) -> list[str]:
    """This command's arguments: its own, or, in a rank, those the job's command was given."""
    environ = os.environ if environ is None else environ
    given = environ.get(ARGUMENTS_ENV)
    return json.loads(given) if given and (environ.get("WORLD_SIZE") or environ.get(RENDEZVOUS_ENV)) else sys.argv[1:]


def _exec(argv: list[str], environ) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, environ)


def as_ranks(processes: int, grace_seconds: float, environ=None, *, nodes: int = 1, cpus_per_node: int = 1) -> None:
    """Replace this process by the launcher of the run's ranks, unless this process already is
    one of them (or one process is asked for). Returns only then.

    One node: torchrun starting ``processes`` copies of this command. Several: srun starting
    this command once per node of the SLURM job, each of which (``RENDEZVOUS_ENV`` set) becomes
    a torchrun of ``processes`` ranks."""
    environ = os.environ if environ is None else environ
    if environ.get(LAUNCHED_ENV) and environ.get("WORLD_SIZE"):
        return  # one of the ranks this job's launcher started
    inherited = {v: environ.pop(v) for v in INHERITED_VARIABLES if v in environ and not environ.get(LAUNCHED_ENV)}
    if inherited:
        print(f"segtrain: left out of this job: {' '.join(f'{k}={v}' for k, v in inherited.items())}, inherited from "
              f"the environment Snakemake was started in; the run's processes ({processes}) and nodes ({nodes}) "
              "decide how many processes train", file=sys.stderr, flush=True)
    if processes <= 1 and nodes <= 1:
        return
    environ[LAUNCHED_ENV] = "1"
    if nodes <= 1:
        environ[ARGUMENTS_ENV] = json.dumps(sys.argv[1:])
        environ[JOB_PID_ENV] = str(os.getpid())  # the launcher keeps this PID: the ranks' job clock starts with it
        _exec(torchrun_argv(processes, sys.argv[0], grace_seconds), environ)
    rendezvous = environ.get(RENDEZVOUS_ENV)
    if rendezvous:  # one node's command, started by srun
        _exec(node_argv(processes, nodes, sys.argv[0], grace_seconds, rendezvous, environ.get("SLURM_JOB_ID", "0")),
              environ)
    job = environ.get("SLURM_JOB_ID")
    if not job:
        raise LaunchError(f"nodes: {nodes} trains each segment on {nodes} nodes of a SLURM job, and this job runs "
                          "outside SLURM: run with --profile profiles/slurm, or set nodes: 1")
    environ[ARGUMENTS_ENV] = json.dumps(sys.argv[1:])
    environ[RENDEZVOUS_ENV] = f"{socket.gethostname()}:{free_port()}"
    # the job's clock on every node: the wall-clock time this command started (the nodes share no PIDs)
    environ[JOB_STARTED_ENV] = repr(time.time() - process_age())
    # Snakemake runs on this node only: the other nodes cannot watch its PID. Under SLURM the
    # job's end (walltime, scancel) reaches every node's processes as a signal instead.
    environ.pop(PARENT_ENV, None)
    _exec(srun_argv(nodes, cpus_per_node, [sys.executable, sys.argv[0]]), environ)


def rank_label(environ=None) -> str:
    """'rank N: ' for a process of several, for its log lines; '' for one alone."""
    environ = os.environ if environ is None else environ
    if int(environ.get("WORLD_SIZE", "1") or 1) > 1:
        return f"rank {environ.get('RANK', '?')}: "
    return ""
