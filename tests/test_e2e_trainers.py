"""Lightning and Hugging Face Trainer scripts with their segtrain callbacks, through the real
snakemake command: stopped mid-segment by SIGTERM, each resumes from the verified checkpoint at the
step it stopped and reaches the same final step. The weights' difference from an uninterrupted
run is printed: Lightning restarts its loader's epoch on a mid-epoch resume (not bitwise
identical); the Hugging Face Trainer skips the batches it has seen and ends bitwise identical."""

import os
import signal
import time

import pytest

from segtrain.layout import SEGMENT_STATE, working_metrics

from conftest import Project, last_logged_step
from support import wait_for_checkpoint

pytestmark = pytest.mark.e2e
SNAKEMAKE_TARGETS = ("models",)  # no test here reads the figures: plans and exports only

TOTAL = 300


def stopped_by_sigterm(tmp_path, script):
    """Runs ref (1 segment) and cut (2 segments, SIGTERM past step 70 with retries); returns the
    project and the step the stop saved at."""
    p = Project(tmp_path / "proj")
    p.write_config({
        "ref": {"script": script, "total_steps": TOTAL, "steps_per_segment": TOTAL},
        "cut": {"script": f"{script} --step-sleep 0.02", "total_steps": TOTAL, "steps_per_segment": TOTAL // 2},
    }, log_every=1, monitor="loss")
    store_root = p.paths("cut").store
    proc = p.popen("--retries", "2")
    wait_for_checkpoint(store_root, 50, proc, timeout=300)
    while last_logged_step(working_metrics(store_root, 0)) < 70:
        time.sleep(0.005)
    os.kill(int((store_root / ".lock").read_text().split()[1]), signal.SIGTERM)
    proc.wait(timeout=600)
    assert proc.returncode == 0, proc.stdout.read()[-3000:]

    attempts = p.attempts("cut")
    stopped = [a for a in attempts if a.get("status") == "stopped"]
    assert stopped and "SIGTERM" in stopped[0]["reason"] and 70 <= stopped[0]["end_step"] < TOTAL // 2
    assert stopped[0]["end_step"] % 50 != 0  # saved at the step the signal found, not at the last interval
    starts = [(a["segment"], a["resumed_from"]) for a in attempts if "resumed_from" in a]
    assert starts == [(0, 0), (0, stopped[0]["end_step"]), (1, TOTAL // 2)]
    return p, stopped[0]["end_step"]


def test_a_lightning_run_stopped_by_sigterm_resumes_at_its_step(tmp_path, measured):
    pytest.importorskip("lightning")
    import torch

    p, stopped_at = stopped_by_sigterm(tmp_path, "tasks/script_lightning.py")
    final = {}
    for run in ("ref", "cut"):
        ckpt = torch.load(p.paths(run).segment_dir(1) / SEGMENT_STATE / "lightning.ckpt" if run == "cut"
                          else p.paths(run).segment_dir(0) / SEGMENT_STATE / "lightning.ckpt", weights_only=True)
        assert ckpt["global_step"] == TOTAL
        final[run] = ckpt["state_dict"]
    exported = torch.load(p.run_dir("cut") / "model.pt", weights_only=True)
    assert all(torch.equal(exported[k], final["cut"][k]) for k in exported)
    diff = max((final["ref"][k] - final["cut"][k]).abs().max().item() for k in final["ref"])
    norm = max(final["ref"][k].abs().max().item() for k in final["ref"])
    measured("lightning", f"stopped at step {stopped_at}, resumed there; final step {TOTAL} in both; "
             f"max |weight difference| vs uninterrupted {diff:.4g} (max |weight| {norm:.4g})")
    plan = (p.run_dir("cut") / "plan.txt").read_text()
    assert "NOT bitwise identical: the data position after a resume is Lightning's own" in plan


def test_a_hugging_face_run_stopped_by_sigterm_resumes_at_its_step_bitwise(tmp_path, measured):
    pytest.importorskip("transformers")
    import json

    from safetensors.torch import load_file

    p, stopped_at = stopped_by_sigterm(tmp_path, "tasks/script_huggingface.py")
    final = {}
    for run, last in (("ref", "0000"), ("cut", "0001")):
        state = p.paths(run).segments / last / SEGMENT_STATE
        assert json.loads((state / "trainer_state.json").read_text())["global_step"] == TOTAL
        assert not (state / "training_args.bin").exists()  # a pickle: not kept
        final[run] = load_file(str(state / "model.safetensors"))
    diff = max((final["ref"][k] - final["cut"][k]).abs().max().item() for k in final["ref"])
    measured("huggingface", f"stopped at step {stopped_at}, resumed there; final step {TOTAL} in both; "
             f"max |weight difference| vs uninterrupted {diff:.4g}")
    # the Trainer restores its RNG states and skips the batches it has seen: the same weights
    assert all(final["ref"][k].equal(final["cut"][k]) for k in final["ref"])
    exported = torch_load(p.run_dir("cut") / "model.pt")
    assert all(exported[k].equal(final["cut"][k]) for k in exported)


def torch_load(path):
    import torch

    return torch.load(path, weights_only=True)
