"""The attempts ledger and the rule that decides whether a failed segment is tried again."""

import os
import subprocess
import sys
import time

from segtrain.attempts import Ledger, attempts_of, retry_refusal
from segtrain.layout import RunPaths
from segtrain.lifecycle import StopFlag, watch_parent


def ledger_of(*attempts):
    """Records for attempts given as (resumed_from, status, end_step, reason, saved_step)."""
    records = []
    for i, (start, status, end, reason, saved) in enumerate(attempts, 1):
        records.append({"segment": 3, "attempt": i, "resumed_from": start})
        if status != "killed":
            records.append({"segment": 3, "attempt": i, "status": status, "end_step": end, "reason": reason,
                            "saved_step": saved})
    return records


def test_stops_at_the_deadline_with_progress_are_always_tried_again():
    records = ledger_of(*[(100 * i, "stopped", 100 * i + 100, "deadline", 100 * i + 100) for i in range(6)])
    assert retry_refusal(records, 6, saved_step=600) is None


def test_the_same_error_at_the_same_step_twice_is_not_tried_again():
    records = ledger_of((0, "error", 130, "ValueError: boom", 100), (100, "error", 130, "ValueError: boom", 100))
    why = retry_refusal(records, 2, saved_step=100)
    assert "failed 2 times at step 130" in why and "ValueError: boom" in why
    # one error only, or errors at different steps with progress between them: go on
    assert retry_refusal(records[:2], 1, saved_step=100) is None
    moving = ledger_of((0, "error", 130, "E", 100), (100, "error", 260, "E", 250))
    assert retry_refusal(moving, 2, saved_step=250) is None


def test_errors_before_training_started_do_not_claim_step_0():
    # a run already at step 300 whose jobs fail before their restore (a full disk): segment 0's start
    # step is 0, but the messages must not say the run was at step 0
    records = ledger_of((0, "error", 0, "StoreError: no space left", None), (0, "error", 0, "StoreError: no space left", None))
    for r in records:
        if "resumed_from" in r:
            r["source"] = "(failed before training)"
    why = retry_refusal(records, 2, saved_step=300)
    assert "failed 2 times before training started" in why and "at step 0" not in why


def test_two_deadline_stops_without_progress_are_not_tried_again():
    records = ledger_of((100, "stopped", 100, "deadline: 0.4 s left", 100), (100, "stopped", 100, "deadline: 0.3 s", 100))
    why = retry_refusal(records, 2, saved_step=100)
    assert "made no progress in its last 2 attempts" in why and "raise time_limit" in why
    # the second one saved a newer checkpoint: progress, go on
    assert retry_refusal(records, 2, saved_step=150) is None


def test_kills_without_progress_stop_the_run_only_after_five():
    # preemption can hit a job before its first save, a few times: not the job's fault
    kills = [(100, "killed", None, None, None)] * 4
    assert retry_refusal(ledger_of((100, "stopped", 100, "deadline: 0.4 s left", 100), *kills[:1]), 2, 100) is None
    assert retry_refusal(ledger_of(*kills), 4, saved_step=100) is None
    why = retry_refusal(ledger_of(*kills, (100, "stopped", 100, "signal SIGTERM", 100)), 5, saved_step=100)
    assert "made no progress in its last 5 attempts" in why


def test_jobs_that_fail_before_training_starts_are_not_retried_forever():
    # a pod that cannot start, an import error: Snakemake counted the attempts, the ledger did not
    assert retry_refusal([], 1, saved_step=None) is None
    why = retry_refusal([], 2, saved_step=None)
    assert "failed 2 time(s) before its training process recorded an attempt" in why
    one = ledger_of((100, "stopped", 200, "deadline: 1 s left", 200))
    assert retry_refusal(one, 2, saved_step=200) is None  # the recorded attempt made progress


def test_attempts_of_earlier_invocations_do_not_count():
    records = ledger_of((0, "error", 130, "E", 100), (100, "error", 130, "E", 100))
    assert retry_refusal(records, 1, saved_step=100) is None  # the user fixed it and ran again


def test_ledger_skips_a_line_cut_by_a_kill(tmp_path):
    ledger = Ledger(tmp_path / RunPaths.ATTEMPTS)
    ledger.start(0, 1, resumed_from=0)
    with open(ledger.path, "a") as fh:
        fh.write('{"segment": 0, "attem')  # a kill in the middle of a write
    assert ledger.next_attempt(0) == 2
    ledger.path.write_text(ledger.path.read_text() + "\n")
    ledger.end(0, 2, 50, "stopped", "deadline")
    assert [a["status"] for a in attempts_of(ledger.records(0))] == ["killed"]


