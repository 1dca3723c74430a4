import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from segtrain import checkpoint_files
from segtrain import store as st
from segtrain.data import DataOrder
from segtrain.layout import SEGMENT_BEST, SEGMENT_STATE, SEGMENT_SUMMARY
from segtrain.settings import RunSettings


def write_payload(payload: bytes):
    def write(folder: Path):
        (folder / "state.bin").write_bytes(payload)
        (folder / "extra.txt").write_text("x")
    return write


def test_save_is_complete_with_manifest_and_no_temporary_left(tmp_path):
    s = st.CheckpointStore(tmp_path)
    ck = s.save(5, write_payload(b"abc"), {"model_hash": "h"})
    assert ck.path.name == "step-000000005"
    manifest = st.verify(ck.path)
    assert manifest["step"] == 5 and manifest["model_hash"] == "h"
    assert set(manifest["files"]) == {"state.bin", "extra.txt"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_keep_newest_k_uses_numeric_not_string_order(tmp_path):
    s = st.CheckpointStore(tmp_path, keep=2)
    for step in (9, 10, 100, 1000, 99):
        s.save(step, write_payload(str(step).encode()))
    s.prune(protect={99})
    assert s.steps() == [99, 100, 1000]
    s.prune()
    assert s.steps() == [100, 1000]


def test_keep_below_two_is_refused(tmp_path):
    with pytest.raises(st.StoreError, match="at least 2"):
        st.CheckpointStore(tmp_path, keep=1)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest", "missing_file"])
def test_damaged_newest_checkpoint_is_skipped_and_previous_used(tmp_path, damage, caplog):
    s = st.CheckpointStore(tmp_path, keep=3)
    s.save(10, write_payload(os.urandom(4096)))
    newest = s.save(20, write_payload(os.urandom(4096)))
    f = newest.path / "state.bin"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:1000])
    elif damage == "flip":
        data = bytearray(f.read_bytes())
        data[2000] ^= 0x01
        f.write_bytes(bytes(data))
    elif damage == "no_manifest":
        (newest.path / st.MANIFEST).unlink()
    else:
        f.unlink()
    skipped = []
    found = s.newest_valid(on_skip=lambda step, why: skipped.append((step, why)))
    assert found.step == 10
    assert skipped and skipped[0][0] == 20
    assert "step 20" in caplog.text


def test_saving_over_a_damaged_checkpoint_replaces_it(tmp_path):
    s = st.CheckpointStore(tmp_path)
    ck = s.save(3, write_payload(b"good"))
    (ck.path / "state.bin").write_bytes(b"bad!")
    s.save(3, write_payload(b"good"))
    assert (ck.path / "state.bin").read_bytes() == b"good"
    st.verify(ck.path)


def test_second_process_cannot_lock_the_same_store(tmp_path):
    s = st.CheckpointStore(tmp_path)
    s.lock()
    code = f"from segtrain.store import CheckpointStore; CheckpointStore({str(tmp_path)!r}).lock()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "in use by pid" in r.stderr
    s.unlock()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


