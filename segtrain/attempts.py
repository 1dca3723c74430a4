"""The attempts ledger: one JSON line when a segment attempt starts and one when it ends.

``<checkpoint_root>/<run>/ckpt/attempts.jsonl`` tells the report where the time went and tells
the workflow whether another attempt is worth its GPU time: a segment that stopped at its
deadline after making progress is always continued, while one that fails again and again
without progress (the same error at the same step, a time limit too short to save anything)
stops the run with the reason instead of spending every retry.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .layout import SEGMENT_SUMMARY

# Attempts without progress that stop a run: two in a row that stopped at their deadline or
# failed with an error (the time limit is too short, or the task is broken), or five in a row of
# any kind (kills and signals: preemption can hit a job before its first save, but not forever).
NO_PROGRESS_LIMIT = 2
NO_PROGRESS_KILLS = 5


class Ledger:
    """Append-only JSON lines; a line cut by a kill is skipped when reading. A ledger opened with
    ``writes=False`` (a process other than a job's main one) reads but records nothing."""

    def __init__(self, path: Path | str, writes: bool = True):
        self.path = Path(path)
        self.writes = writes

    def records(self, segment: int | None = None) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if isinstance(rec, dict) and (segment is None or rec.get("segment") == segment):
                out.append(rec)
        return out

    def next_attempt(self, segment: int) -> int:
        records = self.records(segment)
        return 1 + max(sum("launched" in r for r in records), sum("resumed_from" in r for r in records))

    def launch(self, segment: int, attempt: int) -> None:
        """The first record of an attempt, written as soon as it holds the run's lock: an attempt
        killed while it starts up (before its start record) still counts as one."""
        self.append({"segment": segment, "attempt": attempt, "launched": time.time()})

    def append(self, record: dict) -> None:
        if not self.writes:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def start(self, segment: int, attempt: int, **fields) -> None:
        self.append({"segment": segment, "attempt": attempt, **fields})

    def end(self, segment: int, attempt: int, step: int, status: str, reason: str, **fields) -> None:
        self.append({"segment": segment, "attempt": attempt, "end_time": time.time(), "end_step": step,
                     "status": status, "reason": reason, **fields})


def record_exit_without_output(ledger: Ledger, segment: int, output: str) -> str:
    """Record that the training process of ``segment`` exited with status 0 but left no finished
    output (a script calling ``os._exit``, a callback ending the process): the newest attempt
    without an end record ends as an error, at the step it resumed from, so the retry rule sees a
    repeating failure rather than a kill. Returns the message for the job's log."""
    reason = (f"the training process exited with status 0 before it finished segment {segment} ({output} has "
              f"no {SEGMENT_SUMMARY}): something ended the process early (os._exit, or a script or callback that "
              "exits by itself). Let the script return, or end it with an exception")
    records = ledger.records(segment)
    ended = {r.get("attempt") for r in records if "status" in r}
    open_ = [r for r in records if "resumed_from" in r and r.get("attempt") not in ended]
    if open_:
        a = open_[-1]
        ledger.end(segment, a["attempt"], a["resumed_from"], "error", reason)
    return reason


def attempts_of(records: list[dict]) -> list[dict]:
    """The attempts of one segment, in order: each start record merged with its end record
    (``status`` is ``killed`` when there is none: the process had no chance to write it). An
    attempt has one status: where a job failed after its segment completed, the error's end
    record (``supersedes: completed``) replaces the completion."""
    starts = [r for r in records if "resumed_from" in r]
    ends = {r.get("attempt"): r for r in records if "status" in r}
    merged = []
    for start in starts:
        end = ends.get(start.get("attempt"), {"status": "killed", "reason": "killed (no chance to save)"})
        merged.append({**start, **end})
    return merged


BEFORE_TRAINING = "(failed before training)"  # the source of an attempt that failed before its restore


def _where(a: dict) -> str:
    """Where an attempt ended, in words: at its step, or before training (a failure that came before
    its restore knows no step; "at step 0" would be wrong for a run already at step 300)."""
    if a.get("source") == BEFORE_TRAINING:
        return "before training started"
    return f"at step {a.get('end_step', a['resumed_from'])}"


def _progressed(attempts: list[dict], saved_step: int | None) -> bool:
    """Whether the newest attempt saved a newer checkpoint than it started from."""
    a = attempts[-1]
    if a["resumed_from"] is None:
        return False
    return max(a.get("saved_step", a["resumed_from"]), saved_step if saved_step is not None else -1) > a["resumed_from"]


def retry_refusal(records: list[dict], this_invocation: int, saved_step: int | None,
                  since: float | None = None) -> str | None:
    """Why segment attempts should not go on, or None to go on.

    ``records`` are one segment's ledger records, ``this_invocation`` how many of its newest
    attempts belong to the running workflow (earlier invocations do not count: a user who fixed
    the cause and runs again gets fresh attempts), ``since`` when the workflow started (attempts
    that started before it are not its own), ``saved_step`` the newest checkpoint step in the
    store (how far the newest attempt got before it was killed, if it was).
    """
    attempts = attempts_of(records)
    started = {a["attempt"] for a in attempts}
    for r in records:  # launched, then killed before the start record: no progress, not its fault
        if "launched" in r and r.get("attempt") not in started:
            attempts.append({"segment": r.get("segment"), "attempt": r.get("attempt"), "start_time": r["launched"],
                             "resumed_from": None, "status": "killed", "reason": "killed while starting up"})
            started.add(r.get("attempt"))
    attempts.sort(key=lambda a: a.get("start_time", 0))
    if since is not None:  # the attempts this workflow started (5 s of slack for another node's clock)
        attempts = [a for a in attempts if a.get("start_time", 0) >= since - 5]
    attempts = attempts[-this_invocation:] if this_invocation > 0 else []
    # attempts Snakemake ran that left no record at all: the job failed before its training process
    # ran (a pod that could not start, a broken environment); no progress, and the job's fault
    unrecorded = this_invocation - len(attempts)
    if unrecorded >= NO_PROGRESS_LIMIT or (unrecorded and attempts and not _progressed(attempts, saved_step)):
        return (f"the job failed {unrecorded} time(s) before its training process recorded an attempt (it did "
                "not start: see the job's log, e.g. logs/train_segment/<run>/<segment>.log), so it is not "
                "tried again. Fix the cause, then run the same command again")
    if len(attempts) < NO_PROGRESS_LIMIT:
        return None
    last = attempts[-NO_PROGRESS_LIMIT:]
    errors = [a for a in last if a["status"] == "error"]
    if len(errors) == NO_PROGRESS_LIMIT and len({a.get("end_step") for a in errors}) == 1:
        a = errors[-1]
        return (f"segment {a['segment']} failed {NO_PROGRESS_LIMIT} times {_where(a)} with the same "
                f"error, so it is not tried again: {a.get('reason', '')}. Fix the cause, then run the same "
                "command again: it resumes from the newest checkpoint")

    def progress(i: int) -> bool:
        a = attempts[i]
        if i + 1 == len(attempts):
            return _progressed(attempts[: i + 1], saved_step)
        nxt = attempts[i + 1]["resumed_from"]
        return a["resumed_from"] is not None and nxt is not None and nxt > a["resumed_from"]

    stuck = []  # the newest attempts that made no progress, newest first
    for i in reversed(range(len(attempts))):
        # one that completed its segment did its work: a kill while it exited is not its failure
        if progress(i) or attempts[i]["status"] == "completed":
            break
        stuck.append(attempts[i])
    own_fault = [a for a in stuck if a["status"] == "error" or
                 (a["status"] == "stopped" and str(a.get("reason", "")).startswith("deadline"))]
    if len(own_fault) >= NO_PROGRESS_LIMIT or len(stuck) >= NO_PROGRESS_KILLS:
        shown = stuck[:NO_PROGRESS_KILLS][::-1]
        how = "; ".join(f"attempt {a['attempt']} {a['status']} {_where(a)}"
                        + (f" ({a['reason']})" if a.get("reason") else "") for a in shown)
        return (f"segment {shown[-1]['segment']} made no progress in its last {len(stuck)} attempts ({how}), so "
                "it is not tried again. If the attempts stopped at their deadline, time_limit is too short for "
                "the measured start-up and save times: raise time_limit, or measure again with snakemake "
                "--forcerun measure_checkpoint_cost. Then run the same command again")
    return None
