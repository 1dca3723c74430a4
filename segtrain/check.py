"""The resume check: is a resume of this run's own code bitwise identical to not stopping?

Measured, not guessed: the run's real segment job (``scripts/train_segment.py``, the user's task
or script, its processes) trains ``k`` steps straight, saving at ``k/2``; a new job restores that
checkpoint and trains the other ``k/2``. The two checkpoints at step ``k`` are compared object by
object (weights, optimizer state, random streams, data position, tracked objects, per rank), and
the metrics each step logged after the restore. A divergence is named by its first step, object
and size, and, from what the jobs observed, its likely cause and fix; a second straight job tells
non-deterministic kernels apart from a resume that misses something.

In the measure job (after the costs: ``scripts/check_resume.py`` adds ``resume_check`` to
costs.json, and the plan reports or refuses it) and alone, before any booking:
``python -m segtrain.check --run NAME [--config config/config.yaml]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .layout import CHECKPOINT_ROOT_ENV, SEGMENT_METRICS, SEGMENT_STATE, SEGMENT_SUMMARY, RunPaths
from .settings import DEFINITIONS_ENV, RunSettings

log = logging.getLogger(__name__)

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
SCRATCH = ".resume-check"  # in the run's checkpoint folder: the check's jobs' stores, removed after
# The resumed job starts with the straight one (their start-ups overlap) and, before it restores,
# waits for the straight job's checkpoint at k/2 and copies it into its own store: {checkpoint, pid}
RESTORE_FROM_ENV = "SEGTRAIN_CHECK_RESTORE_FROM"
POLICIES = ("refuse", "warn", "off")
# metrics columns that are measurements of time, not of training
TIMING = {"time", "segment", "attempt"}
MANIFEST = "manifest.json"


class CheckFailed(RuntimeError):
    """A job of the check did not finish: the run's code fails the same way in a segment."""


def policy(run: RunSettings) -> str:
    """What a divergence does: 'refuse' (no training job starts), 'warn' (train, and say so), or
    'off' (no check). 'auto': refuse for a run that asks for exactness (deterministic: true)."""
    chosen = run.resume_check
    if chosen == "auto":
        return "refuse" if run.deterministic is True else "warn"
    return chosen


def check_steps(run: RunSettings) -> int:
    """k: an even number of steps, the restore at k/2."""
    k = max(2, int(run.resume_check_steps))
    return k + k % 2


# -- running the jobs --------------------------------------------------------------------------

def _segment(k: int, at: int, run: RunSettings) -> dict:
    return {"index": 0, "start": 0, "end": k, "interval": at, "time_limit": 24 * 3600.0, "save_seconds": 0.0,
            "keep": 3, "log_every": 1, "eval_every": at, "monitor": run.monitor, "mode": run.mode,
            "async_save": False}


class _Job:
    """One segment job of ``run`` in ``scratch/name`` (its own store), started now; ``wait()``
    returns its output folder. Its output goes to its own log, appended to the job's after."""

    def __init__(self, run: RunSettings, scratch: Path, name: str, segment: dict, env: dict | None = None):
        root = scratch / name
        self.name, self.segment = name, segment
        self.out = root / "results" / run.name / "segments" / "0000"
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.log = root / "job.log"
        environ = {**os.environ, CHECKPOINT_ROOT_ENV: str(root / "ckpt"),
                   DEFINITIONS_ENV: json.dumps({run.name: run.to_dict()}, default=str), **(env or {})}
        for variable in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            environ.pop(variable, None)
        command = [sys.executable, str(SCRIPTS / "train_segment.py"), "--run", json.dumps({"name": run.name}),
                   "--segment", json.dumps(segment), "--threads", str(run.threads * run.processes),
                   "--output", str(self.out)]
        with open(self.log, "w") as fh:
            self.process = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=environ)

    def wait(self, job_log: Path) -> Path:
        code = self.process.wait()
        text = self.log.read_text(errors="replace")
        with open(job_log, "a") as fh:
            fh.write(f"\n== resume check: {self.name} job (steps {self.segment['start']}..{self.segment['end']}) ==\n")
            fh.write(text)
        if code != 0 or not (self.out / SEGMENT_SUMMARY).exists():
            raise CheckFailed(f"the resume check's {self.name} job (steps {self.segment['start']}.."
                              f"{self.segment['end']}) failed (exit {code}); a training segment would fail the same "
                              "way. Its log ends:\n" + "\n".join(text.splitlines()[-25:]))
        return self.out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def await_checkpoint(store_root: Path, world) -> None:
    """In the check's resumed job (``RESTORE_FROM_ENV`` set), before its restore: wait for the
    straight job's checkpoint at k/2 and copy it into this job's store."""
    spec = os.environ.get(RESTORE_FROM_ENV)
    if not spec:
        return
    from .lifecycle import _start_ticks

    spec = json.loads(spec)
    source = Path(spec["checkpoint"])
    while not source.is_dir():  # a store renames a checkpoint into place once it is complete
        if _start_ticks(int(spec["pid"])) is None and not source.is_dir():
            raise CheckFailed(f"the resume check's straight job ended without its checkpoint {source.name}")
        time.sleep(0.05)
    if world.is_main:
        shutil.copytree(source, Path(store_root) / source.name)
    world.barrier()


