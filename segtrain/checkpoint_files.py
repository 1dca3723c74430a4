"""One checkpoint folder's files: read only as regular files, hashed as they are written or
read, verified against the folder's manifest, written atomically. No framework, no store policy
(names, pruning, locks: ``store``)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import io
import json
import mmap
import os
import shutil
import stat
import threading
from pathlib import Path
from typing import Any, Callable, Collection

MANIFEST = "manifest.json"


class CorruptCheckpoint(Exception):
    """A checkpoint folder that does not match its manifest."""


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
        manifest = json.loads(data)
    except ValueError as exc:
        raise CorruptCheckpoint(f"{path}: unreadable {MANIFEST}: {exc}") from None
    if isinstance(manifest, dict) and MANIFEST_DIGEST in manifest and manifest[MANIFEST_DIGEST] != digest_of(manifest):
        raise CorruptCheckpoint(f"{path}: {MANIFEST} does not match its own digest (its bytes changed after it "
                                "was written)")
    return manifest


MANIFEST_DIGEST = "manifest_sha256"  # a manifest's digest of itself: a changed byte in it is damage


def digest_of(manifest: dict) -> str:
    """The sha256 of ``manifest``'s content, its own digest left out (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sealed(manifest: dict) -> dict:
    """``manifest`` with its digest of itself, as the store writes it: a flipped bit in a field
    (the model definition's hash, the world size) makes the checkpoint damaged, skipped for the
    one before, never a different model or world that refuses the run."""
    return {**manifest, MANIFEST_DIGEST: digest_of(manifest)}


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


def written_hashes(folder: Path) -> dict[str, dict]:
    """The sizes and digests of the files written into ``folder`` through ``hashed_file`` since the
    last call, by file name (taken: a second call returns nothing)."""
    return _HASHED.pop(str(Path(folder)), {})


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


ALL_FILES = _Everything()  # verify(deferred=ALL_FILES): sizes only


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
