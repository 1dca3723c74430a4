"""A Keras `fit` script (two named inputs, sample and class weights, dropout, a schedule, epochs,
validation_split, steps_per_execution, a callback of its own) through segtrain.keras.fit and the
real snakemake command: 4 segments with a SIGKILL of the training process, a SIGTERM and a SIGKILL
of Snakemake end bitwise identical to 1 segment, the run's length from fit's epochs. (Epochs that
disagree with total_steps: tests/test_keras_task.py; the measure job's refusal through snakemake:
tests/test_e2e_trainers.py.)"""

import pytest

from conftest import Project, assert_bitwise_equal, final_state, load_weights, model_file
from support import metric_rows, three_failures

pytestmark = pytest.mark.e2e
SNAKEMAKE_TARGETS = ("models",)  # no test here reads the figures: plans and exports only

TOTAL = 400  # the script's epochs=8 of 50 steps


def fit_run(args="", **more):
    return {"framework": "keras", "script": f"tasks/script_fit_keras.py {args}".strip(), "total_steps": TOTAL,
            **more}


def test_a_keras_fit_script_killed_and_stopped_across_segments_ends_bitwise_identical(tmp_path):
    ref = Project(tmp_path / "ref")  # one step per call; the script's epochs=8 give the run's length
    whole = {k: v for k, v in fit_run(steps_per_segment=TOTAL).items() if k != "total_steps"}
    ref.write_config({"kf-1": whole}, log_every=1)
    ref.snakemake()
    assert "run length: 400 steps, from the script (segtrain.keras.fit: epochs=8 trains 8 x 50" in \
        (ref.run_dir("kf-1") / "plan.txt").read_text()

    p = Project(tmp_path / "killed")  # 8 steps per call, as fit(steps_per_execution=8) runs them
    p.write_config({"kf-4": fit_run("--step-sleep 0.02 --steps-per-execution 8", steps_per_segment=TOTAL // 4)},
                   log_every=1)
    three_failures(p, "kf-4", TOTAL // 4, 50)
    assert_bitwise_equal(final_state(p, "kf-4"), final_state(ref, "kf-1"))
    # fit's running means (loss, accuracy since the epoch began) and the rate, at every step a call
    # of 8 ended, equal the uninterrupted run's, also in the epochs resumed in their middle
    ours, theirs = metric_rows(p, "kf-4"), metric_rows(ref, "kf-1")
    called = ours[ours["loss"].notna()]
    assert set(called.index) >= set(range(8, TOTAL + 1, 8))
    for column in ("loss", "accuracy", "lr"):
        assert called[column].equals(theirs[column].loc[called.index]), column
    assert ours["val_loss"].dropna().equals(theirs["val_loss"].dropna())
    # the script exported its own model (two named inputs): the same weights
    assert_bitwise_equal(load_weights(model_file(p, "kf-4")), load_weights(model_file(ref, "kf-1")))
    assert "resuming at step" in (p.root / "logs" / "train_segment" / "kf-4" / "0001.log").read_text()
    # the script's own print goes to its job's log
    assert "epoch 0 begins" in (ref.root / "logs" / "train_segment" / "kf-1" / "0000.log").read_text()
    # the validation split is evaluated: val_ metrics in the rows
    assert "val_loss" in (ref.paths("kf-1").segments / "0000" / "metrics.csv").read_text().splitlines()[0]

