"""A real single-node SLURM stops the segments at a 2-minute walltime; retries finish the run.

The suite starts SLURM itself (tests/slurm/start-slurm.sh: Debian's slurm-wlm and munge, as root).
Where that is impossible the test is skipped with the reason; in CI (CI=true) it must run.
"""

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, Project, assert_bitwise_equal, final_state, load_weights, model_file

pytestmark = pytest.mark.e2e
SNAKEMAKE_TARGETS = ("models",)  # no test here reads the figures: plans and exports only


@pytest.fixture(scope="module")
def slurm():
    why = None
    if os.geteuid() != 0:
        why = "starting SLURM needs root"
    else:
        r = subprocess.run(["bash", str(REPO / "tests/slurm/start-slurm.sh")], capture_output=True, text=True)
        if r.returncode != 0:
            why = f"SLURM did not start: {r.stderr[-2000:]}"
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def _slurm_state(p: Project) -> str:
    """What SLURM and the runs looked like: printed when the test fails, so that a slow or stuck
    scheduler (a drained node, jobs left pending) is told apart from a pipeline fault."""
    out = []
    for cmd in (["sinfo", "-R"], ["sinfo"], ["squeue", "--states=all"]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        out.append(f"$ {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    for f in sorted((p.root / "results").glob("*/ckpt/attempts.jsonl")):
        out.append(f"{f.relative_to(p.root)}:\n{f.read_text()[-3000:]}")
    log = Path("/var/log/slurm/slurmctld.log")
    if log.exists():
        out.append("slurmctld.log (end):\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
    return "\n".join(out)


def test_runs_on_one_and_on_two_nodes_stopped_at_slurm_walltimes_resume_by_retries_and_end_bitwise(tmp_path, slurm):
    """Two runs under SLURM at once (their walltimes overlap, so the test waits for them once):
    one process, and ``nodes: 2``, the several-nodes path: the job's command runs srun, which starts
    one torchrun per task (--nnodes 2, c10d rendezvous on the job's first node). The test cluster
    has one node, so that job asks SLURM for 1 node and 2 tasks; srun places both node launchers on it.

    The plan expects 4-minute jobs, but the partition allows only 2 minutes (e.g. a lower limit or
    preemption): SLURM signals each job 15 s before its walltime, and every retry resumes. slurmctld
    checks time limits every 30 s, so a job's signal comes 75-105 s after it started: each run trains
    longer than that (a stop is certain), and the retries finish it, in 2 attempts on an idle machine.
    (A 1-minute walltime gave 15-45 s: a slow start-up, as under CI's load, took most of it, and a
    run needed up to 9 attempts.)"""
    task = {"task": "tasks/slow_digits_torch.py", "checkpoint": {"every_steps": 40}}
    runs = {"one-node": {**task, "total_steps": 2000, "params": {"pause": 0.05}},
            "two-nodes": {**task, "total_steps": 1600, "nodes": 2, "params": {"pause": 0.05}}}
    settings = dict(time_limit="4m", safety_margin="5s", measure_steps=3, measure_saves=2)

    # the references: the same runs without the pause, on the local executor, uninterrupted; the
    # two-node run's is 2 processes on one machine (the same world)
    ref = Project(tmp_path / "ref")
    ref.write_config({"one-node": {**runs["one-node"], "params": {"pause": 0.0}},
                      "two-nodes": {**task, "total_steps": 1600, "processes": 2, "params": {"pause": 0.0}}}, **settings)
    ref.snakemake()

    p = Project(tmp_path / "slurm")
    p.write_config(runs, **settings)
    refused = p.snakemake(check=False)  # the local executor has no nodes to give
    assert refused.returncode != 0 and "nodes: 2" in refused.stderr and "profiles/slurm" in refused.stderr
    try:
        p.snakemake("--profile", "profiles/slurm",
                    "--set-resources", "train_segment:runtime=2", "train_segment:slurm_extra='--signal=USR1@15'",
                    "train_segment:nodes=1", "measure_checkpoint_cost:nodes=1",
                    "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "5",
                    "--retries", "6", timeout=1500)
    except (AssertionError, subprocess.TimeoutExpired) as e:
        raise AssertionError(f"{str(e)[-6000:]}\n{_slurm_state(p)}") from None

    for name in runs:
        attempts = p.attempts(name)
        stops = [a for a in attempts if a.get("status") == "stopped"]
        assert stops, f"{name}: SLURM never stopped a segment: {attempts}"
        assert all("SIGTERM" in a["reason"] or "SIGUSR1" in a["reason"] for a in stops), \
            f"{name}: a stop not caused by SLURM's signal: {[a['reason'] for a in stops]}"
        resumed = [a for a in attempts if a.get("attempt", 1) > 1 and "resumed_from" in a]
        # a retry resumes from a periodic checkpoint, and never from older than what an earlier attempt
        # saved (a signal may also come during a restore: that attempt saved nothing new)
        assert any(a["source"].startswith("periodic checkpoint") for a in resumed), resumed
        for a in resumed:
            saved = [b["saved_step"] for b in attempts if b["segment"] == a["segment"]
                     and b.get("attempt", 1) < a["attempt"] and b.get("saved_step") is not None]
            assert not saved or a["resumed_from"] >= max(saved), (a, saved)
        assert_bitwise_equal(load_weights(model_file(ref, name)), load_weights(model_file(p, name)))
        assert_bitwise_equal(final_state(ref, name), final_state(p, name))

    attempts = p.attempts("two-nodes")
    launches = [(a["segment"], a["attempt"]) for a in attempts if "launched" in a]
    assert launches and len(launches) == len(set(launches)), f"a launch recorded by more than one rank: {launches}"
    # every attempt ran as 2 nodes of one process each: rank 0 on node 0, rank 1 on node 1
    log = "\n".join(f.read_text() for f in (p.root / "logs" / "train_segment" / "two-nodes").glob("*.log"))
    places = [line for line in log.splitlines() if "processes on 2 node(s)" in line]
    assert places and all("(node 0)" in line and "(node 1)" in line for line in places), log[-3000:]
