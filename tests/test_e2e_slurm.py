"""A real single-node SLURM kills the segments at a 1-minute walltime; retries finish the run.

The suite starts SLURM itself (tests/slurm/start-slurm.sh: Debian's slurm-wlm and munge, as root).
Where that is impossible the test is skipped with the reason; in CI (CI=true) it must run.
"""

import os
import subprocess

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


def test_segments_killed_by_slurm_walltime_resume_by_retries_and_end_bitwise_identical(tmp_path, slurm):
    runs = {
        "torch-slurm": {"task": "tasks/slow_digits_torch.py", "params": {"pause": 0.04}},
        "keras-slurm": {"task": "tasks/slow_digits_keras.py", "framework": "keras", "params": {"pause": 0.04}},
    }
    common = {"total_steps": 1000, "checkpoint": {"every_steps": 40}}
    settings = dict(time_limit="3m", safety_margin="5s", measure_steps=3, measure_saves=2)

    # the reference: the same runs without the pause, on the local executor, uninterrupted
    ref = Project(tmp_path / "ref")
    ref.write_config({name: {**spec, **common, "params": {"pause": 0.0}} for name, spec in runs.items()}, **settings)
    ref.snakemake()

    # Under SLURM the plan expects 3-minute jobs, but the partition allows only 1 minute (e.g. a
    # lower limit or preemption): SLURM sends SIGTERM at the walltime, and every retry resumes.
    p = Project(tmp_path / "slurm")
    p.write_config({name: {**spec, **common} for name, spec in runs.items()}, **settings)
    p.snakemake("--profile", "profiles/slurm",
                "--set-resources", "train_segment:runtime=1", "train_segment:slurm_extra='--signal=USR1@15'",
                "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "5",
                "--retries", "6", timeout=1200)
    for name in runs:
        attempts = p.attempts(name)
        stops = [a for a in attempts if a.get("status") == "stopped"]
        assert stops, f"{name}: SLURM never stopped a segment: {attempts}"
        assert all("SIGTERM" in a["reason"] or "SIGUSR1" in a["reason"] for a in stops), \
            f"{name}: a stop not caused by SLURM's signal: {[a['reason'] for a in stops]}"
        resumed = [a for a in attempts if a.get("attempt", 1) > 1 and "resumed_from" in a]
        # a retry resumes from a periodic checkpoint, and never from older than what an earlier attempt
        # saved (under load a signal may also come during a restore: that attempt saved nothing new)
        assert any(a["source"].startswith("periodic checkpoint") for a in resumed), resumed
        for a in resumed:
            saved = [b["saved_step"] for b in attempts if b["segment"] == a["segment"]
                     and b.get("attempt", 1) < a["attempt"] and b.get("saved_step") is not None]
            assert not saved or a["resumed_from"] >= max(saved), (a, saved)
        assert_bitwise_equal(load_weights(model_file(ref, name)), load_weights(model_file(p, name)))
        assert_bitwise_equal(final_state(ref, name), final_state(p, name))


def test_a_run_on_two_nodes_started_by_srun_stopped_at_its_walltime_resumes_bitwise(tmp_path, slurm):
    """nodes: 2 runs the several-nodes path: the job's command runs srun, which starts one torchrun per
    task (--nnodes 2, c10d rendezvous on the job's first node). The test cluster has one node, so the
    job asks SLURM for 1 node and 2 tasks; srun places both node launchers on it."""
    spec = {"task": "tasks/slow_digits_torch.py", "total_steps": 800, "checkpoint": {"every_steps": 40}}
    settings = dict(time_limit="3m", safety_margin="5s", measure_steps=3, measure_saves=2)

    # the reference: 2 processes on one machine (the same world), uninterrupted, on the local executor
    ref = Project(tmp_path / "ref")
    ref.write_config({"two-nodes": {**spec, "processes": 2, "params": {"pause": 0.0}}}, **settings)
    ref.snakemake()

    p = Project(tmp_path / "slurm")
    p.write_config({"two-nodes": {**spec, "nodes": 2, "params": {"pause": 0.05}}}, **settings)
    refused = p.snakemake(check=False)  # the local executor has no nodes to give
    assert refused.returncode != 0 and "nodes: 2" in refused.stderr and "profiles/slurm" in refused.stderr
    p.snakemake("--profile", "profiles/slurm",
                "--set-resources", "train_segment:runtime=1", "train_segment:slurm_extra='--signal=USR1@15'",
                "train_segment:nodes=1", "measure_checkpoint_cost:nodes=1",
                "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "5",
                "--retries", "6", timeout=1200)
    attempts = p.attempts("two-nodes")
    stops = [a for a in attempts if a.get("status") == "stopped"]
    assert stops, f"SLURM never stopped a segment: {attempts}"
    assert all("SIGTERM" in a["reason"] or "SIGUSR1" in a["reason"] for a in stops), [a["reason"] for a in stops]
    launches = [(a["segment"], a["attempt"]) for a in attempts if "launched" in a]
    assert launches and len(launches) == len(set(launches)), f"a launch recorded by more than one rank: {launches}"
    # every attempt ran as 2 nodes of one process each: rank 0 on node 0, rank 1 on node 1
    log = "\n".join(f.read_text() for f in (p.root / "logs" / "train_segment" / "two-nodes").glob("*.log"))
    places = [line for line in log.splitlines() if "processes on 2 node(s)" in line]
    assert places and all("(node 0)" in line and "(node 1)" in line for line in places), log[-3000:]
    assert_bitwise_equal(load_weights(model_file(ref, "two-nodes")), load_weights(model_file(p, "two-nodes")))
    assert_bitwise_equal(final_state(ref, "two-nodes"), final_state(p, "two-nodes"))
