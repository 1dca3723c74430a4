"""Segments trained by two processes (torchrun, DDP over gloo on CPU), through the real
snakemake command: the same result in 1 segment, in 4, and in 4 with a rank killed; a stop
signal to the launcher stops both ranks at the same step with one complete checkpoint."""

import json
import os
import signal
import time

import pytest
import torch

from segtrain import store as st
from segtrain.layout import RunPaths, run_root

from conftest import CNN, assert_bitwise_equal, final_state, model_file
from support import ranks_of, wait_for_checkpoint

pytestmark = pytest.mark.e2e

# dropout draws from each rank's own stream: every rank's streams must come back on a resume
RANKED = {**CNN, "params": {**CNN["params"], "channels": 4}, "processes": 2, "batch_size": 32,
          "checkpoint": {"every_steps": 15}, "total_steps": 120}


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

    # the killed run writes its checkpoints in the background (each rank its files, committed
    # together by a writer thread on a process group of its own)
    project.write_config({"killed": {**RANKED, "steps_per_segment": 30, "async_save": True}})
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


def test_a_resume_at_another_number_of_processes_is_refused_and_allowed_it_trains_the_same_samples(project):
    """2 processes resumed with 1 and 1 resumed with 2: refused before any job, naming the key;
    with allow_reshard they finish, every step trains the samples of the uninterrupted run, and
    the plan, the log and the manifests say the result is not bitwise identical."""
    indexed = {"task": "tasks/indexed_digits_torch.py", "batch_size": 32, "total_steps": 80,
               "checkpoint": {"every_steps": 20}, "log_every": 1}
    runs = {"down": {**indexed, "processes": 2, "steps_per_segment": 40},
            "up": {**indexed, "processes": 1, "steps_per_segment": 40},
            "whole": {**indexed, "processes": 1, "steps_per_segment": 80}}
    project.write_config(runs)
    first = [str(RunPaths(run_root(r)).segment_dir(0)) for r in ("down", "up")]  # one segment each
    project.snakemake(*first, str(run_root("whole") / "metrics.csv"))
    runs["down"]["processes"], runs["up"]["processes"] = 1, 2
    project.write_config(runs)
    refused = project.snakemake("-n", check=False)
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "processes (2 -> 1)" in out and "set allow_reshard: true" in out
    assert not project.paths("down").segment_dir(1).exists()

    for name in ("down", "up"):
        runs[name]["allow_reshard"] = True
    project.write_config(runs)
    project.snakemake(*(str(run_root(r) / "metrics.csv") for r in ("down", "up")))
    import pandas as pd

    def samples(run):
        m = pd.read_csv(project.run_dir(run) / "metrics.csv").drop_duplicates("step", keep="last")
        return m.set_index("step")[["index_mean", "index_square_mean"]]

    reference = samples("whole")
    assert list(reference.index) == list(range(1, 81))
    for name, (before, after) in (("down", (2, 1)), ("up", (1, 2))):
        pd.testing.assert_frame_equal(samples(name), reference, check_exact=True)
        manifest = st.verify(project.paths(name).store / st.step_dir_name(80))
        assert manifest["resharded"] == [{"step": 40, "from": before, "to": after}]
        assert "NOT bitwise identical" in (project.run_dir(name) / "plan.txt").read_text()
        log = (project.root / "logs" / "train_segment" / name / "0001.log").read_text()
        assert f"written by {before} process(es) and resumes with {after}" in log


