"""The one PyTorch state format: what the loop and scripts save and restore (modules,
optimizers, schedulers, scalers, the random generators of Python, NumPy and torch), written as
tensors and plain values so it loads with ``torch.load(weights_only=True)``. (Where each PyTorch
format keeps a model's weights, for the export: ``torch_weights``.)"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Collection

import numpy as np
import torch

from ..checkpointing import HostCopy, as_numbers
from ..store import CorruptCheckpoint, IncompatibleCheckpoint, hashed_file, load_verified, read_manifest
from ..world import SINGLE

STATE_FILE = "state.pt"


def _python_rng_state():
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _set_python_rng_state(state):
    random.setstate((state["version"], tuple(int(x) for x in state["internal"].tolist()), state["gauss"]))


def _numpy_rng_state():
    key, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "key": key,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _set_numpy_rng_state(state):
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["key"], keys, state["pos"], state["has_gauss"], state["cached"]))


def rng_state() -> dict:
    """Every random stream a training step may draw from: Python's, numpy's, torch's (and CUDA's)."""
    rng = {"python": _python_rng_state(), "numpy": _numpy_rng_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict) -> None:
    _set_python_rng_state(rng["python"])
    _set_numpy_rng_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA too


def reshard_seed(step: int, rank: int) -> int:
    """The seed of the random streams of a rank that a resume at more processes adds: a function
    of the step and the rank, so the resharded run is reproducible."""
    return (step * 1_000_003 + rank * 7_919) % 2**62


@contextlib.contextmanager
def isolated_rng(seed: int):
    """Run the body (an evaluation) on RNG streams of its own, seeded by ``seed``, and put the
    training streams back afterwards: what evaluation draws never shifts training."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    seed_everything(seed)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state_all(state[3])


class Several:
    """Several optimizers (or schedulers) that a task returns as a list, tuple or dict, driven as
    one: each steps, and each one's state is saved under its name (its position in a list)."""

    def __init__(self, items):
        self.items = dict(items) if isinstance(items, dict) else {str(i): x for i, x in enumerate(items)}
        if not self.items:
            raise ValueError("an empty list of optimizers or schedulers")

    @property
    def param_groups(self) -> list:
        return [group for item in self.items.values() for group in item.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for item in self.items.values():
            item.zero_grad(set_to_none=set_to_none)

    def step(self, *args) -> None:
        for item in self.items.values():
            item.step(*args)

    def state_dict(self) -> dict:
        return {name: item.state_dict() for name, item in self.items.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.items):
            raise RuntimeError(f"the checkpoint holds {sorted(state)}, the task builds {sorted(self.items)}")
        for name, item in self.items.items():
            item.load_state_dict(state[name])


def several(built):
    """``built`` as it is, or a ``Several`` when the task returned a list, tuple or dict."""
    return Several(built) if isinstance(built, (list, tuple, dict)) else built


def all_finite(params) -> bool:
    """Whether every value of the tensors ``params`` is finite, in one read of each and one host
    sync: a NaN or an infinity makes its tensor's sum non-finite. A sum can also overflow when
    every value is finite but huge; such tensors are then checked value by value."""
    # a parameter sharded over the processes (FSDP2's DTensor): this process's rows (every
    # process checks its own, and they agree on the answer)
    params = [(p.to_local() if type(p).__name__ == "DTensor" else p).detach() for p in params]
    if not params:
        return True
    sums = torch.stack([torch.sum(p, dtype=torch.float32) for p in params])
    finite = torch.isfinite(sums)
    if bool(finite.all()):
        return True
    return all(bool(torch.isfinite(p).all()) for p, ok in zip(params, finite.tolist()) if not ok)


def unwrapped(obj):
    """The module inside a ``DistributedDataParallel`` wrapper; anything else as it is. A model
    sharded with FSDP2 (``fully_shard``) belongs in a sharded state (``torch_sharded``), which a
    job of several processes makes; in a job of one it is refused with the reason."""
    if isinstance(obj, torch.nn.parallel.DistributedDataParallel):
        return obj.module
    if isinstance(obj, torch.nn.Module) and any(type(p).__name__ == "DTensor" for p in obj.parameters()):
        raise TypeError("seg.track(): this model's parameters are sharded (FSDP2's fully_shard) and the job runs one "
                        "process: shard it only when seg.world.world_size is above 1 (processes: N in the config)")
    return obj


def _same_on_every_rank(obj) -> bool:
    """Whether data parallel training keeps ``obj`` the same on every process: a module (DDP
    broadcasts it at the start and averages its gradients) and an optimizer stepping it."""
    return isinstance(obj, torch.nn.Module) or hasattr(obj, "param_groups")


def rank_file(rank: int) -> str:
    """The file of a checkpoint that holds what rank ``rank`` (above 0) alone has: its random streams."""
    return f"rank-{rank:05d}.pt"


def read_state_file(folder: Path, mapped: Collection[tuple] = (), name: str = STATE_FILE) -> dict:
    """``folder/state.pt`` with ``torch.load(weights_only=True)``, hashed against the manifest
    while it loads (CorruptCheckpoint before anything is used when it does not match).

    The file is memory-mapped. The entries at the key paths in ``mapped`` (a module's state
    dict, which ``load_state_dict`` copies into the live parameters) stay views of the mapping
    and are read once, when the caller applies them; they must not be kept past that. Every
    other tensor is copied out while the second thread hashes the file. That is cheaper than
    ``torch.load`` reading the whole file into fresh memory, and it leaves the model's bytes to
    a single copy."""

    def load(path: Path) -> dict:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError, ValueError):  # a file system without mmap, or a damaged file
            return torch.load(path, map_location="cpu", weights_only=True)
        return _owned(state, (), frozenset(mapped), {})

    return load_verified(folder, name, load)


