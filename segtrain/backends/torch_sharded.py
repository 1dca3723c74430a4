"""FSDP2 in the pipeline's PyTorch loop (``data_parallel: fsdp2``) and in a script (a model the
script sharded with ``fully_shard``): the model's parameters and the optimizer's state are
sharded over the processes, and a checkpoint holds each process's shards.

Every process writes ``shard-<rank>.pt``: the state of each sharded object (the model, its
optimizer) with its rows of every sharded tensor (FSDP2 shards dim 0, rank by rank), and its
random streams. The main process also writes ``state.pt``: what is replicated (schedulers, the
grad scaler, an EMA) and the job's extra.
Each file is hashed as it is written; the checkpoint counts once every rank's files are durable
(``CheckpointStore.save_together``). Everything loads with ``torch.load(weights_only=True)``: a
sharded tensor is stored as its local rows, marked, and made a DTensor again on load. A resume
at the same number of processes loads each process's own shards; one at another number
(``allow_reshard``) joins every rank's rows and shards them again. The export joins the rows into
one unsharded model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..store import CorruptCheckpoint, IncompatibleCheckpoint, read_manifest
from .torch_state import (
    STATE_FILE,
    Several,
    TorchState,
    read_state_file,
    reshard_seed,
    rng_state,
    seed_everything,
    set_rng_state,
    write_state_file,
)

SHARDED_FORMAT = "torch-sharded"
ROWS = "__rows_of_dim0__"  # marks a sharded tensor's local rows in a shard file


def shard_file(rank: int) -> str:
    """The file of a sharded checkpoint that holds rank ``rank``'s shards and random streams."""
    return f"shard-{rank:05d}.pt"


