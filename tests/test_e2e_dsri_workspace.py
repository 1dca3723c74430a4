"""DSRI's booked-workspace route (profiles/dsri): the booking's end is the deadline; the next booking
continues with the same command and the result is bitwise that of an uninterrupted run."""

import datetime as dt
import time
from zoneinfo import ZoneInfo

import pytest

from conftest import Project, assert_bitwise_equal, final_state

pytestmark = pytest.mark.e2e
SNAKEMAKE_TARGETS = ("models",)  # no test here reads the figures: plans and exports only

RUN = {"task": "tasks/slow_digits_torch.py", "total_steps": 2000, "steps_per_segment": 1000}
SETTINGS = dict(measure_steps=3, measure_saves=2, checkpoint={"every_steps": 200}, log_every=10)


def test_a_booking_end_stops_the_run_in_time_and_the_next_booking_finishes_it_identically(tmp_path):
    reference = Project(tmp_path / "reference")
    reference.write_config({"r": {**RUN, "params": {"pause": 0.0}}}, **SETTINGS)
    reference.snakemake()

    project = Project(tmp_path / "proj")
    # the pause alone makes segment 0 last 50 s or more, so the booking's end (45 s) falls inside it
    # however fast the machine is; 0.02 s once let a fast machine finish segment 0 before the end
    project.write_config({"r": {**RUN, "params": {"pause": 0.05}}}, **SETTINGS)
    # the booking ends in 45 s, written as a person reads the calendar: Maastricht time, no offset
    end = dt.datetime.now(ZoneInfo("Europe/Amsterdam")).replace(microsecond=0) + dt.timedelta(seconds=45)
    started = time.time()
    first = project.snakemake("--profile", "profiles/dsri", "--config",
                              f"deadline={end.replace(tzinfo=None).isoformat()}", check=False, timeout=300)
    ended = time.time()
    assert first.returncode != 0  # stopped by the booking's end, not finished
    # no job is started that could not save before the end; the message says how to go on
    assert "--config booking_last_day=" in first.stdout + first.stderr, first.stdout[-3000:] + first.stderr[-3000:]
    assert ended < end.timestamp() + 30, f"Snakemake ran {ended - end.timestamp():.0f} s past the booking's end"
    stops = [a for a in project.attempts("r") if a.get("status") == "stopped" and "deadline" in a["reason"]]
    assert stops and stops[0]["end_step"] > 0, first.stdout[-3000:] + first.stderr[-3000:]
    # every attempt that saved did so before the booking ended (one that found no time left after
    # its start-up and restore saves nothing, and loses nothing)
    starts = {(a["segment"], a["attempt"]): a["resumed_from"] for a in project.attempts("r") if "resumed_from" in a}
    saving = [a for a in project.attempts("r") if "end_time" in a and a["end_step"] > starts[(a["segment"], a["attempt"])]]
    assert saving and all(a["end_time"] < end.timestamp() for a in saving), project.attempts("r")
    saved = stops[0]["end_step"]
    assert ended - started < 300

    # the next booking: the same command with its end; it resumes from the step saved at the deadline
    later = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    project.snakemake("--profile", "profiles/dsri", "--config", f"booking_last_day={later}", timeout=600)
    resumed = [a["resumed_from"] for a in project.attempts("r") if "resumed_from" in a]
    assert saved in resumed
    assert_bitwise_equal(final_state(project, "r"), final_state(reference, "r"))