def _owned(value, path: tuple, mapped: frozenset, copies: dict):
    """``value`` with every tensor outside ``mapped`` copied out of the file's mapping; views of
    one storage stay views of one copy (``copies``: storage address -> its copy)."""
    if path in mapped:
        return value
    if isinstance(value, dict):
        out = value.copy()  # keeps the dict's type (a state dict is an OrderedDict)
        for key, item in value.items():
            out[key] = _owned(item, path + (key,), mapped, copies)
        return out
    if isinstance(value, (list, tuple)):
        items = [_owned(item, path + (i,), mapped, copies) for i, item in enumerate(value)]
        return items if isinstance(value, list) else type(value)(items)
    if not torch.is_tensor(value):
        return value
    if value.layout != torch.strided or value.is_quantized or type(value) is not torch.Tensor:
        return value.clone()
    storage = value.untyped_storage()
    own = copies.get(storage.data_ptr())
    if own is None:
        # a tensor's clone lets go of the GIL (a storage's does not), so the hash thread runs alongside
        own = torch.empty(0, dtype=torch.uint8).set_(storage).clone().untyped_storage()
        copies[storage.data_ptr()] = own
    return torch.empty(0, dtype=value.dtype).set_(own, value.storage_offset(), value.size(), value.stride())


def write_state_file(folder: Path, state: dict, name: str = STATE_FILE) -> None:
    """``state`` as ``folder/state.pt`` (or ``name``), hashed as it is written (loads with weights_only=True)."""
    with hashed_file(folder, name) as fh:
        torch.save(state, fh)


class TorchSnapshot:
    """A state copied into host buffers (``HostCopy``), written by the background writer."""

    def __init__(self, host: HostCopy | None, state: dict, name: str = STATE_FILE):
        self.host, self.state, self.name = host, state, name

    def write(self, folder: Path) -> None:
        if self.host is not None:
            self.host.ready()  # the device-to-host copies have landed
        write_state_file(folder, self.state, self.name)


def modules_finite(modules) -> bool:
    """Whether every parameter of ``modules`` is finite (one device synchronisation)."""
    return all_finite(p for m in modules for p in m.parameters())


LEGACY_LOOP_KEYS = ("model", "optimizer", "scheduler", "scaler")  # the loop's format before "tracked"


