"""The checkpoint store: atomic ``step-<N>`` folders with a manifest written last.

A checkpoint counts only when its folder has its final name and its manifest lists every file
with the size and sha256 it has on disk. Writing goes to a hidden temporary folder that is
fsynced and then renamed, so a kill at any moment leaves either the complete checkpoint or a
temporary folder that the next start removes. Framework code only writes files into the folder
it is handed; everything else lives here and imports no framework.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import mmap
import os
import re
import shutil
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CorruptCheckpoint(Exception):
    """A checkpoint folder that does not match its manifest."""


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


MANIFEST_MAX_BYTES = 64 << 20  # a manifest lists file names and digests: anything larger is not one


def open_regular(path: Path):
    """``path`` opened for reading if it is a regular file, not through a symlink: a checkpoint
    never holds anything else, and a link to /dev/zero or a FIFO would make a reader wait or
    read forever. (No O_NONBLOCK race: the descriptor itself is checked.) Raises
    CorruptCheckpoint naming what the path is instead."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptCheckpoint(f"{path} is a symbolic link; a checkpoint holds regular files only") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a folder" if stat.S_ISDIR(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        raise CorruptCheckpoint(f"{path} is {kind}; a checkpoint holds regular files only")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def regular_size(path: Path) -> int:
    """The size of ``path`` if it is a regular file (not a symlink), else CorruptCheckpoint."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise CorruptCheckpoint(f"{path} is a symbolic link; a checkpoint holds regular files only")
    if not stat.S_ISREG(info.st_mode):
        raise CorruptCheckpoint(f"{path} is not a regular file; a checkpoint holds regular files only")
    return info.st_size


def read_manifest(folder: Path) -> dict:
    """The parsed manifest of ``folder`` (a regular file of bounded size; not verified).
    Raises FileNotFoundError when there is none and CorruptCheckpoint when it is not one."""
    path = Path(folder) / MANIFEST
    with open_regular(path) as fh:
        data = fh.read(MANIFEST_MAX_BYTES + 1)
    if len(data) > MANIFEST_MAX_BYTES:
        raise CorruptCheckpoint(f"{path}: larger than {MANIFEST_MAX_BYTES >> 20} MiB, not a manifest")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise CorruptCheckpoint(f"{path}: unreadable {MANIFEST}: {exc}") from None


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    """The file's sha256, hashed straight from the page cache through a read-only mapping (no
    copy into a buffer); read in blocks where it cannot be mapped (an empty file, some FUSE
    file systems). Regular files only (``open_regular``)."""
    h = hashlib.sha256()
    with open_regular(path) as fh:
        try:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            while block := fh.read(chunk):
                h.update(block)
            return h.hexdigest()
        with mapped, memoryview(mapped) as view:
            for start in range(0, len(view), chunk):
                h.update(view[start:start + chunk])  # hashlib lets go of the GIL for large blocks
    return h.hexdigest()


_HASH_POOL: dict = {}  # process id -> its hashing thread


def _hash_thread() -> concurrent.futures.ThreadPoolExecutor:
    """One thread per process, made on first use, that hashes large writes while they are
    written (a forked child has none of its parent's threads: it makes its own)."""
    pid = os.getpid()
    if pid not in _HASH_POOL:
        _HASH_POOL.clear()
        _HASH_POOL[pid] = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="segtrain-hash")
    return _HASH_POOL[pid]