SAVER = """
import os, sys, time
from pathlib import Path
from segtrain.store import CheckpointStore
s = CheckpointStore(sys.argv[1], keep=2)
def write(folder):
    for i in range(4):
        with open(folder / f"part{i}", "wb") as fh:
            fh.write(os.urandom(256 * 1024)); fh.flush(); time.sleep(0.01)
step = 0
while True:
    step += 1
    s.save(step, write)
    s.prune(protect={step})
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_during_saves_never_leaves_a_checkpoint_that_counts_but_is_broken(tmp_path, seed):
    rng = np.random.default_rng(seed)
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)])
    # the kill lands at a random moment after the first save, however long the saver took to start
    # (a fixed wait from the start found nothing saved yet on a busy machine)
    deadline = time.time() + 60
    while not any(p.name.startswith("step-") for p in tmp_path.iterdir()) and time.time() < deadline:
        assert proc.poll() is None, "the saver ended on its own"
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    s = st.CheckpointStore(tmp_path)
    steps = s.steps()
    assert steps, "the saver wrote nothing before the kill"
    for step in steps:  # every folder with a final name verifies
        st.verify(s.path(step))
    assert s.newest_valid().step == steps[-1]
    s.clean_partials()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp") or p.name.startswith(".old")] == []


def test_recorded_model_hash_reads_the_newest_manifest(tmp_path):
    s = st.CheckpointStore(tmp_path)
    assert st.recorded_model_hash(tmp_path) is None
    s.save(1, write_payload(b"a"), {"model_hash": "old"})
    s.save(2, write_payload(b"b"), {"model_hash": "new"})
    assert st.recorded_model_hash(tmp_path) == "new"


def test_data_order_is_a_pure_function_of_seed_and_step():
    a, b = DataOrder(100, 8, seed=3), DataOrder(100, 8, seed=3)
    steps = list(range(0, 40))
    first = [a.batch(s).tolist() for s in steps]
    # another instance, visiting the steps in a different order (as a resumed job does)
    second = {s: b.batch(s).tolist() for s in reversed(steps)}
    assert first == [second[s] for s in steps]
    assert a.steps_per_epoch == 12
    epoch0 = np.concatenate([a.batch(s) for s in range(12)])
    assert len(set(epoch0.tolist())) == 96  # no sample twice within an epoch
    assert a.position(13).to_dict() == {"epoch": 1, "index": 8}
    assert DataOrder(100, 8, seed=4).batch(0).tolist() != first[0]


@pytest.fixture
def small_disk(tmp_path):
    """A real 512 KiB file system (tmpfs; needs root), unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a small tmpfs: {r.stderr}")
        pytest.skip(f"cannot mount a small tmpfs: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_during_save_gives_a_clear_error_and_keeps_earlier_checkpoints(small_disk):
    s = st.CheckpointStore(small_disk / "ckpt", keep=2)
    s.save(1, write_payload(os.urandom(100_000)))
    s.save(2, write_payload(os.urandom(100_000)))
    with pytest.raises(st.StoreError, match="no space left.*earlier checkpoints are intact"):
        s.save(3, write_payload(os.urandom(400_000)))
    assert s.steps() == [1, 2]
    for step in s.steps():
        st.verify(s.path(step))
    assert [p.name for p in s.root.iterdir() if p.name.startswith(".tmp")] == []
    assert s.newest_valid().step == 2


def test_full_disk_with_the_real_torch_writer_gives_the_same_clear_error(small_disk):
    import torch

    s = st.CheckpointStore(small_disk / "ckpt", keep=2)

    def torch_save(n):
        def write(folder):
            torch.save({"w": torch.arange(n, dtype=torch.float32)}, folder / "state.pt")
        return write

    s.save(1, torch_save(20_000))  # 80 KB
    s.save(2, torch_save(20_000))
    # torch's own writer fails with "enforce fail at inline_container.cc", not with ENOSPC
    with pytest.raises(st.StoreError, match="no space left.*earlier checkpoints are intact") as err:
        s.save(3, torch_save(200_000))
    assert s.steps() == [1, 2] and s.newest_valid().step == 2
    print("torch's own error:", repr(err.value.__cause__)[:200])
    # torch's failed writer keeps its file open until the exception is gone (so the tmpfs can unmount)
    del err
    import gc

    gc.collect()


MALFORMED = {
    "a list": [],
    "files as a list": {"step": 3, "files": ["payload.bin"]},
    "an entry without its size": {"step": 3, "files": {"payload.bin": {"sha256": "0" * 64}}},
    "a size that is text": {"step": 3, "files": {"payload.bin": {"size": "12", "sha256": "0" * 64}}},
    "a name outside the folder": {"step": 3, "files": {"../payload.bin": {"size": 12, "sha256": "0" * 64}}},
    "no step": {"files": {"payload.bin": {"size": 12, "sha256": "0" * 64}}},
}


@pytest.mark.parametrize("shape", MALFORMED)
def test_a_manifest_of_any_wrong_shape_is_damage_and_the_one_before_is_used(tmp_path, shape):
    s = st.CheckpointStore(tmp_path, keep=3)
    s.save(2, write_payload(b"two"))
    s.save(3, write_payload(b"three"))
    (s.path(3) / st.MANIFEST).write_text(json.dumps(MALFORMED[shape]))
    skipped = []
    assert s.newest_valid(on_skip=lambda step, why: skipped.append(step)).step == 2
    assert skipped == [3]


def test_a_folder_named_by_hand_is_neither_read_nor_pruned(tmp_path):
    s = st.CheckpointStore(tmp_path, keep=2)
    (tmp_path / "step-5").mkdir()  # not this store's name for step 5 (step-000000005)
    for step in (10, 20, 30):
        s.save(step, write_payload(str(step).encode()))
        s.prune(protect={step})
    assert s.steps() == [20, 30]
    assert (tmp_path / "step-5").is_dir()


def test_a_file_hashed_while_written_is_not_read_back(tmp_path, monkeypatch):
    import numpy as np
    import torch

    store = st.CheckpointStore(tmp_path / "s")

    def write(folder):
        with st.hashed_file(folder, "state.pt") as fh:
            torch.save({"w": torch.arange(1000.0)}, fh)
        with st.hashed_file(folder, "state.npz") as fh:  # zipfile without seek: sizes after the data
            np.savez(fh, a=np.arange(7))
        (folder / "small.json").write_text("{}")  # not through the hash: read back as before

    read_back = []
    real = st.sha256_file
    monkeypatch.setattr(st, "sha256_file", lambda path, *a: read_back.append(path.name) or real(path, *a))
    ck = store.save(1, write)
    assert read_back == ["small.json"]
    monkeypatch.setattr(st, "sha256_file", real)
    assert st.verify(ck.path)["files"].keys() == {"state.pt", "state.npz", "small.json"}
    assert torch.load(ck.path / "state.pt", weights_only=True)["w"][-1] == 999
    with np.load(ck.path / "state.npz", allow_pickle=False) as data:
        assert list(data["a"]) == list(range(7))


def test_bytes_that_differ_from_what_was_written_fail_verification(tmp_path):
    """The manifest records what the writer meant to store: a disk that kept other bytes (here
    changed after the write, same size) is caught at the resume, not sealed as valid."""
    store = st.CheckpointStore(tmp_path / "s")

    def write(folder):
        with st.hashed_file(folder, "state.bin") as fh:
            fh.write(b"x" * 100)
        (folder / "state.bin").write_bytes(b"y" * 100)

    ck = store.save(1, write)
    with pytest.raises(st.CorruptCheckpoint, match="does not match its sha256"):
        st.verify(ck.path)


def test_a_deferred_file_is_hashed_while_it_loads_and_damage_is_caught_before_use(tmp_path, monkeypatch):
    """verify(deferred=...) checks the size only; load_verified hashes the file in a second
    thread while the loader reads it, and returns the result only when the digest matches."""
    import torch

    store = st.CheckpointStore(tmp_path / "s")

    def write(folder):
        with st.hashed_file(folder, "state.pt") as fh:
            torch.save({"w": torch.arange(100_000.0)}, fh)

    ck = store.save(1, write)

    def load(path):
        return torch.load(path, weights_only=True)

    hashed = []
    real = st.sha256_file
    monkeypatch.setattr(checkpoint_files, "sha256_file", lambda path, *a: hashed.append(path.name) or real(path, *a))
    st.verify(ck.path, deferred={"state.pt"})
    assert hashed == []  # one pass over the file: the load's
    assert st.load_verified(ck.path, "state.pt", load)["w"][-1] == 99_999
    assert hashed == ["state.pt"]
    data = bytearray((ck.path / "state.pt").read_bytes())
    data[-5000] ^= 0x01  # a bit flip inside the tensor's bytes: torch.load itself would not notice
    (ck.path / "state.pt").write_bytes(bytes(data))
    st.verify(ck.path, deferred={"state.pt"})  # the size still matches
    with pytest.raises(st.CorruptCheckpoint, match="does not match its sha256"):
        st.load_verified(ck.path, "state.pt", load)
    data[100:200] = b"\0" * 100  # damage the loader trips over: still reported as damage
    (ck.path / "state.pt").write_bytes(bytes(data))
    with pytest.raises(st.CorruptCheckpoint, match="does not match its sha256"):
        st.load_verified(ck.path, "state.pt", load)


def test_a_torch_state_loads_mapped_and_only_module_weights_stay_views_of_the_file(tmp_path):
    """read_state copies optimizer state out of the file's mapping while the file is hashed, and
    copies the module's weights into the live parameters only after the digest matched: a
    damaged file changes nothing, and nothing kept afterwards refers to the file."""
    import torch

    from segtrain.backends.torch_state import TorchState, read_state_file, write_state_file

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 4))
        return model, torch.optim.Adam(model.parameters(), lr=0.1)

    model, opt = build()
    model(torch.randn(8, 64)).sum().backward()
    opt.step()
    store = st.CheckpointStore(tmp_path / "s")
    ck = store.save(1, lambda f: TorchState({"model": model, "opt": opt}).write_state(f, {"step": 1}))
    fresh, fresh_opt = build()
    assert TorchState({"model": fresh, "opt": fresh_opt}).read_state(ck.path) == {"step": 1}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    for param, saved in zip(fresh.parameters(), model.parameters()):
        for key, value in fresh_opt.state[param].items():
            assert torch.equal(value, opt.state[saved][key])
            assert not _in_a_mapping_of(value, "state.pt")  # a copy in memory, not a view of the file

    before = [p.detach().clone() for p in fresh.parameters()]
    data = bytearray((ck.path / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the tensors' bytes
    (ck.path / "state.pt").write_bytes(bytes(data))
    with pytest.raises(st.CorruptCheckpoint, match="does not match its sha256"):
        TorchState({"model": fresh, "opt": fresh_opt}).read_state(ck.path)
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters()))

    base = torch.arange(10.0)
    ck = store.save(2, lambda f: write_state_file(f, {"a": base, "b": base[2:5], "m": {"w": base}}))
    loaded = read_state_file(ck.path, mapped={("m",)})
    assert not _in_a_mapping_of(loaded["a"], "state.pt")
    assert loaded["b"].untyped_storage().data_ptr() == loaded["a"].untyped_storage().data_ptr()  # still one storage
    assert loaded["b"].tolist() == [2.0, 3.0, 4.0]
    assert _in_a_mapping_of(loaded["m"]["w"], "state.pt")  # left mapped for its caller to copy