def _store_of(scratch: Path, name: str, run: RunSettings) -> Path:
    return RunPaths(Path("results") / run.name, checkpoint_root=scratch / name / "ckpt").store


def run_check(run: RunSettings, scratch: Path, job_log: Path) -> dict:
    """Train, restore, compare: the verdict as a plain dict (see ``verdict_line``)."""
    k = check_steps(run)
    at = k // 2
    started = time.perf_counter()
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    from .store import step_dir_name

    jobs: list[_Job] = []
    try:
        # both jobs start together: the resumed one restores, in a new process, the straight one's
        # checkpoint at k/2 as soon as it is written (their start-ups overlap)
        jobs.append(_Job(run, scratch, "straight", _segment(k, at, run)))
        half = _store_of(scratch, "straight", run) / step_dir_name(at)
        jobs.append(_Job(run, scratch, "resumed", _segment(k, at, run), env={RESTORE_FROM_ENV: json.dumps(
            {"checkpoint": str(half.resolve()), "pid": jobs[0].process.pid})}))
        straight, resumed = (job.wait(job_log) for job in jobs)
        found = compare(straight, resumed, at)
        again = None
        if found["differences"] or found["metrics"]:  # kernels that differ run to run, or the resume?
            jobs.append(_Job(run, scratch, "straight-again", _segment(k, at, run)))
            again = jobs[-1].wait(job_log)
            repeat = compare(straight, again, 0)
            found["straight_runs_differ"] = bool(repeat["differences"] or repeat["metrics"])
        observed = _observed(resumed)
    finally:
        for job in jobs:
            job.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    verdict = judge(run, k, at, found, observed)
    verdict["seconds"] = round(time.perf_counter() - started, 2)
    verdict["jobs"] = 3 if again is not None else 2
    verdict["definition_hash"] = run.definition_hash  # the code it was measured on
    return verdict


def _observed(out: Path) -> dict:
    """What the resumed job recorded about its data and restore (its segment summary)."""
    try:
        summary = json.loads((out / SEGMENT_SUMMARY).read_text())
    except (OSError, ValueError):
        return {}
    return {k: summary[k] for k in ("data", "data_shuffled", "data_placeholder", "started_from")
            if k in summary}


# -- comparing ---------------------------------------------------------------------------------

def _flatten(value, prefix: str, into: dict) -> None:
    import numpy as np
    import torch

    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), into)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}[{i}]", into)
    elif isinstance(value, torch.Tensor):
        into[prefix] = value.detach().cpu()
    elif isinstance(value, np.ndarray):
        into[prefix] = torch.from_numpy(np.ascontiguousarray(value))
    else:
        into[prefix] = value


def _contents(path: Path) -> dict | None:
    """A checkpoint file's values by name, or None when its format is not one read here."""
    import numpy as np
    import torch

    name = path.name
    out: dict = {}
    if name == "state.bin" and (path.parent / "state.json").exists():  # a Keras state's arrays, by name
        from .arrays import read_arrays

        index = json.loads((path.parent / "state.json").read_text()).get("arrays") or []
        _flatten(read_arrays(path, index), "", out)
    elif name.endswith((".pt", ".pth", ".bin")):
        _flatten(torch.load(path, map_location="cpu", weights_only=True), "", out)
    elif name.endswith(".safetensors"):
        from safetensors.torch import load_file

        _flatten(load_file(str(path)), "", out)
    elif name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            _flatten({k: data[k] for k in data.files}, "", out)
    elif name.endswith(".npy"):
        _flatten(np.load(path, allow_pickle=False), "", out)
    elif name.endswith(".json"):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("arrays"), list):  # a Keras state's index of state.bin
            data = {k: v for k, v in data.items() if k != "arrays"}
        _flatten(data, "", out)
    elif name.endswith((".h5", ".keras")):
        return None
    else:
        return None
    return out


