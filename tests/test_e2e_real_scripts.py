"""Scripts as their authors write them, through the real snakemake command at 2 processes: a
GPT-style model with tied weights, its own init_process_group and a per-rank tracked generator,
1 segment against 4 through a SIGKILL, a SIGTERM and a killed Snakemake."""

import json
import os
import signal
import sys
import time

import pytest
import torch

from segtrain import store as st

from conftest import REPO, assert_bitwise_equal, final_state, model_file
from support import ranks_of, three_failures, wait_for_checkpoint


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False

pytestmark = pytest.mark.e2e
SNAKEMAKE_TARGETS = ("models",)  # the exports, no figures

GPT = {"script": "tasks/script_tied_gpt_torch.py --pause 0.05", "processes": 2, "total_steps": 120,
       "checkpoint": {"every_steps": 10}, "eval_every": 40, "monitor": "val_loss"}


def test_a_tied_gpt_with_per_rank_state_at_two_processes_ends_bitwise_through_kills_and_exports(project):
    # the measure job checks the resume at the run's 2 processes: the per-rank generator is saved and
    # restored per rank, so the check (a restore in new processes) finds the run bitwise
    whole = {**GPT, "steps_per_segment": 120, "resume_check": "refuse"}
    project.write_config({"whole": whole})
    project.snakemake()
    verdict = json.loads((project.run_dir("whole") / "plan.json").read_text())["resume_check"]
    assert verdict["bitwise"], verdict
    assert "resume checked: bitwise identical at step 4 after a restore at step 2 (2 processes" in verdict["text"]
    project.write_config({"whole": whole, "cut": {**GPT, "steps_per_segment": 30}})
    # torchrun itself is killed (the job's own process): its ranks see it gone, save together and end
    store_root = project.paths("cut").store
    proc = project.popen()
    wait_for_checkpoint(store_root, 10, proc)
    launcher, rank0, rank1 = ranks_of(store_root)
    os.kill(launcher, signal.SIGKILL)
    deadline = time.time() + 30
    while any(_running(pid) for pid in (rank0, rank1)) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_running(pid) for pid in (rank0, rank1)), "the ranks went on training without their launcher"
    proc.wait(timeout=120)
    (stopped,) = [a for a in project.attempts("cut") if a.get("status") == "stopped"]
    assert "launcher (torchrun" in stopped["reason"] and stopped["saved_step"] == stopped["end_step"], stopped

    attempts = three_failures(project, "cut", 30, 10)
    # the SIGTERM's attempt of segment 2 was retried at once: its log is kept beside the retry's
    stopped = next(a for a in attempts if a.get("status") == "stopped" and a["segment"] == 2)
    logs = project.root / "logs" / "train_segment" / "cut"
    assert f"stopped at step {stopped['end_step']}" in (logs / "0002.1.log").read_text()
    assert f"starting at step {stopped['end_step']}" in (logs / "0002.log").read_text()
    whole, cut = final_state(project, "whole"), final_state(project, "cut")
    assert_bitwise_equal(whole, cut)
    # each rank's generator is its own: rank 1's file holds it, and differs from rank 0's
    folder = project.paths("cut").store / st.step_dir_name(120)
    manifest = st.verify(folder)
    assert manifest["per_rank"] == ["mask"] and set(manifest["files"]) == {"state.pt", "rank-00001.pt"}
    own = torch.load(folder / "rank-00001.pt", weights_only=True)["tracked"]["mask"]["generator"]
    main = torch.load(folder / "state.pt", weights_only=True)["tracked"]["mask"]["generator"]
    assert not torch.equal(own, main)

    # the export keeps the tying: model.pt loads into the model with one weight under both names,
    # model.safetensors is what safetensors' save_model writes, loadable with its load_model
    from safetensors.torch import load_model

    sys.path.insert(0, str(REPO / "tests" / "tasks"))
    from tiny_gpt import TinyGPT

    for best in (False, True):
        pt = torch.load(model_file(project, "cut", best=best), weights_only=True)
        assert pt["lm_head.weight"].data_ptr() == pt["wte.weight"].data_ptr()
        assert_bitwise_equal(torch.load(model_file(project, "whole", best=best), weights_only=True), pt)
        model = TinyGPT()
        missing, unexpected = load_model(model, str(project.run_dir("cut") / f"model{'.best' if best else ''}"
                                                                            ".safetensors"))
        assert not missing and not unexpected and model.lm_head.weight is model.wte.weight
        assert_bitwise_equal(model.state_dict(), pt)
    costs = json.loads((project.run_dir("cut") / "costs.json").read_text())
    assert costs["processes"] == 2  # the measure job ran the script's own init_process_group at 2 processes


