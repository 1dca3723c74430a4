"""The checkpoint store: atomic ``step-<N>`` folders with a manifest written last.

A checkpoint counts only when its folder has its final name and its manifest lists every file
with the size and sha256 it has on disk. Writing goes to a hidden temporary folder that is
fsynced and then renamed, so a kill at any moment leaves either the complete checkpoint or a
temporary folder that the next start removes. Framework code only writes files into the folder
it is handed; everything else lives here and imports no framework.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

from .checkpoint_files import (  # noqa: F401  (the store's interface to one folder's files)
    ALL_FILES,
    MANIFEST,
    MANIFEST_MAX_BYTES,
    CorruptCheckpoint,
    fsync_path,
    hashed_file,
    link_or_copy,
    load_verified,
    open_regular,
    read_manifest,
    regular_size,
    sealed,
    sha256_file,
    verify,
    write_json_atomic,
    written_hashes,
)

log = logging.getLogger(__name__)

FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


class StoreError(RuntimeError):
    """The store cannot do what was asked (disk full, locked by another process, ...)."""


class IncompatibleCheckpoint(RuntimeError):
    """A sound checkpoint that does not fit what the task builds now (the model changed): not
    damage, so the store never falls back past it to an older one."""


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path
    manifest: dict


def step_dir_name(step: int) -> str:
    return f"step-{step:09d}"


def _disk_full(root: Path, exc: BaseException) -> bool:
    """Whether a failed write failed for lack of space. Frameworks do not always say so (PyTorch's
    writer raises 'enforce fail at inline_container.cc'), so the file system is asked too."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        usage = shutil.disk_usage(root)
    except OSError:
        return False
    return usage.free < min(1 << 20, 0.05 * usage.total)


_HELD_LOCKS: set[str] = set()  # lock files this process holds (POSIX locks do not exclude their own process)


