"""An epoch-shaped PyTorch script (PyTorch's MNIST example's shape: train(epoch), test() and
StepLR per epoch) adopted with seg.epochs and seg.batches, through the real snakemake command:
4 segments that end inside an epoch and at an epoch's end, with a SIGKILL of the training
process, a SIGTERM and a SIGKILL of Snakemake, end bitwise identical to 1 segment; the per-epoch
test's metrics are in the rows of the epochs' last steps and pick the best checkpoint."""

import pytest

from conftest import Project, assert_bitwise_equal, final_state
from support import metric_rows, three_failures

pytestmark = pytest.mark.e2e
SNAKEMAKE_TARGETS = ("models",)  # plans and exports only

PER_EPOCH = 30  # 1500 samples in batches of 50
TOTAL = 6 * PER_EPOCH  # segments of 45 steps end inside epoch 1, at the end of epoch 2, inside epoch 4
SCRIPT = {"script": "tasks/script_epochs_torch.py", "total_steps": TOTAL, "checkpoint": {"every_steps": 15}}


def test_an_epoch_loop_with_a_per_epoch_scheduler_and_test_resumes_bitwise_through_failures(tmp_path):
    import json

    ref = Project(tmp_path / "ref")
    ref.write_config({"whole": {**SCRIPT, "steps_per_segment": TOTAL}}, monitor="val_loss", log_every=5)
    ref.snakemake()

    p = Project(tmp_path / "cut")
    p.write_config({"cut": {**SCRIPT, "script": f"{SCRIPT['script']} --step-sleep 0.03", "steps_per_segment": 45}},
                   monitor="val_loss", log_every=1)
    three_failures(p, "cut", 45, 15)
    whole, cut = final_state(ref, "whole"), final_state(p, "cut")
    assert_bitwise_equal(whole, cut)

    tested = {run: metric_rows(project, run)["val_loss"].dropna() for project, run in ((ref, "whole"), (p, "cut"))}
    assert list(tested["whole"].index) == list(range(PER_EPOCH, TOTAL + 1, PER_EPOCH))  # one test per epoch
    assert tested["whole"].equals(tested["cut"])
    # StepLR stepped once per epoch: the learning rate of the last epoch's steps is lr * 0.7^5
    lr = metric_rows(p, "cut")["lr"].dropna()
    assert lr.loc[TOTAL] == pytest.approx(0.7 ** 5) and lr.loc[PER_EPOCH] == pytest.approx(1.0)
    best = [json.loads(sorted(project.paths(run).segments.glob("*/segment.json"))[-1].read_text())["best"]
            for project, run in ((ref, "whole"), (p, "cut"))]
    assert best[0] == best[1] and best[0]["step"] % PER_EPOCH == 0