def _in_a_mapping_of(tensor, name: str) -> bool:
    """Whether the tensor's bytes lie in this process's memory mapping of a file called ``name``."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5].endswith("/" + name):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return True
    return False


def test_raw_arrays_round_trip_every_dtype_and_shape_aligned(tmp_path):
    import ml_dtypes

    from segtrain.arrays import ALIGN, read_arrays, write_arrays

    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "scalar": np.array(7, dtype=np.int64),
              "seed": np.array([1, 2], dtype=np.uint32), "empty": np.zeros((0, 5)), "flag": np.array([True, False]),
              "half": np.arange(3, dtype=ml_dtypes.bfloat16), "strided": np.arange(20.0)[::3]}
    with open(tmp_path / "a.bin", "wb") as fh:
        index = write_arrays(fh, arrays)
    assert all(offset % ALIGN == 0 for *_, offset in index)
    back = read_arrays(tmp_path / "a.bin", index)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        assert back[name].tobytes() == array.tobytes(), name
    with pytest.raises(TypeError, match="without pickle"):
        write_arrays(open(tmp_path / "b.bin", "wb"), {"o": np.array([object()])})
    (tmp_path / "a.bin").write_bytes((tmp_path / "a.bin").read_bytes()[:40])  # truncated
    with pytest.raises(ValueError, match="beyond the end"):
        read_arrays(tmp_path / "a.bin", index)


def test_a_forked_child_hashes_its_large_writes_with_a_thread_of_its_own(tmp_path):
    """Large writes are hashed on a helper thread; a child forked after the parent made that
    thread (a DataLoader worker, a script's own multiprocessing) must not wait on it forever."""
    script = f'''
import os, sys
from pathlib import Path
from segtrain import store
big = os.urandom(5 << 20)
with store.hashed_file(Path({str(tmp_path)!r}), "parent.bin") as fh:
    fh.write(big)
pid = os.fork()
if pid == 0:
    with store.hashed_file(Path({str(tmp_path)!r}), "child.bin") as fh:
        fh.write(big)
    digests = store.written_hashes(Path({str(tmp_path)!r}))
    os._exit(0 if digests["child.bin"] == digests["parent.bin"] else 3)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
'''
    done = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert done.returncode == 0


def _crafted(folder: Path, make) -> None:
    """Replace state.bin of a saved checkpoint with what ``make(path)`` puts there, and give the
    manifest the size 0 that /dev/zero and a FIFO report (the probe's crafted checkpoint)."""
    target = folder / "state.bin"
    target.unlink()
    make(target)
    manifest = json.loads((folder / st.MANIFEST).read_text())
    manifest["files"]["state.bin"]["size"] = 0
    manifest.pop("manifest_sha256")  # sealed again, as a crafted checkpoint would be: the files' checks still hold
    (folder / st.MANIFEST).write_text(json.dumps(checkpoint_files.sealed(manifest)))


CRAFTED = {
    "a symlink to /dev/zero": lambda p: p.symlink_to("/dev/zero"),
    "a FIFO": lambda p: os.mkfifo(p),
    "a symlink out of the folder": lambda p: p.symlink_to(p.parent.parent.parent / "outside.bin"),
}


@pytest.mark.parametrize("what", CRAFTED)
def test_a_state_file_that_is_not_a_regular_file_is_damage_and_read_never(tmp_path, what):
    """Verification and the verified load neither read nor wait on it; the one before is used."""
    (tmp_path / "outside.bin").write_bytes(b"")
    s = st.CheckpointStore(tmp_path / "store", keep=3)
    s.save(2, write_payload(b"two"))
    s.save(3, write_payload(b"three"))
    _crafted(s.path(3), CRAFTED[what])
    t = time.monotonic()
    skipped = []
    assert s.newest_valid(on_skip=lambda step, why: skipped.append(why)).step == 2
    assert "regular files only" in skipped[0] and "state.bin" in skipped[0]
    for deferred in ((), ("state.bin",)):
        with pytest.raises(st.CorruptCheckpoint, match="regular files only"):
            st.verify(s.path(3), deferred)
    with pytest.raises(st.CorruptCheckpoint, match="regular files only"):
        st.load_verified(s.path(3), "state.bin", lambda path: path.read_bytes())
    assert time.monotonic() - t < 5  # nothing read without end or blocked in open()


def test_a_manifest_that_is_a_device_or_too_large_is_damage(tmp_path):
    s = st.CheckpointStore(tmp_path, keep=3)
    s.save(2, write_payload(b"two"), {"model_hash": "m"})
    s.save(3, write_payload(b"three"), {"model_hash": "m"})
    (s.path(3) / st.MANIFEST).unlink()
    (s.path(3) / st.MANIFEST).symlink_to("/dev/zero")
    assert s.newest_valid().step == 2
    assert st.recorded_manifest(tmp_path)["step"] == 2  # the parse-time reader skips it too
    (s.path(3) / st.MANIFEST).unlink()
    with open(s.path(3) / st.MANIFEST, "wb") as fh:
        fh.truncate(st.MANIFEST_MAX_BYTES + 1)
    with pytest.raises(st.CorruptCheckpoint, match="not a manifest"):
        st.verify(s.path(3))


def test_an_array_index_whose_entries_overlap_or_exceed_the_file_is_refused_before_reading(tmp_path):
    from segtrain.arrays import read_arrays, write_arrays

    with open(tmp_path / "a.bin", "wb") as fh:
        index = write_arrays(fh, {"w": np.zeros(1000, np.float32), "b": np.ones(10, np.float32)})
    size = (tmp_path / "a.bin").stat().st_size
    overlapping = [[f"w{i}", "float32", [1000], 0] for i in range(75)]  # 75 views of one region
    bad = {"overlapping": overlapping, "a name twice": [index[0], index[0]],
           "past the end": [["w", "float32", [size], 0]], "a negative dimension": [["w", "float32", [-1], 0]],
           "an object dtype": [["w", "object", [1], 0]], "not a list": {"w": 0}}
    for what, entries in bad.items():
        with pytest.raises(ValueError):
            read_arrays(tmp_path / "a.bin", entries)
    assert set(read_arrays(tmp_path / "a.bin", index)) == {"w", "b"}


def test_a_child_the_holder_forked_does_not_hold_the_lock_once_the_holder_is_killed(tmp_path, caplog):
    """Loader workers (forked, ignoring SIGTERM) lived on for seconds after an out-of-memory kill of
    their training process and kept the run locked: the retry failed twice and the run stopped."""
    code = (f"import os, signal, time; from segtrain.store import CheckpointStore; "
            f"s = CheckpointStore({str(tmp_path)!r}); s.lock(); "
            "child = os.fork()\n"
            "if child == 0:\n    signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60); os._exit(0)\n"
            "print(child, flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(st.StoreError, match="in use by pid"):
            st.CheckpointStore(tmp_path).lock()
        holder.kill()
        holder.wait()
        assert os.path.exists(f"/proc/{child}")  # the forked child lives on
        caplog.set_level("INFO")
        s = st.CheckpointStore(tmp_path)
        s.lock()
        assert f"left by pid {holder.pid}, which is gone" in caplog.text
        s.unlock()
    finally:
        os.kill(child, signal.SIGKILL)


def test_the_lock_waits_for_a_holder_that_is_stopping_and_excludes_this_process_too(tmp_path):
    code = (f"import time; from segtrain.store import CheckpointStore; s = CheckpointStore({str(tmp_path)!r}); "
            "s.lock(); print('locked', flush=True); time.sleep(1.5); s.unlock(); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(st.StoreError, match="in use by pid"):
            st.CheckpointStore(tmp_path).lock()
        t = time.monotonic()
        s = st.CheckpointStore(tmp_path)
        s.lock(wait=20)  # the holder lets go after 1.5 s (a job that saved and exited)
        assert time.monotonic() - t < 10
        with pytest.raises(st.StoreError, match="already locked by this process"):
            st.CheckpointStore(tmp_path).lock()
        s.unlock()
    finally:
        holder.kill()


def test_pruning_counts_only_sound_checkpoints(tmp_path):
    """With keep 2 and a truncated newest checkpoint, pruning deleted the last valid one."""
    s = st.CheckpointStore(tmp_path, keep=2)
    for step in (10, 20):
        s.save(step, write_payload(str(step).encode() * 100))
    s.save(30, write_payload(b"30" * 100))
    with open(s.path(30) / "state.bin", "r+b") as fh:
        fh.truncate(7)
    s.prune(protect={30})
    assert s.steps() == [10, 20, 30]  # 10 and 20 are the two sound ones
    assert s.newest_valid().step == 20
    s.save(40, write_payload(b"40" * 100))
    s.prune(protect={40})
    assert s.steps() == [20, 30, 40]  # 30 is not counted; 10 goes
    s.save(50, write_payload(b"50" * 100))
    s.prune(protect={50})
    assert s.steps() == [40, 50]  # the damaged one goes once it is older than the kept ones


def test_a_damaged_best_checkpoint_exports_the_best_that_verifies_and_says_so(tmp_path, capsys):
    """A truncated best gave model.best.pt = model.pt with 'nothing was evaluated' and exit 0."""
    from segtrain.pipeline import best_folder

    segments = tmp_path / "results" / "r" / "segments"
    for index, value in ((0, 0.9), (1, 0.5)):
        best = {"monitor": "val_loss", "mode": "min", "value": value, "step": 10 * (index + 1)}
        folder = st.CheckpointStore(segments / f"{index:04d}").save(best["step"], write_payload(b"x" * 50),
                                                                   {"best": best})
        folder.path.rename(segments / f"{index:04d}" / SEGMENT_BEST)
        st.write_json_atomic(segments / f"{index:04d}" / SEGMENT_SUMMARY, {"best": best})
    assert best_folder(RunSettings(name="r"), segments / "0001") == segments / "0001" / SEGMENT_BEST
    with open(segments / "0001" / SEGMENT_BEST / "state.bin", "r+b") as fh:
        fh.truncate(3)
    assert best_folder(RunSettings(name="r"), segments / "0001") == segments / "0000" / SEGMENT_BEST
    out = capsys.readouterr().out
    assert "the best checkpoint is damaged" in out and "val_loss 0.9 at step 10" in out
    with open(segments / "0000" / SEGMENT_BEST / "state.bin", "r+b") as fh:
        fh.truncate(3)
    assert best_folder(RunSettings(name="r"), segments / "0001") == segments / "0001" / SEGMENT_STATE
    assert "model.best.* is the LAST model, not the best" in capsys.readouterr().out


def test_a_killed_measure_jobs_scratch_folder_is_removed_by_the_next_one(tmp_path):
    from segtrain.measure import remove_stale_scratch

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".measure-{dead.pid}").mkdir()
    (tmp_path / f".measure-{os.getppid()}").mkdir()  # a live process's: left alone
    assert remove_stale_scratch(tmp_path) == [f".measure-{dead.pid}"]
    assert (tmp_path / f".measure-{os.getppid()}").is_dir()


def test_a_job_on_a_completely_full_disk_says_so_and_keeps_the_checkpoints(small_disk, tmp_path):
    """A retry on a full disk failed with a bare OSError: [Errno 28]."""
    from segtrain import runner
    from segtrain.planning import Segment

    paths = runner.RunPaths(tmp_path / "results" / "r", checkpoint_root=small_disk)
    s = st.CheckpointStore(paths.store, keep=2)
    s.save(300, write_payload(b"x" * 1000))
    fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill every block
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    segment = Segment(index=1, start=300, end=600, interval=100, time_limit=3600, save_seconds=0.01)
    run = RunSettings(keep=2, name="r", grace_period_seconds=1)
    with pytest.raises(st.StoreError, match="no space left .* to start segment 1.*intact"):
        with runner.SegmentJob(run, segment, paths, None, tmp_path / "out"):
            pass
    assert st.verify(s.path(300))["step"] == 300


@pytest.mark.parametrize("field, value", [("definition_hash", "0fe1b2"), ("world_size", 3)])
def test_a_flipped_byte_in_a_manifest_field_is_damage_not_another_model_or_world(tmp_path, field, value):
    """A manifest seals itself with its own digest: a changed definition hash or world size in the
    newest checkpoint is skipped for the one before, by the job and by the check before any job."""
    from segtrain.admission import rerun_refusal

    run = RunSettings(name="r", model_hash="m", definition_hash="0fe1b3", model_definition={"task": "t"})
    s = st.CheckpointStore(tmp_path, keep=3)
    meta = {"model_hash": "m", "definition_hash": "0fe1b3", "model_definition": {"task": "t"}, "world_size": 1}
    s.save(2, write_payload(b"two"), meta)
    s.save(3, write_payload(b"three"), meta)
    manifest = json.loads((s.path(3) / st.MANIFEST).read_text())
    manifest[field] = value
    (s.path(3) / st.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(st.CorruptCheckpoint, match="does not match its own digest"):
        st.verify(s.path(3))
    assert s.newest_valid().step == 2
    assert st.recorded_manifest(tmp_path)["step"] == 2
    assert rerun_refusal("r", run, tmp_path) is None