def _size(a, b) -> str:
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"shape/dtype {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"
        if a.is_floating_point() or a.is_complex():
            diff = (a.double() - b.double()).abs()
            return f"largest difference {diff.max().item():.3g} in {int((diff != 0).sum())} of {a.numel()} values"
        return f"{int((a != b).sum())} of {a.numel()} values differ"
    return f"{a!r} vs {b!r}"


def _record(key: str) -> bool:
    """A trainer's record of what it logged or counted (the Hugging Face Trainer's
    ``log_history`` and ``total_flos``, which counts a job's own operations), not state that the
    training reads: a difference there is reported, not a divergence."""
    return key.startswith(("log_history", "total_flos"))


def _timing(key: str) -> bool:
    """A saved value that is a measurement of time (a metrics row's time, a save's seconds)."""
    last = key.rsplit(".", 1)[-1].split("[", 1)[0]
    return last in TIMING or last.endswith(("_seconds", "_time"))


def _equal(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare_states(a: Path, b: Path) -> list[dict]:
    """Every difference between two checkpoint folders: {file, object, size}, files in order."""
    import hashlib

    differences = []
    names = sorted({p.name for p in a.iterdir() if p.is_file()} | {p.name for p in b.iterdir() if p.is_file()})
    for name in names:
        if name == MANIFEST:
            continue
        fa, fb = a / name, b / name
        if not fa.exists() or not fb.exists():
            differences.append({"file": name, "object": name, "size": "written by one job only"})
            continue
        if hashlib.sha256(fa.read_bytes()).digest() == hashlib.sha256(fb.read_bytes()).digest():
            continue
        try:
            ca, cb = _contents(fa), _contents(fb)
        except Exception as exc:  # a format not read here after all: the bytes say it
            log.info("resume check: %s compared by its bytes (%s: %s)", name, type(exc).__name__, exc)
            ca = cb = None
        if ca is None or cb is None:
            differences.append({"file": name, "object": name, "size": "the files' bytes differ"})
            continue
        found = False
        # the training state first, the job's own record of it (extra: best, row) after
        for key in sorted((k for k in set(ca) | set(cb) if not _timing(k)), key=lambda k: (k.startswith("extra"), k)):
            if key not in ca or key not in cb:
                differences.append({"file": name, "object": key, "size": "held by one job's checkpoint only",
                                    **({"record": True} if _record(key) else {})})
                found = True
            elif not _equal(ca[key], cb[key]):
                differences.append({"file": name, "object": key, "size": _size(ca[key], cb[key]),
                                    **({"record": True} if _record(key) else {})})
                found = True
        if not found:  # equal values, other bytes (the order of a saved dict): not a training difference
            continue
    return differences


def _rows(out: Path) -> dict[int, dict]:
    with open(out / SEGMENT_METRICS, newline="") as fh:
        return {int(r["step"]): r for r in csv.DictReader(fh) if r.get("step")}


def compare_metrics(a: Path, b: Path, after: int) -> list[dict]:
    """The logged values that differ at the steps after ``after`` both jobs trained, by step."""
    ra, rb = _rows(a), _rows(b)
    found = []
    for step in sorted(set(ra) & set(rb)):
        if step <= after:
            continue
        for column in ra[step]:
            if column in TIMING or column.endswith("_seconds") or column not in rb[step]:
                continue
            x, y = ra[step][column], rb[step][column]
            if x != y and not (x in ("", "nan") and y in ("", "nan")):
                found.append({"step": step, "column": column, "straight": x, "resumed": y})
    return found


def compare(straight: Path, resumed: Path, after: int) -> dict:
    found = compare_states(straight / SEGMENT_STATE, resumed / SEGMENT_STATE)
    return {"differences": [d for d in found if not d.get("record")],
            "records": [d for d in found if d.get("record")],
            "metrics": compare_metrics(straight, resumed, after)}


# -- the verdict -------------------------------------------------------------------------------

RNG_WORDS = ("rng", "random", "generator", "seed")


def _kind(obj: str) -> str:
    low = obj.lower()
    if any(w in low for w in RNG_WORDS):
        return "random stream"
    if low.startswith(("optimizer", "optim")) or ".state." in low and "exp_avg" in low:
        return "optimizer state"
    if low.startswith("model") or low.startswith("module"):
        return "model weights"
    return "object"


def judge(run: RunSettings, k: int, at: int, found: dict, observed: dict) -> dict:
    """The verdict from the comparison and what the resumed job observed."""
    processes = run.world_size
    where = f"{processes} process{'es' if processes > 1 else ''}, on this machine"
    verdict = {"steps": k, "restored_at": at, "processes": processes, "policy": policy(run),
               "differences": found["differences"][:20], "metrics": found["metrics"][:20]}
    if not found["differences"] and not found["metrics"]:
        records = found.get("records") or []
        note = (f"; only the trainer's log record differs: {records[0]['object']} in {records[0]['file']} "
                f"({records[0]['size']})" if records else "")
        verdict.update(bitwise=True, text=f"resume checked: bitwise identical at step {k} after a restore at step "
                                          f"{at} ({where}){note}")
        return verdict
    verdict["bitwise"] = False
    first_metric = found["metrics"][0] if found["metrics"] else None
    first_state = found["differences"][0] if found["differences"] else None
    if first_metric:
        what = (f"step {first_metric['step']}'s {first_metric['column']} is {first_metric['resumed']} after the "
                f"restore, {first_metric['straight']} straight")
    else:
        what = f"the metrics agree, but at step {k} {first_state['object']} differs ({first_state['size']})"
    state_part = ""
    if first_state and first_metric:
        objects = sorted({d["object"] for d in found["differences"]})
        state_part = (f"; at step {k} {len(objects)} saved value(s) differ, first {first_state['object']} in "
                      f"{first_state['file']} ({first_state['size']})")
    cause, fix = _cause(run, k, at, found, observed)
    verdict.update(
        first_step=first_metric["step"] if first_metric else k,
        first_object=first_metric["column"] if first_metric else first_state["object"],
        cause=cause, fix=fix,
        text=f"resume checked: NOT bitwise identical after a restore at step {at} ({where}): {what}{state_part}. "
             f"Likely cause: {cause}. Fix: {fix}")
    return verdict


def _cause(run: RunSettings, k: int, at: int, found: dict, observed: dict) -> tuple[str, str]:
    if found.get("straight_runs_differ"):
        return ("two uninterrupted jobs of the same steps already differ from each other: non-deterministic "
                "kernels or an unseeded source of randomness, not the resume",
                "set deterministic: true (torch.use_deterministic_algorithms; on CUDA also "
                "CUBLAS_WORKSPACE_CONFIG=:4096:8), and seed every random source from seg.seed")
    metrics = found["metrics"]
    first = metrics[0] if metrics else None
    data = observed.get("data", "") or ""
    own_loader = "script's own" in data
    if first and first["step"] == at + 1 and first["column"] in ("lr", "learning_rate"):
        return (f"the learning rate of step {at + 1}, the first after the restore, is not the uninterrupted run's: "
                "the schedule's position is not in the checkpoint (an untracked scheduler, or a step counter of the "
                "script's own)",
                "track the scheduler (seg.track(scheduler=...)) or compute the rate from the step seg.steps() "
                "yields")
    if first and first["column"] in ("lr", "learning_rate"):
        return (f"the learning rate differs from step {first['step']}: something the schedule reads changes but "
                "is not tracked", "track it with seg.track(...) or derive it from the step seg.steps() yields")
    if first and first["step"] == at + 1:
        if own_loader and observed.get("data_shuffled"):
            return (f"step {at + 1}, the first after the restore, trained on another batch with the same weights: "
                    f"{data.removeprefix('approximate: ')}; it shuffles (a new order each pass), so its first batch "
                    "in a new process is not the uninterrupted run's",
                    "give the dataset to seg.dataloader(dataset, batch_size), which keeps the position")
        if own_loader and observed.get("data_placeholder"):
            return (f"step {at + 1}, the first after the restore, computed another {first['column']} from the same "
                    "restored weights: the script makes its own batches (seg.steps() yields None from its iterable), "
                    "and the one step "
                    f"{at + 1} trained on was drawn before seg.steps() restored the random streams (a batch drawn "
                    "before the loop, the next one at the end of each step), or from a sampler whose position is "
                    "not tracked",
                    "draw each step's batch inside the loop, after seg.steps() yields the step (or give the dataset "
                    "to seg.dataloader(dataset, batch_size)); track a sampler of the script's own with seg.track")
        if own_loader:
            loader = data.removeprefix("approximate: the script's own ").split(" ", 1)[0]
            return (f"step {at + 1}, the first after the restore, computed another {first['column']} from the same "
                    f"restored weights: its batch or a random draw differs. Seen by the job: seg.steps() draws from "
                    f"the script's own {loader}, which starts again at its beginning in a new process (other batches, "
                    "unless each pass gives the same ones); or the script took a batch or random draw before "
                    "seg.steps() restored the random streams (a batch drawn before the loop and the next one at the "
                    "end of each step)",
                    "draw each step's batch inside the loop, from the batch seg.steps() yields, and give the dataset "
                    "to seg.dataloader(dataset, batch_size)")
        return (f"step {at + 1}, the first after the restore, computed another {first['column']} from the same "
                "restored weights: the batch or a random draw it used was taken before seg.steps() restored the "
                "random streams (a batch drawn before the loop, a module run before it), or comes from a source "
                "that is not tracked (an untracked module, a data iterator of the script's own)",
                "draw every batch inside the loop, from seg.steps()'s batch or seg.dataloader(...), and track every "
                "module that trains (seg.track(...))")
    if first:
        return (f"the first steps after the restore agree and step {first['step']} does not: an object that changes "
                "during training but is not tracked (a counter, a cache, a module of the script's own)",
                "track it with seg.track(name=obj) (anything with state_dict()/load_state_dict())")
    kinds = {_kind(d["object"]) for d in found["differences"]}
    if kinds == {"random stream"}:
        return ("every logged value agrees, but a random stream ends elsewhere: a draw outside the steps (before "
                "seg.steps() in a new process, or after the last step)", "draw random numbers inside the loop")
    return ("every logged value agrees, but the saved state at the end differs: an object that changes without "
            "affecting the logged metrics yet", "track it with seg.track(...)")


def verdict_line(verdict: dict | None, run: RunSettings | None = None) -> str:
    """The plan's line for a verdict (or its absence)."""
    if verdict is None:
        return ("  resume: not checked (resume_check: off): whether a resume is bitwise identical is unknown; "
                "`python -m segtrain.check --run NAME` measures it")
    cost = f" [the check took {verdict['seconds']:.1f} s, {verdict['jobs']} jobs]"
    if run is not None and verdict.get("definition_hash") not in (None, run.definition_hash):
        cost += " (checked on an earlier version of the run's code)"
    return "  " + verdict["text"] + cost


# -- the command -------------------------------------------------------------------------------

def check_costs_file(run: RunSettings, costs_file: Path, job_log: Path) -> dict | None:
    """The measure job's second part: run the check and add its verdict to ``costs_file``."""
    from .store import write_json_atomic

    if policy(run) == "off":
        return None
    store = RunPaths(Path(costs_file).parent).store
    verdict = run_check(run, store / SCRATCH, job_log)
    costs = json.loads(Path(costs_file).read_text())
    costs["resume_check"] = verdict
    write_json_atomic(Path(costs_file), costs)
    return verdict


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m segtrain.check", description=(
        "Measure whether a resume of a run's own code is bitwise identical to an uninterrupted run: train "
        "k steps straight and k/2 + a restore + k/2 in a new process, and compare (before any booking)."))
    p.add_argument("--run", required=True, help="the run's name in the config")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--steps", type=int, help="k (default: the run's resume_check_steps)")
    a = p.parse_args(argv)
    import yaml

    from .config import ConfigError, resolve

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not Path(a.config).is_file():
        print(f"error: no config file {a.config}; give the run's config with --config", file=sys.stderr)
        return 2
    try:
        runs = resolve(yaml.safe_load(Path(a.config).read_text()) or {}, base=Path.cwd())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.run not in runs:
        print(f"error: no run {a.run!r} in {a.config} (runs: {', '.join(sorted(runs))})", file=sys.stderr)
        return 2
    run = runs[a.run]
    if a.steps:
        run = run.replace(resume_check_steps=a.steps)
    if not run.total_steps:
        print(f"error: run {a.run!r} has no total_steps in {a.config}; the check needs the run's length (its "
              "schedules depend on it): set total_steps", file=sys.stderr)
        return 2
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"segtrain-check-{os.getpid()}"
    job_log = scratch.with_suffix(".log")
    try:
        verdict = run_check(run, scratch, job_log)
    except CheckFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(verdict_line(verdict).strip())
    print(f"(the jobs' log: {job_log})")
    return 0 if verdict["bitwise"] else 3


if __name__ == "__main__":
    sys.exit(main())
