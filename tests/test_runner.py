"""The segment runner in-process with the real PyTorch backend: stop at the deadline or on SIGTERM."""

import json
import os
import signal

import pytest

from segtrain import runner
from segtrain.backends.torch_backend import Backend
from segtrain.config import resolve
from segtrain.layout import SEGMENT_BEST, SEGMENT_STATE, SEGMENT_SUMMARY
from segtrain.planning import Segment
from segtrain.settings import RunSettings

from conftest import MLP, REPO, assert_bitwise_equal, load_weights

pytestmark = pytest.mark.e2e  # trains for real (in-process): not in the fast lane


@pytest.fixture
def run_settings():
    cfg = {"defaults": {"log_every": 5}, "runs": {"r": {**MLP, "total_steps": 120}}}
    return resolve(cfg, base=REPO)["r"]


def segment(end=120, interval=20, time_limit=3600):
    return Segment(index=0, start=0, end=end, interval=interval, time_limit=time_limit, save_seconds=0.01)


class FakeClock:
    """A clock that advances a fixed amount on every reading: the deadline arrives mid-segment."""

    def __init__(self, tick):
        self.t, self.tick = 0.0, tick

    def __call__(self):
        self.t += self.tick
        return self.t


def export(folder, tmp_path, name):
    out = {"pt": tmp_path / f"{name}.pt", "safetensors": tmp_path / f"{name}.safetensors"}
    Backend.export(RunSettings(), folder, out)
    return load_weights(out["pt"])


def reference_and_stopped(tmp_path, run_settings, interval=20, tick=0.5):
    """An uninterrupted segment, and the same segment stopped by its deadline part-way (the clock
    is read twice per call of the step: a backend that trains several steps per call needs a
    larger tick)."""
    ref = runner.RunPaths(tmp_path / "ref")
    runner.run_segment(run_settings, segment(interval=interval), ref, None, ref.segment_dir(0))
    paths = runner.RunPaths(tmp_path / "cut")
    with pytest.raises(runner.Stopped, match="deadline"):
        runner.run_segment(run_settings, segment(interval=interval, time_limit=60), paths, None,
                           paths.segment_dir(0), clock=FakeClock(tick), job_start=0.0)
    return ref, paths


