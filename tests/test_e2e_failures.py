"""Failures of the real processes: SIGTERM with a grace period, and random kills (chaos)."""

import os
import signal
import time

import pytest

from segtrain.layout import SEGMENT_SUMMARY, working_metrics

from conftest import CNN, last_logged_step
from support import wait_for_checkpoint

pytestmark = pytest.mark.e2e


def test_sigterm_with_30s_grace_saves_the_current_step_and_exits_in_time(project):
    project.write_config({"r": {**CNN, "total_steps": 3000, "steps_per_segment": 3000}},
                         checkpoint={"every_steps": 500}, log_every=1)
    proc = project.popen("--retries", "2")
    store_root = project.paths("r").store
    wait_for_checkpoint(store_root, 500, proc)
    while last_logged_step(working_metrics(store_root, 0)) < 560:  # well past the periodic save at 500
        time.sleep(0.005)
    pid = int((store_root / ".lock").read_text().split()[1])
    os.kill(pid, signal.SIGTERM)  # what Kubernetes sends when a booking ends
    sent = time.time()
    while os.path.exists(f"/proc/{pid}") and time.time() - sent < 30:
        time.sleep(0.01)
    exited_after = time.time() - sent
    if os.path.exists(f"/proc/{pid}"):
        os.kill(pid, signal.SIGKILL)  # the end of the grace period
    proc.wait(timeout=120)
    assert exited_after < 30, "the segment did not stop within the grace period"
    ends = [a for a in project.attempts("r") if a.get("status") == "stopped"]
    assert ends and "SIGTERM" in ends[0]["reason"]
    stopped_at = ends[0]["end_step"]
    assert stopped_at > 560 and stopped_at % 500 != 0, f"no checkpoint at the step the signal found: {stopped_at}"
    # the stop made progress, so the next attempt started at once, from exactly that checkpoint
    starts = [a for a in project.attempts("r") if "resumed_from" in a]
    assert [a["resumed_from"] for a in starts] == [0, stopped_at]
    assert (project.paths("r").segment_dir(0) / SEGMENT_SUMMARY).exists()


def test_chaos_a_dozen_random_kills_with_background_writes_lose_little_and_end_identical(tmp_path, measured):
    """With background writes a kill during a write loses that write too: at most one interval
    plus the steps trained while it was in flight (here, with writes shorter than an interval, 2)."""
    from chaos import INTERVAL, report, run_chaos

    result = run_chaos(tmp_path, kills=12, seed=7)
    measured("chaos", report(result))
    kills = result["kills"]
    assert len(kills) >= 12
    assert sum(bool(k["mid_save"]) for k in kills) >= 1, "no kill landed inside a save"
    assert result["corrupted"] == []  # no checkpoint was ever found damaged or lost
    for kill in kills:
        assert kill["lost_steps"] is not None
        assert 0 <= kill["lost_steps"] <= 2 * INTERVAL, kill
        if kill["signal"] == "SIGTERM":
            assert kill["lost_steps"] == 0, kill
    assert result["identical"]
