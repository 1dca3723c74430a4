"""A minimal init for a job's container: ``python -m segtrain.podinit -- COMMAND...``.

Kubernetes stops a pod by sending SIGTERM to the container's PID 1 only, and SIGKILL after the
grace period. The Kubernetes executor plugin makes ``/bin/sh -c "A && B && python -m snakemake ..."``
PID 1; the kernel delivers no signal to a PID 1 that has no handler for it, and dash installs
none, so training never hears of the stop and is killed without its save.

This init runs COMMAND in a session of its own, passes every stop signal on to that whole
process group (Snakemake, its job shell and the training process, which saves on SIGTERM), reaps
whatever is orphaned to it, and exits only when no process of the job is left, with the
command's exit status. Exiting earlier would take every process of the PID namespace down with
it, the training in the middle of its save included.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)
PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    """Outside a PID namespace (a test, a plain container runtime) orphans of the job still come
    to this process, so it can wait for all of them."""
    if os.getpid() == 1:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def run(command: list[str]) -> int:
    _become_subreaper()

    def forward(signum, frame):
        try:
            if os.getpid() == 1:  # the pod's init: every process of the pod, as its stop means
                os.kill(-1, signum)
            else:
                os.killpg(child, signum)
        except ProcessLookupError:  # all gone already; the loop below ends soon
            pass

    # Block the stop signals until the child exists, so none arrives with nobody to forward it to.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    child = os.fork()
    if child == 0:
        os.setsid()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            print(f"segtrain.podinit: cannot run {command[0]}: {exc}", file=sys.stderr)
            os._exit(127)
    for signum in FORWARDED:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)

    status = None
    while True:
        try:
            pid, raw = os.waitpid(-1, 0)
        except ChildProcessError:  # nothing left: the command and everything it started are done
            break
        except InterruptedError:
            continue
        if pid == child:
            status = os.waitstatus_to_exitcode(raw)
    if status is None:
        return 1
    return 128 - status if status < 0 else status  # a signal's death as a shell reports it


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m segtrain.podinit -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