def test_watch_parent_requests_a_stop_when_the_parent_dies():
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stop = StopFlag()
        assert watch_parent(stop, pid=parent.pid, period=0.05) is not None
        time.sleep(0.2)
        assert not stop
        parent.kill()
        parent.wait()
        deadline = time.time() + 5
        while not stop and time.time() < deadline:
            time.sleep(0.05)
        assert stop and f"process {parent.pid}" in stop.reason
    finally:
        parent.kill()
    assert watch_parent(StopFlag(), pid=os.getpid()) is None  # a process is never its own parent


def test_a_signal_with_the_parents_end_names_the_stop_not_the_vanished_parent():
    # SLURM's SIGUSR1 goes to every process of a job: its Snakemake dies of it while the training
    # process catches it; whichever the process notices first, the signal is the reason
    for signal_first in (True, False):
        parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        stop = StopFlag()
        watch_parent(stop, pid=parent.pid, period=0.05)
        if signal_first:
            stop.request("signal SIGUSR1", 10)
        parent.kill()
        parent.wait()
        time.sleep(0.5)
        if not signal_first:
            assert stop.reason.startswith("the Snakemake process")  # the watch spoke at once
            stop.request("signal SIGUSR1", 10)  # the handler ran later: its reason replaces the watch's
        time.sleep(0.1)
        assert stop.reason == "signal SIGUSR1" and stop.signal == 10
    stop = StopFlag()
    stop.request_from_watch("the Snakemake process 1 that started this job is gone")
    stop.request("the deadline")  # not a signal: the first reason stays
    assert stop.reason.startswith("the Snakemake process")


def test_only_attempts_since_the_workflow_started_count():
    old = [{**r, "start_time": 100.0} for r in ledger_of((0, "error", 130, "E", 100), (100, "error", 130, "E", 100))]
    new = [{"segment": 3, "attempt": 3, "resumed_from": 100, "start_time": 1000.0},
           {"segment": 3, "attempt": 3, "status": "error", "end_step": 130, "reason": "E", "saved_step": 100}]
    # this workflow's first attempt failed once: one retry is due, the two old errors do not count
    assert retry_refusal(old + new, 1, saved_step=100, since=900.0) is None
    assert "failed 2 times at step 130" in retry_refusal(old + new, 2, saved_step=100)


def test_attempts_killed_while_starting_up_count_as_kills_not_as_failures_to_start(tmp_path):
    ledger = Ledger(tmp_path / RunPaths.ATTEMPTS)
    for attempt in (1, 2):  # preempted twice before restoring anything
        ledger.launch(3, attempt)
    assert ledger.next_attempt(3) == 3
    assert retry_refusal(ledger.records(3), 2, saved_step=None, since=0) is None
    for attempt in (3, 4, 5):
        ledger.launch(3, attempt)
    assert "made no progress in its last 5 attempts" in retry_refusal(ledger.records(3), 5, None, since=0)


def test_a_segment_killed_after_it_completed_is_tried_again():
    """A kill (or a stop signal) in the second between the ledger's 'completed' and the process's
    exit makes Snakemake retry a finished segment: the retry only writes its output, however many
    times it happens; the same attempts without 'completed' are kills without progress."""
    done = [(2000, "completed", 2000, "", 2000)] * 6
    assert retry_refusal(ledger_of(*done), 6, saved_step=2000) is None
    killed = [(2000, "killed", None, None, None)] * 5
    assert "made no progress" in retry_refusal(ledger_of(*killed), 5, saved_step=2000)


def test_an_earlier_attempts_log_is_kept_numbered_once(tmp_path):
    from segtrain.admission import keep_earlier_log

    log = tmp_path / "0001.log"
    assert keep_earlier_log(log) is None  # no log yet
    log.write_text("attempt 1: stopped at step 47\n")
    assert keep_earlier_log(log) == tmp_path / "0001.1.log"
    assert keep_earlier_log(log) is None  # asked again before the next attempt wrote anything
    log.write_text("attempt 2: killed\n")
    assert keep_earlier_log(log) == tmp_path / "0001.2.log"
    assert [p.read_text() for p in sorted(tmp_path.glob("0001.*.log"))] == [
        "attempt 1: stopped at step 47\n", "attempt 2: killed\n"]


def test_failures_that_recur_are_told_from_those_another_attempt_may_not_meet():
    from segtrain.admission import recurs
    from segtrain.runner import Stopped

    assert recurs(ValueError("set total_steps: 300")) and recurs(NameError("x")) and recurs(RuntimeError("bug"))
    assert not recurs(OSError(28, "No space left on device")) and not recurs(MemoryError())
    assert not recurs(Stopped("SIGTERM"))
    import torch.distributed

    assert not recurs(torch.distributed.DistBackendError("a peer is gone"))
