"""The pipeline's PyTorch loop beyond the basics: mixed precision, accumulation, clipping, a
metric-driven scheduler. Each resumes bitwise identically across segments."""

import json

import pytest
import torch

from segtrain.layout import SEGMENT_STATE

from conftest import MLP, Project, assert_bitwise_equal, final_state

pytestmark = pytest.mark.e2e

TOTAL = 300
VARIANTS = {
    "bf16": {**MLP, "precision": "bf16"},
    "fp16": {**MLP, "precision": "fp16"},  # with a GradScaler, whose state is checkpointed
    "accum": {**MLP, "accumulate": 4, "clip_grad_norm": 0.5},
    "plateau": {"task": "tasks/plateau_digits_torch.py", "validation_split": 0.2, "eval_every": 25},
    # an augmenting map-style Dataset fetched by loader workers, with accumulation
    "workers": {"task": "tasks/augment_digits_torch.py", "num_workers": 2, "accumulate": 2},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    p = Project(tmp_path_factory.mktemp("training") / "proj")
    runs = {}
    for name, settings in VARIANTS.items():
        runs[f"{name}-1"] = {**settings, "total_steps": TOTAL, "steps_per_segment": TOTAL}
        runs[f"{name}-3"] = {**settings, "total_steps": TOTAL, "steps_per_segment": 110}  # cuts off the interval
    runs["fp32-1"] = {**MLP, "total_steps": TOTAL, "steps_per_segment": TOTAL}  # what the settings change
    runs["workers1-1"] = {**VARIANTS["workers"], "num_workers": 1, "total_steps": TOTAL, "steps_per_segment": TOTAL}
    runs["fast"] = {**MLP, "total_steps": 50, "deterministic": False, "resume_check": "warn"}
    runs["accum-1"]["resume_check"] = "auto"  # deterministic: refuse unless bitwise
    p.write_config(runs, checkpoint={"every_steps": 40})
    p.snakemake()
    return p


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_across_segments_is_bitwise_identical(trained, variant):
    assert len(list((trained.paths(f"{variant}-3").segments).iterdir())) == 3
    assert_bitwise_equal(final_state(trained, f"{variant}-3"), final_state(trained, f"{variant}-1"))
    if variant not in ("plateau", "workers"):  # the setting took effect: the weights differ from plain fp32 training
        import numpy as np

        plain, mine = final_state(trained, "fp32-1"), final_state(trained, f"{variant}-1")
        assert any(not np.array_equal(plain[k], mine[k]) for k in plain if k.startswith("model."))


def test_fp16_checkpoints_hold_the_loss_scale(trained):
    last = sorted((trained.paths("fp16-3").segments).iterdir())[-1] / SEGMENT_STATE / "state.pt"
    scaler = torch.load(last, weights_only=True)["tracked"]["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler


def test_accumulation_takes_micro_batches_and_the_plan_says_so(trained):
    plan = (trained.run_dir("accum-1") / "plan.txt").read_text()
    assert "4 micro-batch(es) of 32 per step (128 samples), gradients clipped to norm 0.5" in plan
    # measured by the measure job's resume check, and true: accum-3 ends bitwise equal to accum-1
    assert json.loads((trained.paths("accum-1").plan).read_text())["bitwise_resume"] is True
    assert "resume checked: bitwise identical at step 4 after a restore at step 2" in plan


def test_the_plateau_scheduler_lowered_the_rate_on_the_monitored_metric(trained):
    import pandas as pd

    rates = pd.read_csv(trained.run_dir("plateau-3") / "metrics.csv")["lr"].dropna()
    assert rates.iloc[-1] < rates.iloc[0]  # it stepped on val_loss, and its state crossed the cuts


def test_a_run_that_gives_up_determinism_is_told_so_in_its_plan(trained):
    plan = (trained.run_dir("fast") / "plan.txt").read_text()
    verdict = json.loads((trained.paths("fast").plan).read_text())["resume_check"]
    assert "resume checked: " in plan and verdict["text"] in plan
    if verdict["bitwise"]:  # bitwise here: the plan says that other kernels may round differently
        assert "deterministic: false" in plan and "measured on this machine's kernels" in plan
    else:  # two straight jobs already differ: the kernels are named, not the resume
        assert "non-deterministic kernels" in verdict["text"]
    assert json.loads((trained.paths("fast").plan).read_text())["bitwise_resume"] is verdict["bitwise"]


def test_the_number_of_loader_workers_does_not_change_the_result(trained):
    assert_bitwise_equal(final_state(trained, "workers1-1"), final_state(trained, "workers-1"))
