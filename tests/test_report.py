"""The report's figures from metrics that lack columns: a script that never calls seg.log, a
trainer whose own logging never fired. They say what is missing instead of failing the run."""

import pandas as pd

from segtrain import report


def test_figures_without_a_loss_or_learning_rate_column_are_drawn_and_say_so(tmp_path):
    metrics = pd.DataFrame({"segment": [0, 0, 1], "attempt": [1, 1, 1], "step": [10, 20, 30],
                            "time": [1.0, 2.0, 3.0], "save_seconds": [0.1, "", 0.1]})
    run = {"metrics": metrics, "attempts": pd.DataFrame(), "segments": [{"best": None}],
           "plan": {"segments": [{"start": 0}, {"start": 20}]}}
    report.plot_training(run, tmp_path / "training.svg", "r")
    text = (tmp_path / "training.svg").read_text()
    assert "no training loss" in text and "no learning rate was logged" in text
    metrics.to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"step": [10], "loss": [0.5], "time": [1.0]}).to_csv(tmp_path / "b.csv", index=False)
    report.compare_runs(["a", "b"], [tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "loss.svg")
    assert "a: no training loss logged" in (tmp_path / "loss.svg").read_text()
