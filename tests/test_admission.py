"""The decisions the workflow takes before a job and the job takes as it starts (segtrain.admission)."""

import json

from segtrain.admission import (
    deadline_refusal,
    definition_mismatch,
    rerun_refusal,
    retry_refusal_of,
    seconds_to_start_and_save,
)
from segtrain.attempts import Ledger
from segtrain.layout import RunPaths
from segtrain.settings import RunSettings
from segtrain.store import MANIFEST, CheckpointStore

RUN = RunSettings(name="r", model_hash="m1", definition_hash="d1", model_definition={"task": "t.py", "params": {"lr": 0.1}})


def record(folder, step, **manifest):
    path = CheckpointStore(folder).path(step)
    path.mkdir(parents=True)
    (path / MANIFEST).write_text(json.dumps({"step": step, "files": {}, **manifest}))


def test_the_same_definition_is_accepted_and_a_changed_one_names_what_changed():
    assert definition_mismatch(RUN, {"model_hash": "m1", "definition_hash": "d1"}) is None
    other = {"model_hash": "m1", "definition_hash": "d0", "model_definition": {"task": "t.py", "params": {"lr": 0.2}}}
    assert "lr" in definition_mismatch(RUN, other)
    # hashes that differ where no key is told apart still refuse (the job and the workflow agree)
    assert definition_mismatch(RUN, {**other, "model_definition": RUN.model_definition}) == "its definition"
    # a checkpoint from a version that hashed the config keys only
    assert definition_mismatch(RUN, {"model_hash": "m0"}) == "framework, task, params, batch_size or seed"


def test_a_rerun_over_another_definitions_checkpoints_names_the_folders_to_move(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert rerun_refusal("r", RUN, tmp_path / "results/r/ckpt") is None  # nothing recorded
    record(tmp_path / "results/r/ckpt", 50, model_hash="m1", definition_hash="d1")
    assert rerun_refusal("r", RUN, tmp_path / "results/r/ckpt") is None
    record("results/r/ckpt", 100, model_hash="m1", definition_hash="d0", model_definition={"task": "u.py"})
    why = rerun_refusal("r", RUN, type(tmp_path)("results/r/ckpt"))
    assert "run 'r' has checkpoints of a different model definition" in why and "Nothing was touched" in why
    assert why.endswith("move results/r away to start it over.")
    record("shared/r/ckpt", 100, model_hash="m1", definition_hash="d0")
    why = rerun_refusal("r", RUN, type(tmp_path)("shared/r/ckpt"))
    assert "move results/r and its checkpoints (shared/r/ckpt) away" in why  # the real folder


def test_one_formula_for_the_time_a_job_needs_before_the_deadline():
    assert seconds_to_start_and_save(2.0) == 5.0  # a started job: two saves and a second
    assert seconds_to_start_and_save(2.0, load_seconds=3.0, startup_seconds=10.0) == 18.0
    costs = {"startup_seconds": 10.0, "load_seconds": 3.0, "save_seconds": 1.0, "save_seconds_max": 2.0}
    assert deadline_refusal("r", 4, costs, "2026-12-02T18:00:00+01:00", 18.0) is None
    why = deadline_refusal("r", 4, costs, "2026-12-02T18:00:00+01:00", 17.0)
    assert "segment 4 stopped before the deadline 2026-12-02T18:00:00+01:00 (17 s left, a job needs 18 s" in why


def test_retries_are_refused_from_the_ledger_and_the_checkpoints_within_the_segment(tmp_path):
    ckpt = tmp_path / "ckpt"
    ledger = Ledger(ckpt / RunPaths.ATTEMPTS)
    for attempt in (1, 2):
        ledger.start(3, attempt, start_time=100.0 + attempt, resumed_from=100)
        ledger.end(3, attempt, 130, "error", "ValueError: boom")
    record(ckpt, 100, model_hash="m1")
    why = retry_refusal_of("r", 3, 3, ckpt, segment_end=200, started=0.0)
    assert why.startswith("run r: segment 3 failed 2 times at step 130 with the same error")
    # attempts of an earlier invocation do not count: this one's first failure is tried again
    assert retry_refusal_of("r", 3, 2, ckpt, segment_end=200, started=1000.0) is None
    # a killed third attempt: a checkpoint past the segment's end (a later segment's) is not its
    # progress, one within it is
    ledger.start(3, 3, start_time=103.0, resumed_from=100)
    record(ckpt, 250, model_hash="m1")
    assert "made no progress in its last 3 attempts" in retry_refusal_of("r", 3, 4, ckpt, segment_end=200, started=0.0)
    record(ckpt, 150, model_hash="m1")
    assert retry_refusal_of("r", 3, 4, ckpt, segment_end=200, started=0.0) is None


def test_another_number_of_processes_is_refused_naming_the_key_and_allowed_by_it(tmp_path, monkeypatch):
    two = {"task": "t.py", "params": {"lr": 0.1}, "processes": 2}
    one = RunSettings(name="r", model_hash="m1", definition_hash="d1", model_definition={"task": "t.py", "params": {"lr": 0.1}})
    manifest = {"model_hash": "m1", "definition_hash": "d2", "model_definition": two}
    why = definition_mismatch(one, manifest)
    assert "processes (2 -> 1)" in why and "set allow_reshard: true" in why and "no longer bitwise identical" in why
    assert definition_mismatch(one.replace(allow_reshard=True), manifest) is None
    # the key allows another number of processes, nothing else
    other = {**manifest, "model_definition": {**two, "params": {"lr": 0.2}}}
    assert "lr" in definition_mismatch(one.replace(allow_reshard=True), other)
    monkeypatch.chdir(tmp_path)
    record(tmp_path / "results/r/ckpt", 50, **manifest)
    refusal = rerun_refusal("r", one, tmp_path / "results/r/ckpt")
    assert refusal.startswith("run 'r': processes (2 -> 1)") and refusal.endswith("Nothing was touched.")
    assert rerun_refusal("r", one.replace(allow_reshard=True), tmp_path / "results/r/ckpt") is None