def shard_model(model: torch.nn.Module, world, device: torch.device) -> torch.nn.Module:
    """Shard ``model`` over every process of ``world`` with FSDP2 (in place; build the optimizer
    on its parameters afterwards)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    fully_shard(model, mesh=init_device_mesh(device.type, (world.world_size,)))
    return model


def _is_sharded(value) -> bool:
    return type(value).__name__ == "DTensor"


def _local(value):
    """``value`` with every sharded tensor replaced by a copy of this process's rows, marked."""
    if isinstance(value, dict):
        return type(value)((k, _local(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_local(v) for v in value)
    if _is_sharded(value):
        return {ROWS: value.to_local().detach().clone()}
    return value.detach().clone() if torch.is_tensor(value) else value


def _joined(parts: list):
    """One rank-ordered list of the same tree from every rank -> the tree with each sharded
    tensor's rows joined into the whole tensor; the rest as rank 0 has it."""
    first = parts[0]
    if isinstance(first, dict) and set(first) == {ROWS}:
        return torch.cat([p[ROWS] for p in parts], dim=0)
    if isinstance(first, dict):
        return type(first)((k, _joined([p[k] for p in parts])) for k in first)
    if isinstance(first, (list, tuple)):
        return type(first)(_joined([p[i] for p in parts]) for i in range(len(first)))
    return first


def _rebuild(saved, like):
    """A value saved by ``_local`` (or joined by ``_joined``) as a tensor like the live ``like``:
    a DTensor with its mesh and placements when ``like`` is one."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(saved, dict) and set(saved) == {ROWS}:  # this rank's own rows
        return DTensor.from_local(saved[ROWS], like.device_mesh, like.placements, shape=like.shape,
                                  stride=like.stride())
    if torch.is_tensor(saved) and _is_sharded(like) and saved.shape == like.shape:
        # the whole tensor, joined (another number of processes); not a parameter's scalar (Adam's step)
        return distribute_tensor(saved, like.device_mesh, like.placements, src_data_rank=None)
    return saved


def _optimizer_state(saved: dict, optimizer) -> dict:
    """An optimizer's saved state dict with its sharded tensors rebuilt like the parameter they
    belong to (state is keyed by the parameter's position in the param groups)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, entries in saved["state"].items():
        param = params[int(index)]
        state[index] = {k: _rebuild(v, param) for k, v in entries.items()}
    return {**saved, "state": state}


class _HashedAsRead:
    """The files of a sharded checkpoint that a rank hashes while it reads them (``state.pt`` and
    every ``shard-*.pt``), so the verification before a load leaves them out: a rank reads its
    own shard (or, resharding, all of them), and a shard that fails on any rank is skipped by all."""

    def __contains__(self, name) -> bool:
        return name == STATE_FILE or (str(name).startswith("shard-") and str(name).endswith(".pt"))

    def __iter__(self):
        return iter((STATE_FILE,))


def is_sharded(obj) -> bool:
    """Whether ``obj`` is a module whose parameters FSDP2 sharded, or an optimizer of such."""
    if isinstance(obj, torch.nn.Module):
        # not by its parameters: between a forward without backward (an evaluation) and the next
        # step, FSDP2 holds the root's parameters unsharded, as plain tensors
        from torch.distributed.fsdp import FSDPModule

        return any(isinstance(m, FSDPModule) for m in obj.modules()) or any(_is_sharded(p) for p in obj.parameters())
    groups = getattr(obj, "param_groups", None)
    return isinstance(groups, list) and any(_is_sharded(p) for g in groups for p in g.get("params", ()))


class ShardedTorchState(TorchState):
    """Named objects of which some are sharded by FSDP2 (a module and its optimizer), the rest
    replicated (schedulers, a grad scaler, an EMA), for the pipeline's loop or a script on several
    processes; see the module's docstring."""

    state_format = SHARDED_FORMAT
    verified_reads = _HashedAsRead()

    def __init__(self, objects: dict, owner: str = "the script", world=None):
        objects = {name: obj for name, obj in objects.items() if obj is not None}
        several = [name for name, obj in objects.items() if isinstance(obj, Several)]
        if several:
            raise TypeError(f"sharded training (FSDP2) takes one optimizer so far, and {owner} builds several "
                            f"('{several[0]}'): use one optimizer, or DDP")
        self.sharded = sorted(name for name, obj in objects.items() if is_sharded(obj))
        super().__init__({n: obj for n, obj in objects.items() if n not in self.sharded}, owner=owner, world=world)
        # the sharded objects as they are (TorchState would unwrap a module, and refuses a sharded one)
        self.objects = {**{n: objects[n] for n in self.sharded}, **self.objects}

    def _replicated(self) -> dict:
        return {n: obj.state_dict() for n, obj in self.objects.items() if n not in self.sharded}

    def _files(self, extra: dict) -> dict:
        """This process's files of a checkpoint, by name: its shards (copies: ``_local``) and, on
        the main process, the replicated state."""
        rank = self.world.rank
        shard = {"tracked": {n: _local(self.objects[n].state_dict()) for n in self.sharded},
                 "rng": rng_state(), "rank": rank}
        files = {shard_file(rank): shard}
        if self.world.is_main:
            files[STATE_FILE] = {"model": None, "tracked": _local(self._replicated()), "rng": shard["rng"],
                                 "extra": extra, "sharded": self.sharded}
        return files

    def write_state(self, folder: Path, extra: dict) -> None:
        for name, content in self._files(extra).items():
            write_state_file(folder, content, name)

    def snapshot(self, extra: dict) -> "ShardedSnapshot":
        """This process's files copied now (every tensor cloned); ``.write(folder)`` writes them."""
        return ShardedSnapshot(self._files(extra))

    def _shards(self, folder: Path, ranks) -> list[dict]:
        shards = []
        for rank in ranks:
            try:
                shards.append(read_state_file(folder, name=shard_file(rank)))
            except FileNotFoundError:
                raise CorruptCheckpoint(f"{folder} has no {shard_file(rank)}") from None
        return shards

    def read_state(self, folder: Path) -> dict:
        state = read_state_file(folder)
        saved_sharded = state.get("sharded")
        if saved_sharded is None:
            raise IncompatibleCheckpoint(f"the checkpoint in {folder} holds an unsharded state ({STATE_FILE} alone), "
                                         f"and {self.owner} now shards its model (FSDP2): give the run a new name to "
                                         "start over")
        replicated, mine = state["tracked"], self._replicated()
        if sorted(saved_sharded) != self.sharded or set(replicated) != set(mine):
            raise IncompatibleCheckpoint(
                f"the checkpoint in {folder} holds {sorted(saved_sharded)} sharded and {sorted(replicated)} "
                f"replicated, and {self.owner} now builds {self.sharded} sharded and {sorted(mine)} replicated; "
                "build the same objects, or give the run a new name to start over")
        rank, size = self.world.rank, self.world.world_size
        written_by = int(read_manifest(folder).get("world_size", 1))
        if written_by == size:
            (shard,) = self._shards(folder, [rank])
            saved = shard["tracked"]
        else:  # another number of processes (allow_reshard): join every rank's rows, shard them again
            shards = self._shards(folder, range(written_by))
            saved = {n: _joined([s["tracked"][n] for s in shards]) for n in self.sharded}
            shard = shards[rank] if rank < written_by else None
        try:
            for name, obj in self.objects.items():
                if name not in self.sharded:
                    obj.load_state_dict(replicated[name])
                elif isinstance(obj, torch.nn.Module):
                    live = obj.state_dict()
                    obj.load_state_dict({k: _rebuild(v, live[k]) for k, v in saved[name].items()})
                else:
                    obj.load_state_dict(_optimizer_state(saved[name], obj))
        except (RuntimeError, KeyError, ValueError, IndexError) as exc:
            raise IncompatibleCheckpoint(f"the checkpoint in {folder} does not fit what {self.owner} builds now "
                                         f"({exc}); its definition changed: give the run a new name to start over"
                                         ) from None
        if shard is None:  # a process the checkpoint's world did not have
            seed_everything(reshard_seed(int(state["extra"]["step"]), rank))
        else:
            set_rng_state(shard["rng"])
        return state["extra"]


class ShardedSnapshot:
    """A process's files of a sharded checkpoint, copied; written by the background writer."""

    def __init__(self, files: dict):
        self.files = files

    def write(self, folder: Path) -> None:
        for name, content in self.files.items():
            write_state_file(folder, content, name)


def sharded_weights(folder: Path) -> dict:
    """The whole model of a sharded checkpoint: every rank's rows joined (for the export)."""
    folder = Path(folder)
    size = int(read_manifest(folder).get("world_size", 1))
    return _joined([torch.load(folder / shard_file(r), map_location="cpu", weights_only=True)["tracked"]["model"]
                    for r in range(size)])
