"""Which checkpoint a segment resumes from, in one place:

1. the newest verified periodic checkpoint of this segment (a previous attempt was interrupted),
2. else the previous segment's final checkpoint (the job's input), then the store's copy of it,
3. else, for segment 0, a freshly seeded model.

A checkpoint of another model definition is refused; a damaged one is skipped with the reason
(and set aside when it verified but did not load).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from . import store as store_mod
from .admission import definition_mismatch
from .layout import RunPaths, run_root
from .world import SINGLE

log = logging.getLogger(__name__)


def candidates(segment, store, previous, note, deferred=()):
    """Checkpoints to resume from, best first: this segment's newest periodic one, then the
    previous segment's output, then the store's copy of that step. The files in ``deferred`` are
    hashed by the state as it reads them (``store.load_verified``)."""
    for ck in store.valid(max_step=segment.end, min_step=segment.start + 1, on_skip=note, deferred=deferred):
        yield ck, f"periodic checkpoint {ck.path.name}"
    if segment.start == 0:
        return
    if previous is not None:
        try:
            manifest = store_mod.verify(previous, deferred)
            yield store_mod.Checkpoint(manifest["step"], Path(previous), manifest), f"previous segment ({previous})"
        except store_mod.CorruptCheckpoint as exc:
            log.warning("previous segment's checkpoint is damaged (%s); looking in the store", exc)
            note(segment.start, str(exc))
    for ck in store.valid(max_step=segment.start, min_step=segment.start, on_skip=note, deferred=deferred):
        yield ck, "store copy of the previous segment's end"


class Restored(NamedTuple):
    """What a restore found: where from, its step and extra, and by how many processes it was written."""

    source: str
    step: int
    extra: dict
    clean: bool  # False when a checkpoint failed half-way through loading: build the state again
    processes: int  # that wrote the checkpoint (a resume at another number reshards)
    manifest: dict = {}  # the checkpoint's manifest (its definition: an accepted edit is recorded)


def definition_edits(extra: dict, manifest: dict, step: int, run, world, store_root) -> list[dict]:
    """Every accepted edit of the run's code so far (``continue_edited``), to carry in each later
    checkpoint's extra and manifest: the restored ``extra``'s, and this resume's when the
    checkpoint was written by the code before the edit (then told in the log)."""
    from .definition import source_edits

    edits = list(extra.get("definition_edits") or [])
    written = manifest.get("definition_hash")
    if step > 0 and written and run.definition_hash and written != run.definition_hash:
        found = source_edits(manifest.get("model_definition") or {}, run.model_definition, store_root)
        where = "; ".join(f"{e['file']} {e['where']}" for e in found) or "the script's arguments"
        edits.append({"step": step, "from": written, "to": run.definition_hash, "where": where})
        if world.is_main:
            log.warning("definition changed at step %d: %s (continue_edited: %s). The run goes on with the edited "
                        "code; from this step on it is no longer bitwise identical to an uninterrupted run",
                        step, where, run.definition_hash)
    return edits


def reshards(extra: dict, step: int, written_by: int, world, script: bool = False) -> list[dict]:
    """Every change of the number of processes the run went through (allow_reshard), to carry in
    each later checkpoint's extra and manifest: the restored ``extra``'s, and this resume's when
    it is one (then told in the log)."""
    changes = list(extra.get("reshards") or [])
    if step > 0 and written_by != world.world_size:
        changes.append({"step": step, "from": written_by, "to": world.world_size})
        if world.is_main:
            samples = ("every step trains the same samples when the batches come from seg.dataloader (its batch_size "
                       "is the step's over all processes); a loader of the script's or a trainer's own gives each "
                       "process its own batch, so a step then trains another number of samples" if script else
                       "every step trains the same samples")
            log.warning("resharded: the checkpoint at step %d was written by %d process(es) and resumes with %d "
                        "(allow_reshard): %s, but the gradients are summed in another order, so the result is no "
                        "longer bitwise identical to an uninterrupted run", step, written_by, world.world_size, samples)
    return changes


def restore(run, segment, store, previous, backend, skipped, world=SINGLE) -> Restored:
    """The state restored into ``backend`` from the best candidate that loads on every process.
    Only ``world``'s main process sets a damaged checkpoint aside."""
    def note(step, why):
        skipped.append({"step": step, "reason": why})

    clean = True
    for ck, source in candidates(segment, store, previous, note, backend.verified_reads):
        changed = definition_mismatch(run, ck.manifest)
        if changed:
            raise RuntimeError(
                f"{ck.path} was written for a different model definition ({changed} changed); refusing to "
                "resume. Give the run a new name to train the new definition; nothing was changed"
            )
        failure = None  # (kind, why): what went wrong on this process
        try:
            extra = backend.read_state(ck.path)
            if not isinstance(extra, dict) or extra.get("step") != ck.step:
                raise store_mod.CorruptCheckpoint(f"holds step {extra.get('step') if isinstance(extra, dict) else '?'}")
        except store_mod.IncompatibleCheckpoint as exc:
            failure = ("incompatible", str(exc))
        except store_mod.CorruptCheckpoint as exc:  # hashed as it loaded: skipped before anything was applied
            failure = ("damaged", str(exc))
        except Exception as exc:  # it verified, so the bytes are what was written, but they do not load
            failure = ("unloadable", f"{ck.path}: verifies but does not load ({type(exc).__name__}: {exc})")
        # every process resumes from the same checkpoint: one that failed on any of them (a
        # damaged file of one rank) is skipped by all
        failures = [f for f in world.all_gather(failure) if f is not None]
        if not failures:
            return Restored(source, ck.step, extra, clean, int(ck.manifest.get("world_size", 1)), ck.manifest)
        kind, why = next((f for f in failures if f[0] == "incompatible"), failures[0])
        if kind == "incompatible":
            raise store_mod.IncompatibleCheckpoint(why)
        log.warning("skipping checkpoint at step %d: %s", ck.step, why)
        note(ck.step, why)
        if any(k == "unloadable" for k, _ in failures):
            clean = False  # some process may hold half of it: build again
            if Path(ck.path).parent == store.root and world.is_main:
                store.quarantine(ck.step, why)
    if segment.start > 0:
        raise RuntimeError(
            f"segment {segment.index} needs the checkpoint at step {segment.start} and none verifies; "
            "retrain the previous segment (and so the ones after it), not the whole run: snakemake --forcerun "
            f"{RunPaths(run_root(run.name)).segment_dir(segment.index - 1)}"
        )
    return Restored("a freshly seeded model", 0, {}, clean, world.world_size)
