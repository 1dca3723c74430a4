"""Segments trained by two processes (torchrun, DDP over gloo on CPU), through the real
snakemake command: the same result in 1 segment, in 4, and in 4 with a rank killed; a stop
signal to the launcher stops both ranks at the same step with one complete checkpoint."""

import json
import os
import signal
import time

import pytest

from segtrain import store as st

from conftest import CNN, assert_bitwise_equal, final_state
from support import wait_for_checkpoint

pytestmark = pytest.mark.e2e

# dropout draws from each rank's own stream: every rank's streams must come back on a resume
RANKED = {**CNN, "params": {**CNN["params"], "channels": 4}, "processes": 2, "batch_size": 32,
          "checkpoint": {"every_steps": 15}, "total_steps": 120}


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


def test_two_processes_in_one_segment_in_four_and_with_a_rank_killed_end_bitwise_identical(project):
    project.write_config({"whole": {**RANKED, "steps_per_segment": 120},
                          "cut": {**RANKED, "steps_per_segment": 30}})
    project.snakemake()
    whole = final_state(project, "whole")
    assert_bitwise_equal(whole, final_state(project, "cut"))
    manifest = st.verify(project.paths("cut").store / st.step_dir_name(120))
    assert manifest["world_size"] == 2 and set(manifest["files"]) == {"state.pt", "rank-00001.pt"}

    # a resume at another number of processes is another trajectory: refused before any job
    project.write_config({"cut": {**RANKED, "steps_per_segment": 30, "processes": 1}})
    r = project.snakemake("-n", check=False)
    assert r.returncode != 0 and "processes (2 -> 1)" in r.stdout + r.stderr

    project.write_config({"killed": {**RANKED, "steps_per_segment": 30}})
    store_root = project.paths("killed").store
    proc = project.popen()
    wait_for_checkpoint(store_root, 45, proc)  # segment 1, past its first save
    launcher, rank0, rank1 = ranks_of(store_root)
    os.kill(rank1, signal.SIGKILL)  # one rank dies (out of memory, a lost GPU): the other must not hang
    proc.wait(timeout=300)
    killed_at = st.CheckpointStore(store_root).newest_valid().step
    assert 45 <= killed_at < 60
    for pid in (launcher, rank0):
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    project.snakemake("--rerun-incomplete")
    starts = [(a["segment"], a["resumed_from"]) for a in project.attempts("killed") if "resumed_from" in a]
    assert (1, killed_at) in starts, starts
    assert_bitwise_equal(whole, final_state(project, "killed"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_to_the_launcher_stops_both_ranks_at_the_same_step_with_one_checkpoint(project, sig):
    slow = {"task": "tasks/slow_digits_torch.py", "params": {"pause": 0.02}, "processes": 2, "total_steps": 400,
            "steps_per_segment": 400, "checkpoint": {"every_steps": 40}}
    project.write_config({"r": slow})
    store_root = project.paths("r").store
    proc = project.popen()
    wait_for_checkpoint(store_root, 40, proc)
    time.sleep(0.5)
    launcher, rank0, rank1 = ranks_of(store_root)
    os.kill(launcher, sig)  # SLURM's --signal and a pod's stop signal reach the launcher
    proc.wait(timeout=300)
    stopped = [a for a in project.attempts("r") if a.get("status") == "stopped"]
    assert len(stopped) == 1, project.attempts("r")
    step = stopped[0]["end_step"]
    assert 40 < step < 400 and stopped[0]["saved_step"] == step, stopped
    assert signal.Signals(sig).name in stopped[0]["reason"]
    ck = st.CheckpointStore(store_root).newest_valid()
    assert ck.step == step and set(ck.manifest["files"]) == {"state.pt", "rank-00001.pt"}
    log = "".join(p.read_text() for p in (project.root / "logs" / "train_segment" / "r").glob("*.log"))
    assert f"stopped at step {step}" in log
    records = [json.loads(line) for line in (store_root / "attempts.jsonl").read_text().splitlines()]
    assert sum(1 for r in records if "launched" in r) == 1  # one launch record, not one per rank