class _HashingFile:
    """A write-only file that hashes what passes through it, so a save never reads its file back
    to hash it. No ``fileno``, ``seek`` or ``tell``: every byte must pass through ``write``
    (zipfile-based writers then append their sizes after the data instead of seeking back)."""

    OVERLAP = 4 << 20  # writes at least this large are hashed on a second thread while they are written

    def __init__(self, path: Path):
        self._fh = open(path, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.size += len(view)
        if len(view) < self.OVERLAP:
            self._hash.update(view)
            return self._fh.write(view)
        # hashing and copying into the page cache both let go of the GIL: done side by side, a
        # save costs the longer of the two instead of their sum. The hash finishes before write
        # returns: the caller may reuse or free the memory afterwards.
        hashing = _hash_thread().submit(self._hash.update, view)
        try:
            return self._fh.write(view)
        finally:
            hashing.result()

    def read(self, *args):
        raise io.UnsupportedOperation("write-only")

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


_HASHED: dict[str, dict[str, dict]] = {}  # folder -> file name -> {size, sha256}, as written


@contextlib.contextmanager
def hashed_file(folder: Path, name: str):
    """Open ``folder/name`` for writing through a hash: ``CheckpointStore.save`` then takes the
    file's size and sha256 from what was written instead of reading the file again."""
    fh = _HashingFile(Path(folder) / name)
    try:
        yield fh
        fh.flush()
    finally:
        fh.close()
    _HASHED.setdefault(str(Path(folder)), {})[name] = {"size": fh.size, "sha256": fh._hash.hexdigest()}


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data) -> None:
    """Write JSON to ``path`` through a fsynced temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


class _Everything:
    """``deferred`` for a size-only verification: contains every name."""

    def __contains__(self, name) -> bool:
        return True


_ALL_FILES = _Everything()


def _is_file_entry(name, meta) -> bool:
    return (isinstance(name, str) and name and "/" not in name and name not in (".", "..", MANIFEST)
            and isinstance(meta, dict) and isinstance(meta.get("size"), int) and not isinstance(meta["size"], bool)
            and isinstance(meta.get("sha256"), str))


def verify(path: Path, deferred: Collection[str] = ()) -> dict:
    """Return the manifest of the checkpoint folder ``path`` or raise CorruptCheckpoint saying why.

    A manifest of any other shape than the one ``save`` writes (not an object, no files, an entry
    without its size or digest, a name outside the folder) is damage like a wrong digest.
    Files named in ``deferred`` are checked for their size only: the caller reads them through
    ``load_verified``, which hashes them while they load (one pass over the disk, not two)."""
    path = Path(path)
    try:
        manifest = read_manifest(path)
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{path}: no {MANIFEST} (the save did not finish)") from None
    except OSError as exc:
        raise CorruptCheckpoint(f"{path}: unreadable {MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict):
        raise CorruptCheckpoint(f"{path}: {MANIFEST} is a {type(manifest).__name__}, not an object")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise CorruptCheckpoint(f"{path}: {MANIFEST} lists no files")
    if not isinstance(manifest.get("step"), int) or isinstance(manifest["step"], bool):
        raise CorruptCheckpoint(f"{path}: {MANIFEST} has no step number")
    for entry in os.scandir(path):  # readers open files by name, listed or not: none may lead elsewhere
        if entry.is_symlink() or not (entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)):
            what = "a symbolic link" if entry.is_symlink() else "not a regular file"
            raise CorruptCheckpoint(f"{path}: {entry.name} is {what}; a checkpoint holds regular files only")
    for name, meta in files.items():
        if not _is_file_entry(name, meta):
            raise CorruptCheckpoint(f"{path}: {MANIFEST} has a malformed entry {name!r}: {meta!r}")
        f = path / name
        try:
            size = regular_size(f)  # a symlink out of the folder, a device or a FIFO is damage
        except FileNotFoundError:
            raise CorruptCheckpoint(f"{path}: file {name} is missing") from None
        if size != meta["size"]:
            raise CorruptCheckpoint(f"{path}: file {name} has {size} bytes, the manifest says {meta['size']}")
        if name in deferred:
            continue
        digest = sha256_file(f)
        if digest != meta["sha256"]:
            raise CorruptCheckpoint(f"{path}: file {name} does not match its sha256 (changed or damaged)")
    return manifest


def load_verified(folder: Path, name: str, load: Callable[[Path], Any]) -> Any:
    """``load(folder/name)`` while a second thread hashes the same file against the folder's
    manifest; the result is returned only when the digest matches, else CorruptCheckpoint is
    raised before anything loaded is used. The two readers share the page cache, so the file
    comes off the disk once, and hashing overlaps deserialising."""
    folder = Path(folder)
    try:
        regular_size(folder / name)
        entry = read_manifest(folder)["files"][name]
        expected = entry["sha256"]
    except (OSError, ValueError, KeyError, TypeError, CorruptCheckpoint) as exc:
        raise CorruptCheckpoint(f"{folder}: {MANIFEST} has no usable entry for {name} ({exc})") from None
    found: dict = {}

    def hash_file():
        try:
            found["digest"] = sha256_file(folder / name)
        except OSError as exc:
            found["error"] = exc

    hasher = threading.Thread(target=hash_file, name=f"segtrain-verify-{name}")
    hasher.start()
    try:
        loaded = load(folder / name)
    except Exception as exc:
        hasher.join()
        if found.get("digest", expected) != expected or "error" in found:
            raise CorruptCheckpoint(f"{folder}: file {name} does not match its sha256 (changed or damaged)") from exc
        raise
    hasher.join()
    if "error" in found:
        raise CorruptCheckpoint(f"{folder}: file {name} cannot be read: {found['error']}")
    if found["digest"] != expected:
        raise CorruptCheckpoint(f"{folder}: file {name} does not match its sha256 (changed or damaged)")
    return loaded


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
    def save(self, step: int, write_files: Callable[[Path], None], meta: dict | None = None) -> Checkpoint:
        """Write a checkpoint for ``step``: ``write_files(folder)`` fills a temporary folder,
        then the manifest is written last, everything fsynced, and the folder renamed into place.
        """
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
            _HASHED.pop(str(tmp), None)
            write_files(tmp)
            hashed = _HASHED.pop(str(tmp), {})
            files = {}
            for f in sorted(tmp.iterdir()):
                if f.name == MANIFEST:
                    continue
                fsync_path(f)
                size, known = f.stat().st_size, hashed.get(f.name)
                # hashed as it was written (a disk that stored other bytes then fails verification)
                files[f.name] = known if known and known["size"] == size else {"size": size, "sha256": sha256_file(f)}
            manifest = {"format": FORMAT, "step": step, "created": time.time(), "files": files, **(meta or {})}
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

    def _sound(self, step: int) -> bool:
        """A quick check for pruning: the manifest reads and every file it lists is there, regular,
        of its size (truncation, a missing file, a lost manifest); digests are checked on resume."""
        try:
            verify(self.path(step), deferred=_ALL_FILES)
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


def link_or_copy(src: Path, dst: Path, skip: set[str] = frozenset()) -> None:
    """Hard-link the files of checkpoint folder ``src`` into folder ``dst`` (copy across devices)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name in skip:
            continue
        target = dst / f.name
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