def test_a_measure_job_that_fails_in_the_script_is_tried_once_and_says_why(project):
    """An error in the script's own code recurs: Snakemake's retries would only repeat it."""
    (project.root / "tasks" / "broken.py").write_text(
        "import torch\nimport segtrain\n\nseg = segtrain.session()\nmodel = torch.nn.Linear(2, 2)\n"
        "seg.track(model=model)\nraise ValueError('the script has a bug here')\n")
    project.write_config({"r": {"script": "tasks/broken.py", "total_steps": 20}})
    r = project.snakemake("--retries", "2", check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "ValueError: the script has a bug here" in out, out[-3000:]
    assert "not tried again" in out, out[-3000:]
    logs = project.root / "logs" / "measure_checkpoint_cost"
    assert [p.name for p in logs.iterdir()] == ["r.log"]  # one attempt: no earlier attempt's log kept
    assert (logs / "r.log").read_text().count("Traceback") == 1


FLAWED = '''"""A script whose evaluation has a bug that shows only late in the run."""
import torch
from torch import nn

import segtrain

seg = segtrain.session()
torch.manual_seed(0)
x = torch.randn(256, 8)
y = (x.sum(1, keepdim=True) > 0).float()
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
seg.track(model=model, optimizer=optimizer)
loader = seg.dataloader(torch.utils.data.TensorDataset(x, y), batch_size=32)
evaluations = []


def evaluate():
    evaluations.append(1)
    loss = nn.functional.binary_cross_entropy_with_logits(model(x), y).item()
    report = {"val_loss": loss}
    if step >= 70:
        report["val_note"] = report["val_accuracy"]  # the bug: no such key
    return report


for step, (xb, yb) in seg.steps(loader, evaluate=evaluate):
    loss = nn.functional.binary_cross_entropy_with_logits(model(xb), yb)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    seg.log(loss=loss.detach())
'''


def test_a_script_fixed_after_a_crash_goes_on_with_the_documented_step_and_the_edit_is_recorded(project):
    import re

    from segtrain.layout import run_root

    script = project.root / "tasks" / "flawed.py"
    script.write_text(FLAWED)
    run = {"script": "tasks/flawed.py", "total_steps": 120, "steps_per_segment": 40, "checkpoint": {"every_steps": 10},
           "eval_every": 25, "monitor": "val_loss"}
    project.write_config({"r": run})
    failed = project.snakemake(check=False)
    logs = "".join(p.read_text() for p in (project.root / "logs" / "train_segment" / "r").glob("*.log"))
    assert failed.returncode != 0 and "KeyError: 'val_accuracy'" in logs, failed.stderr[-3000:]
    segment0 = project.paths("r").segment_dir(0) / "segment.json"
    before = segment0.stat().st_mtime_ns
    reached = st.CheckpointStore(project.paths("r").store).newest_valid().step
    assert 40 < reached < 80

    # the user fixes the line; the same command is refused, with the diff and the one step to go on
    script.write_text(FLAWED.replace('report["val_note"] = report["val_accuracy"]  # the bug: no such key',
                                     'report["val_note"] = report["val_loss"]'))
    refused = project.snakemake("-n", check=False)
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "its code changed since its checkpoints were written" in out, out[-3000:]
    assert "tasks/flawed.py (content changed): lines 23" in out and '+        report["val_note"] = report["val_loss"]' in out, out
    (accept,) = re.findall(r"continue_edited: ([0-9a-f]{16})", out)

    project.write_config({"r": {**run, "continue_edited": accept}})
    project.snakemake(str(run_root("r") / "report" / "plan.html"))
    assert segment0.stat().st_mtime_ns == before  # the finished segment was not trained again
    assert [a["segment"] for a in project.attempts("r") if "resumed_from" in a].count(0) == 1
    manifest = st.verify(project.paths("r").store / st.step_dir_name(120))
    (edit,) = manifest["definition_edits"]
    assert edit["step"] == reached and edit["to"] == accept and "tasks/flawed.py lines 23" in edit["where"]
    page = (project.run_dir("r") / "report" / "plan.html").read_text()
    assert f"definition changed at step {reached}: tasks/flawed.py lines 23" in page
    assert (project.run_dir("r") / "model.pt").exists()
