"""What a segment leaves: its output folder (the final state, the best one, its metrics rows and
``segment.json``, written last) and the best checkpoint kept apart from the rotation."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

from . import store as store_mod
from .layout import SEGMENT_BEST, SEGMENT_METRICS, SEGMENT_STATE, SEGMENT_SUMMARY
from .world import SINGLE


def checkpoint_meta(run, segment, **more) -> dict:
    """What a checkpoint's manifest says of its run (``run``: its ``RunSettings``): the model
    definition a resume must find again."""
    meta = {"framework": run.framework, "model_hash": run.model_hash, "run": run.name, "segment": segment.index, **more}
    if run.definition_hash:
        meta.update(definition_hash=run.definition_hash, model_definition=run.model_definition)
    return meta


def save_best(run, segment, store, best_store, state, extra, best, world=SINGLE, **more) -> None:
    """Keep the best state so far apart from the rotation: linked from the periodic checkpoint
    of the same step when there is one, else written (by every process of ``world``, each its
    own files, like a periodic checkpoint)."""
    step = extra["step"]
    meta = checkpoint_meta(run, segment, best=best, **more)
    if store.path(step).exists():  # every process's files are in it already: the main one links them
        if world.is_main:
            best_store.save(step, lambda folder: store_mod.link_or_copy(store.path(step), folder,
                                                                        skip={store_mod.MANIFEST}), meta)
    else:
        best_store.save(step, lambda folder: state.write_state(folder, extra), meta, world=world)
    if world.is_main:
        best_store.prune(protect={step})


def write_output(segment, final, metrics, out_dir, source, attempt, saves, started_wall, history,
                  best_ckpt=None, save_log=(), data: str = "", data_shuffled: bool = False,
                 data_placeholder: bool = False) -> dict:
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    store_mod.link_or_copy(final, out_dir / SEGMENT_STATE)
    if best_ckpt is not None:
        store_mod.link_or_copy(best_ckpt.path, out_dir / SEGMENT_BEST)
    rows = [r for r in metrics.rows if segment.start < int(r["step"]) <= segment.end]
    with open(out_dir / SEGMENT_METRICS, "w", newline="") as fh:
        w = csv.DictWriter(fh, metrics.fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    summary = {
        "segment": vars(segment),
        "attempts": attempt,
        "started_from": source,
        "saves_this_attempt": len(saves),
        "save_seconds_max": max(saves, default=0.0),
        # this attempt's saves: what each blocked training and how long its write took
        "saves": list(save_log),
        "wall_seconds_this_attempt": time.time() - started_wall,
        "history": history,
        "best": best_ckpt.manifest.get("best") if best_ckpt is not None else None,
        # why the data position of a resume is not exact ('' where it is: seg.dataloader, the tasks')
        "data": data,
        "data_shuffled": data_shuffled,
        "data_placeholder": data_placeholder,  # the script's iterable gave None: it draws its batches itself
    }
    store_mod.write_json_atomic(out_dir / SEGMENT_SUMMARY, summary)  # written last: the output is complete
    return summary