class CheckpointStore:
    """``step-<N>`` folders under ``root``; keeps the newest ``keep`` (at least 2) by step number."""

    def __init__(self, root: Path | str, keep: int = 2):
        if keep < 2:
            # The newest checkpoint can be the one a kill damaged; the one before it is the fallback.
            raise StoreError(f"keep must be at least 2, got {keep}")
        self.root = Path(root)
        self.keep = keep
        self._lock_fh = None

    # -- housekeeping -------------------------------------------------------------------------
    def lock(self, wait: float = 0.0) -> None:
        """Take an exclusive lock so two jobs never train the same run at once.

        A POSIX record lock (``lockf``): it belongs to this process alone, so processes it forks
        (loader workers, a script's own multiprocessing) never hold it, and it ends with the
        process however the process ends: a lock whose holder is gone is free, and taking it over
        is logged. ``wait`` seconds are given to a holder that is still stopping (a killed job's
        shell leaves its training process to save and exit) before the lock is refused."""
        self.root.mkdir(parents=True, exist_ok=True)
        key = str((self.root / ".lock").resolve())
        if key in _HELD_LOCKS:
            raise StoreError(f"{self.root} is already locked by this process; two jobs cannot train the same run "
                             "at once")
        fh = open(self.root / ".lock", "a+")
        give_up, told = time.monotonic() + wait, False
        while True:
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    fh.close()
                    raise
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            if time.monotonic() >= give_up:
                fh.close()
                raise StoreError(
                    f"{self.root} is in use by {holder}; two jobs cannot train the same run at once"
                ) from None
            if not told:
                log.info("%s is locked by %s; waiting up to %.0f s for it to stop", self.root, holder, wait)
                told = True
            time.sleep(0.2)
        fh.seek(0)
        before = fh.read().split()
        if len(before) == 2 and before[0] == "pid" and before[1].isdigit() and int(before[1]) != os.getpid():
            log.info("took over the lock of %s, left by pid %s, which is gone", self.root, before[1])
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        self._lock_fh = fh
        _HELD_LOCKS.add(key)
        self._lock_key = key

    def unlock(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()  # closing the file ends the lock
            self._lock_fh = None
            _HELD_LOCKS.discard(self._lock_key)

    def clean_partials(self) -> list[str]:
        """Remove temporary folders left by saves that were killed; return their names."""
        removed = []
        if not self.root.exists():
            return removed
        for entry in self.root.iterdir():
            if entry.name.startswith(".tmp-step-") or entry.name.startswith(".old-step-"):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
                log.info("removed %s, left by a save that did not finish", entry.name)
        return removed

    # -- reading ------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """Steps of the checkpoint folders present, in numeric order (not verified). Only names
        this store writes count (``step-000000050``); anything else (``step-5`` copied in by hand)
        is left alone and never pruned."""
        if not self.root.exists():
            return []
        found = []
        for entry in self.root.iterdir():
            m = _STEP_DIR.match(entry.name)
            # a symlinked step folder is not this store's (it could point anywhere): left alone
            if m and entry.name == step_dir_name(int(m.group(1))) and entry.is_dir() and not entry.is_symlink():
                found.append(int(m.group(1)))
        return sorted(found)

    def quarantine(self, step: int, why: str) -> None:
        """Move a checkpoint that verifies but cannot be loaded out of the way (kept for a look,
        as ``.damaged-step-N``), so the step can be written again."""
        target = self.root / f".damaged-{step_dir_name(step)}-{int(time.time())}"
        try:
            os.rename(self.path(step), target)
            (target / "WHY").write_text(why + "\n")
        except OSError:
            pass

    def path(self, step: int) -> Path:
        return self.root / step_dir_name(step)

    def newest_valid(
        self, max_step: int | None = None, min_step: int = 0, on_skip: Callable[[int, str], None] | None = None
    ) -> Checkpoint | None:
        """The newest checkpoint with min_step <= step <= max_step that verifies, or None.

        Damaged ones are skipped with a log line that says which and why.
        """
        return next(self.valid(max_step, min_step, on_skip), None)

    def valid(self, max_step: int | None = None, min_step: int = 0,
              on_skip: Callable[[int, str], None] | None = None, deferred: Collection[str] = ()):
        """The checkpoints with min_step <= step <= max_step that verify, newest first (the
        files in ``deferred`` by size only: their reader hashes them, see ``load_verified``)."""
        for step in reversed(self.steps()):
            if step < min_step or (max_step is not None and step > max_step):
                continue
            try:
                manifest = verify(self.path(step), deferred)
                if manifest["step"] != step:
                    raise CorruptCheckpoint(f"{self.path(step)}: its manifest is for step {manifest['step']}")
            except CorruptCheckpoint as exc:
                log.warning("skipping checkpoint at step %d: %s", step, exc)
                if on_skip:
                    on_skip(step, str(exc))
                continue
            yield Checkpoint(step, self.path(step), manifest)

    # -- writing ------------------------------------------------------------------------------
    def save(self, step: int, write_files: Callable[[Path], None], meta: dict | None = None,
             world=None) -> Checkpoint:
        """Write a checkpoint for ``step``: ``write_files(folder)`` fills a temporary folder,
        then the manifest is written last, everything fsynced, and the folder renamed into place.
        With several processes (``world``) every one of them calls this (``save_together``)."""
        if world is not None and world.world_size > 1:
            return self.save_together(step, write_files, meta, world)
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(step)
        if final.exists():
            try:
                manifest = verify(final)
                return Checkpoint(step, final, manifest)  # deterministic training: same content
            except CorruptCheckpoint as exc:
                log.warning("replacing damaged checkpoint at step %d: %s", step, exc)
                aside = self.root / f".old-step-{step}-{os.getpid()}"
                os.rename(final, aside)
                shutil.rmtree(aside, ignore_errors=True)
        tmp = self.root / f".tmp-step-{step}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            written_hashes(tmp)  # none left from an earlier try
            write_files(tmp)
            hashed = written_hashes(tmp)
            files = {}
            for f in sorted(tmp.iterdir()):
                if f.name == MANIFEST:
                    continue
                fsync_path(f)
                size, known = f.stat().st_size, hashed.get(f.name)
                # hashed as it was written (a disk that stored other bytes then fails verification)
                files[f.name] = known if known and known["size"] == size else {"size": size, "sha256": sha256_file(f)}
            manifest = sealed({"format": FORMAT, "step": step, "created": time.time(), "files": files, **(meta or {})})
            with open(tmp / MANIFEST, "w") as fh:
                json.dump(manifest, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            fsync_path(tmp)
            os.rename(tmp, final)
            fsync_path(self.root)
        except Exception as exc:
            full = _disk_full(self.root, exc)
            shutil.rmtree(tmp, ignore_errors=True)
            if full:
                raise StoreError(
                    f"no space left to save the checkpoint at step {step} in {self.root}; the earlier "
                    "checkpoints are intact. Free space (or raise the volume's size) and run again"
                ) from exc
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Checkpoint(step, final, manifest)

    def save_together(self, step: int, write_files: Callable[[Path], None], meta: dict | None, world) -> Checkpoint:
        """``save`` by every process of ``world``: each writes its own files into one temporary
        folder (through ``hashed_file``: hashed as written), fsyncs them and reports their sizes
        and digests; the main process commits (the manifest, with every rank's files and the
        world size, then the rename) only once every rank's files are durable. A failure on any
        rank fails the save on every rank, and the folder goes."""
        final, tmp, existing = self.path(step), None, None
        if world.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if final.exists():
                try:
                    existing = verify(final)
                except CorruptCheckpoint as exc:
                    log.warning("replacing damaged checkpoint at step %d: %s", step, exc)
                    aside = self.root / f".old-step-{step}-{os.getpid()}"
                    os.rename(final, aside)
                    shutil.rmtree(aside, ignore_errors=True)
            if existing is None:
                tmp = self.root / f".tmp-step-{step}-{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
        existing, tmp = world.broadcast((existing, str(tmp) if tmp else None))
        if existing is not None:
            return Checkpoint(step, final, existing)  # deterministic training: same content
        tmp = Path(tmp)
        mine, error = {}, None
        try:
            written_hashes(tmp)
            write_files(tmp)
            mine = written_hashes(tmp)
            # a framework's own writer (Lightning's, the Trainer's) does not hash: every rank makes
            # durable what it finds (its own files among them); the main process hashes, below,
            # the files nobody reported, once every rank has written
            for path in tmp.iterdir():
                try:
                    if path.is_file():
                        fsync_path(path)
                except FileNotFoundError:  # another rank's temporary file, renamed meanwhile: not ours
                    pass
        except Exception as exc:
            error = exc
        reports = world.all_gather((mine, f"{type(error).__name__}: {error}" if error else None))
        failed = [(rank, why) for rank, (_, why) in enumerate(reports) if why]
        committed = None
        if not failed and world.is_main:
            try:
                files = {}
                for rank_files, _ in reports:
                    clash = set(files) & set(rank_files)
                    if clash:
                        raise StoreError(f"two processes wrote {sorted(clash)} into the checkpoint of step {step}")
                    files.update(rank_files)
                for path in sorted(tmp.iterdir()):
                    if path.name not in files and path.name != MANIFEST:
                        if not path.is_file():
                            raise StoreError(f"{path.name} in the checkpoint of step {step} is not a file")
                        files[path.name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
                manifest = sealed({"format": FORMAT, "step": step, "created": time.time(),
                                   "files": dict(sorted(files.items())), "world_size": world.world_size, **(meta or {})})
                write_json_atomic(tmp / MANIFEST, manifest)
                os.rename(tmp, final)
                fsync_path(self.root)
                committed = manifest
            except Exception as exc:
                failed.append((0, f"{type(exc).__name__}: {exc}"))
                error = error or exc
        if world.is_main and committed is None:
            full = error is not None and _disk_full(self.root, error)
            shutil.rmtree(tmp, ignore_errors=True)
        committed = world.broadcast((committed, failed))
        manifest, failed = committed
        if manifest is None:
            if error is not None and world.is_main and full:
                raise StoreError(f"no space left to save the checkpoint at step {step} in {self.root}; the earlier "
                                 "checkpoints are intact. Free space (or raise the volume's size) and run again") from error
            if error is not None:
                raise error
            raise StoreError(f"the checkpoint at step {step} was not saved: rank {failed[0][0]} failed to write its "
                             f"part ({failed[0][1]}); the earlier checkpoints are intact")
        return Checkpoint(step, final, manifest)

    def _sound(self, step: int) -> bool:
        """A quick check for pruning: the manifest reads and every file it lists is there, regular,
        of its size (truncation, a missing file, a lost manifest); digests are checked on resume."""
        try:
            verify(self.path(step), deferred=ALL_FILES)
            return True
        except CorruptCheckpoint:
            return False

    def prune(self, protect: set[int] = frozenset()) -> list[int]:
        """Delete all but the newest ``keep`` sound checkpoints (numeric order) and those in
        ``protect``: a damaged checkpoint does not count toward ``keep``, so the valid ones before
        it stay (it is itself left for a look until it is older than all of them)."""
        steps = self.steps()
        kept = 0
        for i in reversed(range(len(steps))):
            if kept >= self.keep:
                break
            if self._sound(steps[i]):
                kept += 1
        else:
            i = -1
        doomed = [s for s in steps[: i + 1] if s not in protect]
        for s in doomed:
            aside = self.root / f".old-step-{s}-{os.getpid()}"
            os.rename(self.path(s), aside)  # rename first: a kill mid-delete leaves no half folder
            shutil.rmtree(aside, ignore_errors=True)
        return doomed


def recorded_model_hash(root: Path | str) -> str | None:
    """The model hash in the newest readable manifest under ``root`` (no hashing: cheap at parse time)."""
    manifest = recorded_manifest(root)
    return manifest.get("model_hash") if manifest else None


def recorded_manifest(root: Path | str) -> dict | None:
    """The newest readable manifest under ``root`` that names a model (not verified: cheap at parse time)."""
    store = CheckpointStore(root)
    for step in reversed(store.steps()):
        try:
            manifest = read_manifest(store.path(step))
        except (OSError, CorruptCheckpoint):
            continue
        if isinstance(manifest, dict) and isinstance(manifest.get("model_hash"), str):
            return manifest
    return None
