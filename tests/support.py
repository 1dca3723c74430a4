"""Helpers the end-to-end modules share: waiting for a checkpoint, the failures a run goes
through, reading TensorBoard's files back. (Fixtures and the Project helper are in conftest.py.)"""

import os
import signal
import time

import pytest

from segtrain import store as st
from segtrain.layout import working_metrics

from conftest import last_logged_step


def wait_for_checkpoint(store_root, min_step, proc, timeout=120):
    store = st.CheckpointStore(store_root)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(s >= min_step for s in store.steps()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended before step {min_step}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint at step >= {min_step} within {timeout} s")


def wait_for_logged_step(metrics_csv, step, proc, timeout=300):
    """Wait until the working metrics ``metrics_csv`` hold a row of ``step`` or later (the job is
    past it); fails at once when ``proc`` (the snakemake) ended, with its output."""
    deadline = time.time() + timeout
    while last_logged_step(metrics_csv) < step:
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended before step {step}:\n{proc.stdout.read()[-3000:]}")
        if time.time() > deadline:
            raise AssertionError(f"no row of step {step} in {metrics_csv} within {timeout} s")
        time.sleep(0.005)


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(c) for c in fh.read().split()]


def ranks_of(store_root) -> tuple[int, int, int]:
    """(launcher, rank 0, rank 1) of the segment training now: rank 0 holds the store's lock."""
    rank0 = int((store_root / ".lock").read_text().split()[1])
    with open(f"/proc/{rank0}/stat") as fh:
        launcher = int(fh.read().rsplit(")", 1)[1].split()[1])
    (rank1,) = [c for c in children(launcher) if c != rank0]
    return launcher, rank0, rank1


def newest_after_kill(store_root):
    ck = st.CheckpointStore(store_root).newest_valid()
    return ck.step


def three_failures(p, run, segment_steps, interval):
    """Train ``run`` of project ``p`` through a SIGKILL of the training process in segment 1, a
    SIGTERM in segment 2 past its first periodic save (the retry resumes at once) and a SIGKILL of
    Snakemake in segment 3 (then --unlock and --rerun-incomplete). Checks what each failure left
    and returns the attempts ledger."""
    store_root = p.paths(run).store
    # 1. SIGKILL of the training process in segment 1
    proc = p.popen()
    # the measure job, the plan and segment 0 come first: minutes on a busy machine
    wait_for_checkpoint(store_root, segment_steps + interval, proc, timeout=400)
    os.kill(int((store_root / ".lock").read_text().split()[1]), signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    killed_at = newest_after_kill(store_root)
    assert segment_steps + interval <= killed_at < 2 * segment_steps

    # 2. SIGTERM in segment 2, past its first save: saves at the step it finds, the retry resumes there
    proc = p.popen("--retries", "2")
    first_save = 2 * segment_steps + interval
    wait_for_checkpoint(store_root, first_save, proc)
    wait_for_logged_step(working_metrics(store_root, 2), first_save + 3, proc)
    # frozen (SIGSTOP) while the signal is sent, so that a busy machine cannot carry the job to its
    # segment's end before the SIGTERM lands; it arrives as the job runs again (SIGCONT)
    job = int((store_root / ".lock").read_text().split()[1])
    os.kill(job, signal.SIGSTOP)
    frozen_at = last_logged_step(working_metrics(store_root, 2))
    assert frozen_at < 3 * segment_steps - 1, f"the job reached step {frozen_at} before the SIGTERM"
    os.kill(job, signal.SIGTERM)
    os.kill(job, signal.SIGCONT)

    # 3. SIGKILL of Snakemake in segment 3
    wait_for_checkpoint(store_root, 3 * segment_steps + interval, proc)
    pid = int((store_root / ".lock").read_text().split()[1])
    proc.kill()
    proc.wait(timeout=60)
    deadline = time.time() + 60  # the job sees its Snakemake gone, saves and ends (segtrain.lifecycle)
    while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
        time.sleep(0.05)
    p.snakemake("--unlock")
    p.snakemake("--rerun-incomplete")

    attempts = p.attempts(run)
    stopped = [a for a in attempts if a.get("status") == "stopped" and "SIGTERM" in a.get("reason", "")]
    assert stopped and frozen_at <= stopped[0]["end_step"] < 3 * segment_steps, attempts
    assert stopped[0]["end_step"] > first_save and stopped[0]["end_step"] % interval != 0, attempts
    starts = [(a["segment"], a["resumed_from"]) for a in attempts if "resumed_from" in a]
    assert (1, killed_at) in starts and (2, stopped[0]["end_step"]) in starts
    assert sum(1 for segment, _ in starts if segment == 3) == 2  # segment 3 ran again after Snakemake's kill
    return attempts


def metric_rows(project, run):
    """The run's metrics over all its segments, one row per step (a retried step's last row)."""
    import pandas as pd

    frames = [pd.read_csv(f) for f in sorted(project.paths(run).segments.glob("*/metrics.csv"))]
    return pd.concat(frames).drop_duplicates("step", keep="last").set_index("step")


def read_scalars(folder):
    """(step, tag) -> value from every event file in ``folder``, with TensorFlow's reader (which
    checks each record's CRCs); a step logged twice for a tag fails."""
    tf = pytest.importorskip("tensorflow")
    found = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                key = (event.step, value.tag)
                assert key not in found, f"step {event.step} of {value.tag} appears twice"
                found[key] = value.simple_value
    return found
