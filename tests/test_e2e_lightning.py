"""A Lightning Trainer script with segtrain.lightning.Checkpoints, through the real snakemake
command: stopped mid-segment by SIGTERM, it resumes from the verified checkpoint at the step it
stopped and reaches the same final step; the weights' difference from an uninterrupted run is
printed (Lightning restarts its loader's epoch on a mid-epoch resume: not bitwise identical)."""

import os
import signal
import time

import pytest

from conftest import Project, last_logged_step
from test_e2e_resume import wait_for_checkpoint

pytest.importorskip("lightning")
pytestmark = pytest.mark.e2e

TOTAL = 300


def test_a_lightning_run_stopped_by_sigterm_resumes_at_its_step(tmp_path, capsys):
    import torch

    p = Project(tmp_path / "proj")
    script = "tasks/script_lightning.py"
    p.write_config({
        "ref": {"script": script, "total_steps": TOTAL, "steps_per_segment": TOTAL},
        "cut": {"script": f"{script} --step-sleep 0.02", "total_steps": TOTAL, "steps_per_segment": TOTAL // 2},
    }, log_every=1, monitor="loss")
    store_root = p.run_dir("cut") / "ckpt"
    proc = p.popen("--retries", "2")
    wait_for_checkpoint(store_root, 50, proc, timeout=300)
    while last_logged_step(store_root / "metrics" / "segment-0000.csv") < 70:
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

    final = {}
    for run in ("ref", "cut"):
        ckpt = torch.load(p.run_dir(run) / "segments" / "0001" / "state" / "lightning.ckpt" if run == "cut"
                          else p.run_dir(run) / "segments" / "0000" / "state" / "lightning.ckpt", weights_only=True)
        assert ckpt["global_step"] == TOTAL
        final[run] = ckpt["state_dict"]
    exported = torch.load(p.run_dir("cut") / "model.pt", weights_only=True)
    assert all(torch.equal(exported[k], final["cut"][k]) for k in exported)
    diff = max((final["ref"][k] - final["cut"][k]).abs().max().item() for k in final["ref"])
    norm = max(final["ref"][k].abs().max().item() for k in final["ref"])
    with capsys.disabled():
        print(f"\n[lightning] stopped at step {stopped[0]['end_step']}, resumed there; final step {TOTAL} in both; "
              f"max |weight difference| vs uninterrupted {diff:.4g} (max |weight| {norm:.4g})")
    plan = (p.run_dir("cut") / "plan.txt").read_text()
    assert "NOT bitwise identical: the data position after a resume is Lightning's own" in plan