class TorchState:
    """Named objects with ``state_dict``/``load_state_dict`` (modules, optimizers, schedulers, a
    grad scaler) and the random streams, as a job saves and restores them: the one PyTorch state
    format, for the pipeline's loop and for a user's script.

    One ``state.pt`` per checkpoint: each object's ``state_dict()`` under ``tracked``, the model's
    weights also under ``model`` (where the export reads them; one copy in the file), the RNG
    streams and the job's extra (step, data position, best). It loads with
    ``torch.load(weights_only=True)``. ``owner`` names who builds the objects in messages ("the
    task", "the script")."""

    verified_reads = (STATE_FILE,)  # read_state hashes it while it loads (store.load_verified)
    state_format = "torch"

    def __init__(self, objects: dict, owner: str = "the script", world=None):
        # a module wrapped for data parallel training is saved and restored as the module inside
        # (the same parameters): the checkpoint and the export hold its plain weights
        self.objects = {name: unwrapped(obj) for name, obj in objects.items() if obj is not None}
        self.owner = owner
        self.world = world if world is not None else SINGLE
        # with several processes, data parallel training keeps modules and optimizers the same on
        # every rank (rank 0's are saved); anything else may differ by rank (a prefetched batch, a
        # buffer, a generator of the script's own): every rank saves and restores its own
        self.per_rank = sorted(name for name, obj in self.objects.items() if not _same_on_every_rank(obj)) \
            if self.world.world_size > 1 else []

    def _state(self, extra: dict) -> dict:
        tracked = {name: obj.state_dict() for name, obj in self.objects.items()}
        return {"model": tracked.get("model"), "tracked": tracked, "rng": rng_state(), "extra": extra}

    def _rank_state(self) -> dict:
        """What another process than the main one writes: its random streams, its per-rank objects."""
        return {"rng": rng_state(), "rank": self.world.rank,
                "tracked": {name: self.objects[name].state_dict() for name in self.per_rank}}

    def write_state(self, folder: Path, extra: dict) -> None:
        """The main process writes ``state.pt``; with several processes each other rank writes its
        random streams and its own state of the objects that may differ by rank, ``rank-<r>.pt``."""
        if self.world.is_main:
            write_state_file(folder, self._state(extra))
        else:
            write_state_file(folder, self._rank_state(), rank_file(self.world.rank))

    def snapshot(self, extra: dict) -> "TorchSnapshot":
        """Copy the whole state into this job's host buffers; ``.write(folder)`` writes ``state.pt``
        (another process of several: ``rank-<r>.pt``)."""
        if not hasattr(self, "_host"):
            self._host = HostCopy()
        if not self.world.is_main:
            return TorchSnapshot(self._host, self._host.copy(self._rank_state()), rank_file(self.world.rank))
        return TorchSnapshot(self._host, self._host.copy(self._state(extra)))

    def read_state(self, folder: Path) -> dict:
        """Restore what ``write_state`` or a snapshot wrote (or the loop's earlier format, its
        objects at the top level); returns its ``extra``."""
        modules = {("tracked", n) for n, obj in self.objects.items() if isinstance(obj, torch.nn.Module)}
        state = read_state_file(folder, mapped={("model",), *modules})  # modules copy what they load
        tracked = state.get("tracked")
        if tracked is None:
            tracked = {k: state[k] for k in LEGACY_LOOP_KEYS if state.get(k) is not None}
        if set(tracked) != set(self.objects):
            raise IncompatibleCheckpoint(
                f"the checkpoint in {folder} holds {sorted(tracked)} and {self.owner} now builds "
                f"{sorted(self.objects)}; build the same objects, or give the run a new name to start over")
        for name, obj in self.objects.items():
            try:
                obj.load_state_dict(tracked[name])
            except (RuntimeError, KeyError, ValueError) as exc:
                raise IncompatibleCheckpoint(
                    f"the checkpoint in {folder} does not fit the '{name}' {self.owner} builds now ({exc}); "
                    "its definition changed: give the run a new name to start over") from None
        rng, rank = state["rng"], self.world.rank
        written_by = int(read_manifest(folder).get("world_size", 1))
        if rank >= written_by:  # a resume with more processes (allow_reshard): this rank had no streams
            seed_everything(reshard_seed(int(state["extra"]["step"]), rank))
            return state["extra"]
        if rank > 0:  # this rank's own streams and objects (the main one's are in state.pt)
            try:
                own = read_state_file(folder, name=rank_file(rank))
            except FileNotFoundError:
                raise CorruptCheckpoint(f"{folder} has no {rank_file(rank)}: it was not written by "
                                        f"{written_by} processes") from None
            rng = own["rng"]
            for name, saved in own.get("tracked", {}).items():  # a checkpoint from before: rank 0's
                if name in self.objects:
                    self.objects[name].load_state_dict(saved)
        set_rng_state(rng)
        return state["extra"]

    def all_finite(self) -> bool:
        return modules_finite(obj for obj in self.objects.values() if isinstance(obj, torch.nn.Module))

    @contextlib.contextmanager
    def isolated_rng(self, seed: int):
        """An evaluation draws from streams of its own, and the modules' train/eval modes are put back."""
        modes = [(m, m.training) for obj in self.objects.values() if isinstance(obj, torch.nn.Module)
                 for m in obj.modules()]
        try:
            with isolated_rng(seed), torch.no_grad():
                yield
        finally:
            for module, training in modes:
                module.training = training

    as_numbers = staticmethod(as_numbers)


LIGHTNING_CHECKPOINT = "lightning.ckpt"  # what segtrain.lightning writes: Lightning's own checkpoint
