"""A user's own PyTorch training script (config key script), through the real snakemake command:
1 segment, 4 segments, and 4 segments with a SIGKILL of the training process, a SIGTERM and a
SIGKILL of Snakemake itself all end bitwise identical."""

import json
import os
import subprocess
import sys

import pytest
import torch

from segtrain.layout import SEGMENT_STATE

from conftest import REPO, Project, assert_bitwise_equal, final_state
from support import read_scalars, three_failures

pytestmark = pytest.mark.e2e

SCRIPT = "tasks/script_digits_torch.py"
TOTAL = 800


def script_run(args="", **more):
    return {"script": f"{SCRIPT} {args}".strip(), "total_steps": TOTAL, **more}


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    p = Project(tmp_path_factory.mktemp("script") / "proj")
    p.write_config({
        "s-1": script_run(steps_per_segment=TOTAL),
        "s-4": script_run(steps_per_segment=TOTAL // 4),
        "w-1": script_run("--workers 2", steps_per_segment=TOTAL),
        "w-2": script_run("--workers 1", steps_per_segment=TOTAL // 2),  # any worker count: same batches
        "own-2": script_run("--own-loader", steps_per_segment=TOTAL // 2, resume_check="warn"),
    })
    p.snakemake()
    return p


def test_a_script_split_into_segments_ends_bitwise_identical(scripted):
    assert len(list((scripted.paths("s-4").segments).iterdir())) == 4
    assert_bitwise_equal(final_state(scripted, "s-4"), final_state(scripted, "s-1"))
    state = torch.load(scripted.paths("s-4").segment_dir(3) / SEGMENT_STATE / "state.pt", weights_only=True)
    assert set(state["tracked"]) == {"model", "optimizer", "scheduler"}
    assert state["tracked"]["scheduler"]["last_epoch"] == TOTAL  # the schedule crossed every cut
    # the exported model is the tracked model's weights
    exported = torch.load(scripted.run_dir("s-4") / "model.pt", weights_only=True)
    assert all(torch.equal(exported[k], state["model"][k]) for k in exported)


def test_loader_workers_in_a_script_resume_exactly(scripted):
    assert_bitwise_equal(final_state(scripted, "w-2"), final_state(scripted, "w-1"))


def test_a_script_is_measured_planned_and_logged_like_a_task(scripted):
    import pandas as pd

    costs = json.loads((scripted.run_dir("s-4") / "costs.json").read_text())
    assert costs["measured_steps"] == 5 and costs["save_seconds"] > 0 and costs["checkpoint_bytes"] > 0
    assert costs["steps_per_epoch"] == 1500 // 32 and {"loss", "lr", "val_loss"} <= set(costs["metric_names"])
    assert costs["data_loader"] == "segtrain"
    plan = (scripted.run_dir("s-4") / "plan.txt").read_text()
    assert "the script's own loop (tasks/script_digits_torch.py)" in plan
    metrics = pd.read_csv(scripted.run_dir("s-4") / "metrics.csv")
    assert metrics["step"].is_unique and metrics["step"].max() == TOTAL
    assert metrics["lr"].iloc[-1] < metrics["lr"].iloc[0] and metrics["val_loss"].notna().any()


def test_a_script_with_its_own_loader_resumes_at_the_right_step_and_says_the_data_is_approximate(scripted):
    starts = [a for a in scripted.attempts("own-2") if "resumed_from" in a]
    assert [a["resumed_from"] for a in starts] == [0, TOTAL // 2]
    log = (scripted.root / "logs" / "train_segment" / "own-2" / "0001.log").read_text()
    assert "not bitwise identical" in log and "seg.dataloader(dataset, batch_size)" in log
    manifest = json.loads((scripted.paths("own-2").segment_dir(1) / SEGMENT_STATE / "manifest.json").read_text())
    assert manifest["data_position"].startswith("approximate")
    assert json.loads((scripted.run_dir("own-2") / "costs.json").read_text())["data_loader"] == "the script's own"
    # the measure job's resume check found it, named the loader, and every job says so (warn)
    plan = (scripted.run_dir("own-2") / "plan.txt").read_text()
    assert "resume checked: NOT bitwise identical after a restore at step 2" in plan
    assert "step 3's loss" in plan and "DataLoader" in plan and "shuffles" in plan and "seg.dataloader" in plan
    assert "resume checked: NOT bitwise identical" in log and "(resume_check: warn)" in log


def test_kills_and_a_sigterm_of_a_script_run_end_bitwise_identical(scripted):
    p = Project(scripted.root.parent / "killed")
    p.write_config({"k": script_run("--step-sleep 0.01", steps_per_segment=TOTAL // 4)}, log_every=1)
    three_failures(p, "k", TOTAL // 4, 50)
    assert_bitwise_equal(final_state(p, "k"), final_state(scripted, "s-1"))
    # TensorBoard's curves hold each step once, though steps were trained twice after each kill
    scalars = read_scalars(p.paths("k").tensorboard)
    assert sorted(s for s, tag in scalars if tag == "loss") == list(range(1, TOTAL + 1))


def test_a_script_that_leaves_the_loop_early_fails_with_the_reason(project):
    project.write_config({"b": script_run("--break-at 30", total_steps=100, steps_per_segment=100)})
    r = project.snakemake(check=False)
    assert r.returncode != 0
    log = (project.root / "logs" / "train_segment" / "b" / "0000.log").read_text()
    assert "seg.steps() must run to its end (no break out of it)" in log


def test_a_script_that_ends_its_process_with_status_0_fails_with_the_reason_not_as_missing_files(project):
    project.write_config({"x": script_run("--exit-at 30", total_steps=100, steps_per_segment=100)})
    r = project.snakemake("--retries", "5", check=False)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "latency" not in out.lower(), out[-3000:]
    assert "exited with status 0 before it finished segment 0" in out and "os._exit" in out
    attempts = [a for a in project.attempts("x") if "status" in a]
    # the same early exit twice: not tried again (not 6 attempts of missing files)
    assert 2 <= len(attempts) <= 3 and all(a["status"] == "error" for a in attempts), attempts
    assert "failed 2 times at step" in out and "with the same error" in out


def test_the_script_runs_alone_without_the_pipeline(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(REPO / "tests" / SCRIPT), "--steps", "120"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "without checkpoints" in r.stderr and "step 100/120" in r.stderr and "step 120/120" in r.stderr
    assert "evaluation at step 120: val_loss" in r.stderr  # alone, evaluate() runs once, at the end
    r = subprocess.run([sys.executable, str(REPO / "tests" / SCRIPT)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "segtrain.session(total_steps=100)" in r.stderr