def test_a_script_with_seg_world_and_ddp_in_two_processes_ends_bitwise_identical_after_a_rank_is_killed(project):
    """A user's loop with DistributedDataParallel, seg.world and seg.dataloader: 1 segment, and 4
    with a SIGKILL of rank 1 mid-segment, end bitwise identical; the checkpoint holds both ranks'
    streams and the plain (unwrapped) weights."""
    script = {"script": "tasks/script_ddp_torch.py", "processes": 2, "total_steps": 200,
              "checkpoint": {"every_steps": 20}}
    project.write_config({"whole": {**script, "steps_per_segment": 200}, "cut": {**script, "steps_per_segment": 50}})
    store_root = project.paths("cut").store
    proc = project.popen()
    wait_for_checkpoint(store_root, 70, proc)  # segment 1, past its first save
    launcher, rank0, rank1 = ranks_of(store_root)
    os.kill(rank1, signal.SIGKILL)
    proc.wait(timeout=300)
    killed_at = st.CheckpointStore(store_root).newest_valid().step
    assert 70 <= killed_at < 100
    project.snakemake("--rerun-incomplete")
    starts = [(a["segment"], a["resumed_from"]) for a in project.attempts("cut") if "resumed_from" in a]
    assert (1, killed_at) in starts, starts
    assert_bitwise_equal(final_state(project, "whole"), final_state(project, "cut"))
    manifest = st.verify(project.paths("cut").store / st.step_dir_name(200))
    assert manifest["world_size"] == 2 and set(manifest["files"]) == {"state.pt", "rank-00001.pt"}
    import torch

    exported = torch.load(project.run_dir("cut") / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in exported)  # the plain module's weights, not DDP's
    assert json.loads((project.run_dir("cut") / "costs.json").read_text())["processes"] == 2


def test_fsdp2_in_one_segment_and_in_three_ends_bitwise_identical_from_sharded_checkpoints(project):
    # the best is the first evaluation (mode max), at step 10, between two saves: both ranks write it
    sharded = {**RANKED, "data_parallel": "fsdp2", "eval_every": 10, "monitor": "val_loss", "mode": "max"}
    project.write_config({"whole": {**sharded, "steps_per_segment": 120},
                          "thirds": {**sharded, "steps_per_segment": 40, "async_save": True}})
    project.snakemake()
    assert_bitwise_equal(final_state(project, "whole"), final_state(project, "thirds"))
    # every checkpoint holds each rank's shards, hashed in the manifest; the export is one whole model
    manifest = st.verify(project.paths("thirds").store / st.step_dir_name(120))
    assert manifest["world_size"] == 2 and manifest["state_format"] == "torch-sharded"
    assert set(manifest["files"]) == {"state.pt", "shard-00000.pt", "shard-00001.pt"}
    rows = [torch.load(project.paths("thirds").store / st.step_dir_name(120) / f"shard-0000{r}.pt",
                       weights_only=True)["tracked"]["model"]["0.weight"] for r in (0, 1)]
    exported = torch.load(model_file(project, "thirds"), weights_only=True)
    assert [r["__rows_of_dim0__"].shape[0] for r in rows] == [2, 2] and exported["0.weight"].shape == (4, 1, 3, 3)
    assert_bitwise_equal(torch.load(model_file(project, "whole"), weights_only=True), exported)
    # the best checkpoint (evaluated between saves: written by both ranks) is whole and exported
    best = json.loads((project.run_dir("thirds") / "segments" / "0002" / "segment.json").read_text())["best"]
    assert best["step"] % 15, f"the test wants a best checkpoint between two saves: {best}"
    assert set(st.verify(project.paths("thirds").store / "best" / st.step_dir_name(best["step"]))["files"]) == \
        {"state.pt", "shard-00000.pt", "shard-00001.pt"}
    assert_bitwise_equal(torch.load(model_file(project, "whole", best=True), weights_only=True),
                         torch.load(model_file(project, "thirds", best=True), weights_only=True))


def test_a_script_that_shards_its_model_with_fsdp2_resumes_bitwise_from_its_shards(project):
    """A user's loop that calls fully_shard itself (seg.world), with a schedule: 1 segment and 3
    end bitwise identical; each checkpoint holds both ranks' shards, the export one whole model."""
    script = {"script": "tasks/script_fsdp_torch.py", "processes": 2, "total_steps": 120,
              "checkpoint": {"every_steps": 20}}
    project.write_config({"whole": {**script, "steps_per_segment": 120}, "thirds": {**script, "steps_per_segment": 40}})
    project.snakemake()
    assert_bitwise_equal(final_state(project, "whole"), final_state(project, "thirds"))
    manifest = st.verify(project.paths("thirds").store / st.step_dir_name(120))
    assert manifest["state_format"] == "torch-sharded"
    assert set(manifest["files"]) == {"state.pt", "shard-00000.pt", "shard-00001.pt"}
    exported = torch.load(model_file(project, "thirds"), weights_only=True)
    assert exported["0.weight"].shape == (4, 1, 3, 3) and exported["4.weight"].shape == (10, 256)
    assert_bitwise_equal(torch.load(model_file(project, "whole"), weights_only=True), exported)
