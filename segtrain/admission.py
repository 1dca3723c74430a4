"""Whether work may go on: a run over checkpoints already recorded, another attempt of a failed
segment, a job this close to the deadline.

Framework-free, so the workflow asks these questions before any job starts (common.smk) and the
job asks the same ones as it starts (runner): one formula each, in one place.
"""

from __future__ import annotations

from pathlib import Path

from .attempts import Ledger, retry_refusal
from .definition import definition_changes, differs_in_processes_only, only_sources_differ, source_edits
from .layout import DEFAULT_CHECKPOINT_ROOT, RunPaths, checkpoint_folder, run_root
from .settings import RunSettings
from .store import CheckpointStore, recorded_manifest


def seconds_to_start_and_save(save_seconds: float, load_seconds: float = 0.0, startup_seconds: float = 0.0) -> float:
    """What a job needs before a deadline to be worth starting: its start-up and restore (when
    they are still ahead of it), then two saves (the periodic one it may be in, and its stop's),
    and a second of slack."""
    return startup_seconds + load_seconds + 2 * save_seconds + 1


RESHARD_REFUSAL = ("processes ({saved} -> {now}): the checkpoints were written by {saved} process(es). To resume "
                   "them with {now}, set allow_reshard: true (every step trains the same samples where its batches "
                   "are the pipeline's or seg.dataloader's, but the gradients are summed in another order, so the "
                   "result is no longer bitwise identical to an uninterrupted run); or set processes (times nodes, on "
                   "several) back to {saved}")


def definition_mismatch(run: RunSettings, manifest: dict) -> str | None:
    """Why a checkpoint was written for another model definition than ``run``'s, or None. Another
    number of processes alone is no mismatch when the run allows resharding."""
    if "definition_hash" in manifest and run.definition_hash:
        if manifest["definition_hash"] != run.definition_hash:
            recorded = manifest.get("model_definition", {})
            if differs_in_processes_only(recorded, run.model_definition):
                return None if run.allow_reshard else RESHARD_REFUSAL.format(
                    saved=recorded.get("processes", 1), now=run.model_definition.get("processes", 1))
            if accepted_edit(run, recorded):
                return None
            changed = definition_changes(recorded, run.model_definition)
            return "; ".join(changed) or "its definition"
        return None
    if manifest.get("model_hash") != run.model_hash:  # written by a version without definitions
        return "framework, task, params, batch_size or seed"
    return None


def accepted_edit(run: RunSettings, recorded: dict) -> bool:
    """Whether ``run`` goes on with an edit of its script (``continue_edited`` names the edited
    definition) from checkpoints of the definition ``recorded``: an edit of the sources or the
    script's arguments only."""
    return bool(run.continue_edited) and run.continue_edited == run.definition_hash and \
        only_sources_differ(recorded, run.model_definition)


def edit_refusal(name: str, run: RunSettings, recorded: dict, checkpoints: Path) -> str:
    """The refusal of a run whose script changed since its checkpoints: what changed, where (a
    short diff), and the one step that goes on with the edit."""
    edits = source_edits(recorded, run.model_definition, checkpoints)
    shown = "\n".join(f"  {e['file']} " + (f"(content changed): {e['where']}" if e["where"].startswith(("lines", "no line"))
                                           else f"({e['where']})")
                      + (f"\n{_indented(e['diff'])}" if e.get("diff") else "") for e in edits)
    args = (recorded.get("script_args"), run.model_definition.get("script_args"))
    if args[0] != args[1]:
        shown += f"\n  the script's arguments: {' '.join(args[0] or [])!r} -> {' '.join(args[1] or [])!r}"
    step = recorded.get("step", "?")
    return (f"run '{name}': its code changed since its checkpoints were written (newest: step {step}):\n{shown}\n"
            f"Nothing was touched. To go on with the edited code from the newest checkpoint (finished segments are "
            f"kept; the edit is recorded, and the run is no longer bitwise identical to an uninterrupted one from "
            f"that step on), add to run '{name}' in the config:\n    continue_edited: {run.definition_hash}\n"
            f"To start over instead, give the run a new name, or move {run_root(name)} and {checkpoints} away.")


def _indented(text: str) -> str:
    return "\n".join(f"      {line}" for line in text.splitlines())


