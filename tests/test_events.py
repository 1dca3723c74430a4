"""TensorBoard event files written without TensorBoard, read back with TensorFlow's own reader."""

import pytest

from segtrain.events import EventFile, crc32c
from segtrain.metrics import MetricsLog

from support import read_scalars


def test_crc32c_matches_the_standard_check_value():
    assert crc32c(b"123456789") == 0xE3069283


def test_the_event_file_mirrors_the_metrics_log_through_a_resume(tmp_path):
    tb = tmp_path / "tensorboard"
    metrics = MetricsLog(tmp_path / "m.csv", events=EventFile(tb, 0))
    for step in range(10, 60, 10):
        metrics.append({"segment": 0, "attempt": 1, "step": step, "loss": 1.0 / step, "time": 1e9 + step,
                        "save_seconds": "0.5" if step == 50 else ""})
    # a kill, and the next attempt resumes from step 30: the log and the events are cut back
    again = MetricsLog(tmp_path / "m.csv", events=EventFile(tb, 0))
    again.truncate_after(30)
    for step in (40, 50):
        again.append({"segment": 0, "attempt": 2, "step": step, "loss": 2.0 / step, "time": 2e9 + step,
                      "save_seconds": ""})
    scalars = read_scalars(tb)
    assert {s for s, tag in scalars if tag == "loss"} == {10, 20, 30, 40, 50}
    assert scalars[(50, "loss")] == pytest.approx(2.0 / 50) and scalars[(20, "loss")] == pytest.approx(1.0 / 20)
    assert (50, "save_seconds") not in scalars  # the save at 50 was lost with the kill


def test_a_stop_that_saves_a_logged_step_completes_its_row(tmp_path):
    tb = tmp_path / "tensorboard"
    metrics = MetricsLog(tmp_path / "m.csv", events=EventFile(tb, 0))
    metrics.append({"segment": 0, "attempt": 1, "step": 7, "loss": 0.5, "time": 1e9, "save_seconds": ""})
    metrics.log_step({"segment": 0, "attempt": 1, "step": 7, "loss": 0.5, "time": 1e9 + 1, "save_seconds": "0.25"})
    assert [(r["step"], r["save_seconds"]) for r in MetricsLog(tmp_path / "m.csv").rows] == [("7", "0.25")]
    assert read_scalars(tb)[(7, "save_seconds")] == 0.25