@pytest.mark.parametrize("async_save", [False, True])
def test_deadline_stops_with_a_save_and_the_retry_finishes_identically(tmp_path, run_settings, async_save):
    run_settings = run_settings.replace(async_save=async_save)
    ref, paths = reference_and_stopped(tmp_path, run_settings)
    stopped_at = max(runner.store_mod.CheckpointStore(paths.store).steps())
    assert 0 < stopped_at < 120
    runner.run_segment(run_settings, segment(), paths, None, paths.segment_dir(0))
    attempts = [a for a in map(json.loads, paths.attempts.read_text().splitlines()) if "launched" not in a]
    assert attempts[1]["status"] == "stopped" and attempts[2]["resumed_from"] == stopped_at
    assert_bitwise_equal(export(ref.segment_dir(0) / SEGMENT_STATE, tmp_path, "a"),
                         export(paths.segment_dir(0) / SEGMENT_STATE, tmp_path, "b"))
    saves = json.loads((paths.segment_dir(0) / SEGMENT_SUMMARY).read_text())["saves"]
    assert [s["step"] for s in saves] == list(range(stopped_at // 20 * 20 + 20, 121, 20))
    assert all(s["persist_seconds"] > 0 and s["blocking_seconds"] > 0 for s in saves)
    if async_save:  # periodic saves only blocked for the copy; the segment's last one is written in full
        assert all(s["persist_seconds"] != s["blocking_seconds"] for s in saves[:-1])
    assert saves[-1]["persist_seconds"] == saves[-1]["blocking_seconds"]


def test_a_stop_signal_during_a_background_write_ends_with_both_checkpoints_complete(tmp_path, run_settings):
    """SIGTERM arrives at step 45 while the writer thread still writes step 40: the write
    finishes, the stop saves step 45, and the retry resumes there and ends bitwise identical."""
    import time

    events = []

    class SlowWrites(Backend):
        steps = 0

        def snapshot(self, extra):
            snap = super().snapshot(extra)
            if extra["step"] == 40:
                write = snap.write

                def slow(folder):
                    time.sleep(1.5)  # the stop has to wait for this write
                    write(folder)
                    events.append("write 40 done")
                snap.write = slow
            return snap

        def train_step(self, indices):
            SlowWrites.steps += 1
            if SlowWrites.steps == 46:
                events.append("signal at 45")
                os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to the training thread
            return super().train_step(indices)

    run_settings = run_settings.replace(async_save=True)
    ref = runner.RunPaths(tmp_path / "ref")
    runner.run_segment(run_settings, segment(), ref, None, ref.segment_dir(0))
    old = signal.getsignal(signal.SIGTERM)
    runner.STOP.clear()
    runner.STOP.installed = False
    paths = runner.RunPaths(tmp_path / "run")
    try:
        with pytest.raises(runner.Stopped, match="SIGTERM"):
            runner.run_segment(run_settings, segment(), paths, None, paths.segment_dir(0),
                               backend_factory=SlowWrites)
    finally:
        signal.signal(signal.SIGTERM, old)
        runner.STOP.clear()
        runner.STOP.installed = False
    assert events == ["signal at 45", "write 40 done"]  # the signal came during the write
    store = runner.store_mod.CheckpointStore(paths.store)
    assert store.steps() == [40, 46]  # the write in flight, then the stop's own (step 46 had begun)
    for step in store.steps():
        runner.store_mod.verify(store.path(step))
    runner.run_segment(run_settings, segment(), paths, None, paths.segment_dir(0))
    attempts = [a for a in map(json.loads, paths.attempts.read_text().splitlines()) if "launched" not in a]
    assert attempts[1]["saved_step"] == 46 and attempts[2]["resumed_from"] == 46
    assert_bitwise_equal(export(ref.segment_dir(0) / SEGMENT_STATE, tmp_path, "a"),
                         export(paths.segment_dir(0) / SEGMENT_STATE, tmp_path, "b"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_saves_at_the_current_step_and_exits_for_a_retry(tmp_path, run_settings, sig):
    """SIGTERM (pod stopped, booking over), SIGINT (Ctrl-C), SIGHUP (the terminal closed)."""
    class SignalledBackend(Backend):
        steps = 0

        def train_step(self, indices):
            SignalledBackend.steps += 1
            if SignalledBackend.steps == 33:
                os.kill(os.getpid(), sig)  # a real signal to this process
            return super().train_step(indices)

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP)}
    runner.STOP.clear()
    runner.STOP.installed = False
    try:
        paths = runner.RunPaths(tmp_path / "run")
        with pytest.raises(runner.Stopped, match=sig.name):
            runner.run_segment(run_settings, segment(), paths, None, paths.segment_dir(0),
                               backend_factory=SignalledBackend)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        runner.STOP.clear()
        runner.STOP.installed = False
    assert max(runner.store_mod.CheckpointStore(paths.store).steps()) == 33  # not 20: no work lost
    assert not paths.segment_dir(0).exists()  # the output appears only when the segment is complete


def test_a_stop_waits_for_the_evaluation_a_trainer_runs_after_the_step(tmp_path, run_settings):
    """A trainer's callback says its trainer evaluates after step 33 (segtrain.trainer_hook): a
    SIGTERM at that step stops at step 34, after the evaluation, which a resumed trainer would not
    repeat."""
    from segtrain.training import prepare_training

    old = signal.getsignal(signal.SIGTERM)
    runner.STOP.clear()
    runner.STOP.installed = False
    try:
        paths = runner.RunPaths(tmp_path / "run")
        with pytest.raises(runner.Stopped, match="SIGTERM"):
            with runner.SegmentJob(run_settings, segment(), paths, None, paths.segment_dir(0)) as job:
                training = prepare_training(run_settings, None)
                job.restore(training.backend)
                batches = training.backend.batches(training.order, 0, 120)
                for step in job.steps(training.backend):
                    job.log(training.backend.train_step(next(batches)))
                    job.evaluation_follows = step == 33
                    if step == 33:
                        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, old)
        runner.STOP.clear()
        runner.STOP.installed = False
    assert max(runner.store_mod.CheckpointStore(paths.store).steps()) == 34


def test_absolute_deadline_stops_before_it_with_a_save(tmp_path, run_settings, monkeypatch):
    import time
    from datetime import datetime, timezone

    end = time.time() + 4.0
    monkeypatch.setenv(runner.DEADLINE_ENV, datetime.fromtimestamp(end, timezone.utc).isoformat())
    paths = runner.RunPaths(tmp_path / "run")
    with pytest.raises(runner.Stopped, match="deadline"):
        runner.run_segment(run_settings, segment(end=10_000_000, interval=1_000_000), paths, None,
                           paths.segment_dir(0))
    assert time.time() < end  # stopped and saved before the booking ended
    steps = runner.store_mod.CheckpointStore(paths.store).steps()
    assert steps and steps[-1] % 1_000_000 != 0  # saved where it stopped, not at a periodic step
    with pytest.raises(runner.Stopped, match="passed or is too close"):
        monkeypatch.setenv(runner.DEADLINE_ENV, "2020-01-01T09:00:00+01:00")
        runner.run_segment(run_settings, segment(end=10_000_000), paths, None, paths.segment_dir(0))


def test_best_checkpoint_survives_keep_2_when_older_than_the_two_newest(tmp_path):
    from conftest import CNN

    cfg = {"defaults": {"log_every": 5}, "runs": {"r": {**CNN, "total_steps": 400}}}
    run = resolve(cfg, base=REPO)["r"]
    # lr only falls (StepLR every 300 steps) and ties do not count: the first evaluation stays best
    seg = Segment(index=0, start=0, end=400, interval=50, time_limit=3600, save_seconds=0.01,
                  keep=2, monitor="lr", mode="max")
    paths = runner.RunPaths(tmp_path / "run")
    summary = runner.run_segment(run.replace(keep=2), seg, paths, None, paths.segment_dir(0))
    assert runner.store_mod.CheckpointStore(paths.store).steps() == [350, 400]  # rotation kept 2
    assert summary["best"]["step"] == 50 and summary["best"]["value"] == pytest.approx(0.003)
    best = paths.segment_dir(0) / SEGMENT_BEST
    assert runner.store_mod.verify(best)["step"] == 50
    rows = __import__("pandas").read_csv(paths.segment_dir(0) / "metrics.csv")
    assert rows.val_loss.notna().sum() == 8  # evaluated at every checkpoint (every 50 steps)


class NotATensor:
    """Pickled into a checkpoint, it makes torch.load(weights_only=True) refuse the file."""


def _rewrite_manifest(folder, change):
    """The manifest changed by ``change``, and sealed again (as a crafted one would be): the checks
    behind its own digest are what is tested."""
    from segtrain.checkpoint_files import MANIFEST_DIGEST, sealed

    path = folder / runner.store_mod.MANIFEST
    changed = change(json.loads(path.read_text()))
    if isinstance(changed, dict):
        changed = sealed({k: v for k, v in changed.items() if k != MANIFEST_DIGEST})
    path.write_text(json.dumps(changed))


def _unloadable(folder):
    import torch

    torch.save({"model": NotATensor()}, folder / "state.pt")  # then a manifest that matches it
    _rewrite_manifest(folder, lambda m: {**m, "files": {"state.pt": {
        "size": (folder / "state.pt").stat().st_size,
        "sha256": runner.store_mod.sha256_file(folder / "state.pt")}}})


DAMAGE = {
    "manifest is a list": lambda f: _rewrite_manifest(f, lambda m: [m]),
    "manifest entry without its size": lambda f: _rewrite_manifest(
        f, lambda m: {**m, "files": {k: {"sha256": v["sha256"]} for k, v in m["files"].items()}}),
    "state verifies but does not load": _unloadable,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_newest_checkpoint_a_torn_metrics_row_and_a_stray_folder_are_skipped(tmp_path, run_settings, damage):
    ref, paths = reference_and_stopped(tmp_path, run_settings)
    store = runner.store_mod.CheckpointStore(paths.store)
    newest, before = store.steps()[-1], store.steps()[-2]
    DAMAGE[damage](store.path(newest))
    with open(paths.working_metrics(0), "a") as fh:
        fh.write("0,1,7")  # a row cut by a kill before its append reached the disk
    (paths.store / "step-5").mkdir()  # a folder copied in by hand
    runner.run_segment(run_settings, segment(), paths, None, paths.segment_dir(0))
    starts = [a for a in (json.loads(x) for x in paths.attempts.read_text().splitlines()) if "resumed_from" in a]
    assert starts[-1]["resumed_from"] == before
    assert [s["step"] for s in starts[-1]["skipped"]] == [newest]
    assert_bitwise_equal(export(ref.segment_dir(0) / SEGMENT_STATE, tmp_path, "a"),
                         export(paths.segment_dir(0) / SEGMENT_STATE, tmp_path, "b"))
    rows = __import__("pandas").read_csv(paths.segment_dir(0) / "metrics.csv")
    assert rows.step.is_monotonic_increasing and rows.step.is_unique  # the torn row is gone


def test_keras_background_saves_and_a_deadline_stop_resume_bitwise(tmp_path):
    """Keras: periodic saves written in the background in the raw-array format, a stop at the
    deadline, a resume that hashes the arrays while it reads them; the same state as one run."""
    from conftest import KMLP, final_state_in

    cfg = {"defaults": {"log_every": 5}, "runs": {"r": {**KMLP, "total_steps": 120, "async_save": True}}}
    run = resolve(cfg, base=REPO)["r"]
    ref, paths = reference_and_stopped(tmp_path, run, interval=10, tick=4.0)  # calls of up to 10 steps
    stopped_at = max(runner.store_mod.CheckpointStore(paths.store).steps())
    assert 0 < stopped_at < 120
    assert (paths.store / runner.store_mod.step_dir_name(stopped_at) / "state.bin").exists()
    runner.run_segment(run, segment(interval=10), paths, None, paths.segment_dir(0))
    saves = json.loads((paths.segment_dir(0) / SEGMENT_SUMMARY).read_text())["saves"]
    assert any(s["persist_seconds"] != s["blocking_seconds"] for s in saves)  # written in the background
    a, b = final_state_in(ref.root), final_state_in(paths.root)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_two_optimizers_with_a_step_and_a_plateau_schedule_resume_bitwise(tmp_path):
    """build_optimizer returns a dict of two optimizers, build_scheduler a list of a per-step and a
    metric-driven schedule; with accumulation and clipping, a deadline stop and its resume end
    with every weight, both optimizers' and both schedulers' state identical to one run."""
    import torch

    spec = {"task": "tests/tasks/two_optimizers_torch.py", "params": {}, "total_steps": 120,
            "validation_split": 0.2, "accumulate": 2, "clip_grad_norm": 1.0}
    run = resolve({"defaults": {"log_every": 5}, "runs": {"r": spec}}, base=REPO)["r"]
    ref, paths = reference_and_stopped(tmp_path, run)
    runner.run_segment(run, segment(), paths, None, paths.segment_dir(0))
    a = torch.load(ref.segment_dir(0) / SEGMENT_STATE / "state.pt", weights_only=True)["tracked"]
    b = torch.load(paths.segment_dir(0) / SEGMENT_STATE / "state.pt", weights_only=True)["tracked"]
    assert set(a) == {"model", "optimizer", "scheduler"}  # the one format: what the run has, by name
    assert set(a["optimizer"]) == {"hidden", "head"} and set(a["scheduler"]) == {"0", "1"}
    assert a["scheduler"]["0"]["last_epoch"] == 120  # stepped once per step
    head_lr = a["optimizer"]["head"]["param_groups"][0]["lr"]
    assert head_lr < 0.3  # the plateau schedule lowered it at evaluations
    for key in ("model", "optimizer", "scheduler"):
        tensors_a, others_a = _flat(a[key])
        tensors_b, others_b = _flat(b[key])
        assert_bitwise_equal(tensors_a, tensors_b)
        assert others_a == others_b  # learning rates, step counts, plateau counters


def _flat(tree, prefix=""):
    """(tensors, other values) of a nested state, keyed by their path."""
    import torch

    tensors, others = {}, {}
    if isinstance(tree, (dict, list, tuple)):
        for k, v in (tree.items() if isinstance(tree, dict) else enumerate(tree)):
            t, o = _flat(v, f"{prefix}{k}.")
            tensors.update(t)
            others.update(o)
    elif torch.is_tensor(tree):
        tensors[prefix] = tree
    else:
        others[prefix] = tree
    return tensors, others


def test_a_stop_signal_during_a_slow_restore_ends_the_job_at_once(tmp_path, run_settings):
    """A restore that would take a minute (a slow or hung read) is cut short by SIGTERM: the job
    stops within a second, records why, and the next attempt resumes normally."""
    import threading
    import time

    class SlowReads(Backend):
        def read_state(self, folder):
            time.sleep(60)  # a read that never seems to end
            return super().read_state(folder)

    paths = runner.RunPaths(tmp_path / "run")
    with pytest.raises(runner.Stopped):  # a checkpoint at step 40 to restore from
        runner.run_segment(run_settings, segment(time_limit=60), paths, None, paths.segment_dir(0),
                           clock=FakeClock(0.5), job_start=0.0)
    old = signal.getsignal(signal.SIGTERM)
    runner.STOP.clear()
    runner.STOP.installed = False
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        t = time.monotonic()
        with pytest.raises(runner.Stopped, match="while restoring"):
            runner.run_segment(run_settings, segment(), paths, None, paths.segment_dir(0), backend_factory=SlowReads)
        assert time.monotonic() - t < 10
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, old)
        runner.STOP.clear()
        runner.STOP.installed = False
    records = runner.Ledger(paths.attempts).records(0)
    ends = [r for r in records if "status" in r]
    assert ends[-1]["status"] == "stopped" and "SIGTERM" in ends[-1]["reason"]
    # nothing was restored: the attempt is recorded where the segment stood (its newest checkpoint),
    # neither as progress nor as a fall back to the segment's start
    newest = max(runner.store_mod.CheckpointStore(paths.store).steps())
    start = [r for r in records if r.get("source") == "(stopped while restoring)"][-1]
    assert newest > 0 and start["resumed_from"] == ends[-1]["end_step"] == ends[-1]["saved_step"] == newest
    summary = runner.run_segment(run_settings, segment(), paths, None, paths.segment_dir(0))
    assert summary["started_from"].startswith("periodic checkpoint")


def test_a_script_that_fails_after_its_segment_completed_has_one_status_at_the_step_it_reached(tmp_path):
    """A segment from step 10 to 20 trains to 20, then the script's code after seg.steps() fails:
    the attempt is one error at step 20 (not 'completed' and 'error', not the segment's start), and
    two such attempts refuse a third with that step and the error."""
    import time

    from segtrain.attempts import Ledger, attempts_of, retry_refusal
    from segtrain.script import train_script

    script = tmp_path / "train.py"
    script.write_text(
        "import torch\nimport segtrain\n\nseg = segtrain.session()\nmodel = torch.nn.Linear(2, 1)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\nseg.track(model=model, optimizer=opt)\n"
        "for step, x in seg.steps([torch.ones(4, 2)]):\n    loss = model(x).pow(2).mean()\n"
        "    opt.zero_grad()\n    loss.backward()\n    opt.step()\n"
        "raise RuntimeError('the report after training has a bug')\n")
    run = resolve({"runs": {"s": {"script": str(script), "total_steps": 20}}}, base=tmp_path)["s"]
    paths = runner.RunPaths(tmp_path / "run")
    first = Segment(index=0, start=0, end=10, interval=5, time_limit=600)
    second = Segment(index=1, start=10, end=20, interval=5, time_limit=600)
    with pytest.raises(RuntimeError):
        train_script(run, first, paths, None, paths.segment_dir(0))
    started = time.time()
    for _ in range(2):
        with pytest.raises(RuntimeError, match="has a bug"):
            train_script(run, second, paths, paths.segment_dir(0) / SEGMENT_STATE, paths.segment_dir(1))
    records = Ledger(paths.attempts).records(1)
    attempts = attempts_of(records)
    assert [(a["status"], a["end_step"], a["resumed_from"]) for a in attempts] == [("error", 20, 10), ("error", 20, 20)]
    assert "after the segment's training completed at step 20" in attempts[0]["reason"]
    why = retry_refusal(records, 2, 20, since=started - 10)
    assert "failed 2 times at step 20" in why and "has a bug" in why


def test_the_lr_column_is_the_rate_each_step_used_set_in_the_body_or_stepped_after_it(tmp_path):
    """A script that sets the rate in its loop body before optimizer.step() (warm-up by hand) and
    one whose scheduler steps after it: the lr column holds the rate of the step's update."""
    import pandas as pd

    from segtrain.script import train_script

    body = ("import torch\nimport segtrain\n\nseg = segtrain.session()\nmodel = torch.nn.Linear(2, 1)\n"
            "opt = torch.optim.SGD(model.parameters(), lr=1.0)\n"
            "sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (i + 1))\n"
            "seg.track(model=model, optimizer=opt, scheduler=sched)\n"
            "for step, x in seg.steps([torch.ones(4, 2)]):\n"
            "    {set}\n    loss = model(x).pow(2).mean()\n    opt.zero_grad()\n    loss.backward()\n"
            "    opt.step()\n    {after}\n")
    cases = {"by_hand": ("for g in opt.param_groups: g['lr'] = 0.001 * step", "pass", lambda s: 0.001 * s),
             "scheduler": ("pass", "sched.step()", lambda s: 1.0 / s)}
    for name, (set_, after, expected) in cases.items():
        script = tmp_path / f"{name}.py"
        script.write_text(body.format(set=set_, after=after))
        run = resolve({"runs": {name: {"script": str(script), "total_steps": 6, "log_every": 1}}}, base=tmp_path)[name]
        paths = runner.RunPaths(tmp_path / name)
        train_script(run, Segment(index=0, start=0, end=6, interval=3, time_limit=600), paths, None,
                     paths.segment_dir(0))
        rows = pd.read_csv(paths.segment_dir(0) / "metrics.csv").set_index("step")
        assert rows["lr"].tolist() == pytest.approx([expected(s) for s in range(1, 7)]), name