def rerun_refusal(name: str, run: RunSettings, checkpoints: Path) -> str | None:
    """Why run ``name`` must not start over the checkpoints in ``checkpoints`` (they hold another
    model definition), naming what changed and the folders to move; None when it may."""
    recorded = recorded_manifest(checkpoints)
    if recorded is None:
        return None
    changed = definition_mismatch(run, recorded)
    if not changed:
        return None
    if differs_in_processes_only(recorded.get("model_definition", {}), run.model_definition):
        return f"run '{name}': {changed}. Nothing was touched."
    if "model_definition" in recorded and only_sources_differ(recorded["model_definition"], run.model_definition):
        return edit_refusal(name, run, {**recorded["model_definition"], "step": recorded.get("step")}, checkpoints)
    results = run_root(name)
    if Path(checkpoints) == checkpoint_folder(name, DEFAULT_CHECKPOINT_ROOT):
        move = f"{results} away to start it over."
    else:
        move = f"{results} and its checkpoints ({checkpoints}) away to start it over."
    return (f"run '{name}' has checkpoints of a different model definition: {changed} changed since they "
            f"were written. Nothing was touched. Give the changed run a new name, or move {move}")


def deadline_refusal(run: str, index: int, costs: dict, deadline_iso: str, seconds_left: float) -> str | None:
    """Why another attempt of segment ``index`` must not start ``seconds_left`` before the deadline."""
    needed = seconds_to_start_and_save(costs.get("save_seconds_max", costs.get("save_seconds", 0)),
                                       costs.get("load_seconds", 0), costs.get("startup_seconds", 0))
    if seconds_left >= needed:
        return None
    return (f"run {run}: segment {index} stopped before the deadline {deadline_iso} ({max(seconds_left, 0):.0f} s "
            f"left, a job needs {needed:.0f} s to start and save). It is continued by the same command with a "
            "later deadline (the next booking: --config booking_last_day=...).")


def retry_refusal_of(run: str, index: int, attempt: int, checkpoints: Path, segment_end: int,
                     started: float) -> str | None:
    """Why attempt ``attempt`` of segment ``index`` should not run, from the run's ledger and the
    checkpoints it left (those past the segment's end do not count), or None to go on."""
    saved = [s for s in CheckpointStore(checkpoints, keep=2).steps() if s <= segment_end]
    ledger = Ledger(Path(checkpoints) / RunPaths.ATTEMPTS)
    why = retry_refusal(ledger.records(index), attempt - 1, max(saved, default=None), since=started)
    return f"run {run}: {why}" if why else None


MEASURE_REFUSAL = "measure.refused.json"  # beside the run's costs.json: why its measure job failed


def recurs(exc: BaseException) -> bool:
    """Whether a job's failure comes back with the same code and config: a refusal (a setting, a
    script's structure) or an error in the script's code; not a full disk, a lost peer process, a
    memory limit or a stop signal, which another attempt may not meet."""
    if isinstance(exc, (OSError, MemoryError, KeyboardInterrupt, SystemExit)):
        return False
    names = {cls.__name__ for cls in type(exc).__mro__}
    return not names & {"DistError", "OutOfMemoryError", "Stopped", "ResourceExhaustedError"}


def record_measure_failure(results: Path, exc: BaseException) -> None:
    """Keep why the measure job of the run in ``results`` failed, when it would fail again."""
    import json
    import os
    import time

    if not recurs(exc):
        return
    path = Path(results) / MEASURE_REFUSAL
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}", "time": time.time()}))
    os.replace(tmp, path)


def forget_measure_failure(results: Path) -> None:
    (Path(results) / MEASURE_REFUSAL).unlink(missing_ok=True)


def measure_retry_refusal(run: str, results: Path, started: float) -> str | None:
    """Why the measure job of ``run`` is not tried again: it failed in this invocation in a way
    that recurs (``recurs``), and a retry would only repeat it."""
    import json

    path = Path(results) / MEASURE_REFUSAL
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("time", 0) < started:
        return None
    return (f"run {run}: the measure job failed with {record['error']}. It fails the same way each time, so it is not "
            f"tried again: fix what it names, then run the same command again (the job's log has the traceback)")


def keep_earlier_log(log: Path) -> Path | None:
    """Keep a job's earlier log before Snakemake removes it for the next attempt: ``0001.log`` is
    copied to ``0001.1.log`` (then ``.2``, ...), unless the newest kept copy already holds it.
    Returns the copy made, if any."""
    import shutil

    log = Path(log)
    try:
        if log.stat().st_size == 0:
            return None
        text = log.read_bytes()
    except OSError:
        return None
    numbers = sorted(int(n) for n in (p.name[len(log.stem) + 1:-len(log.suffix)]
                                      for p in log.parent.glob(f"{log.stem}.*{log.suffix}")) if n.isdigit())
    if numbers and log.with_name(f"{log.stem}.{numbers[-1]}{log.suffix}").read_bytes() == text:
        return None
    copy = log.with_name(f"{log.stem}.{(numbers[-1] if numbers else 0) + 1}{log.suffix}")
    shutil.copyfile(log, copy)
    return copy
