"""Run by tests/test_world.py under torchrun (gloo on CPU), first as 2 ranks (``write``), then as 3
and as 2 (``read``): a model sharded with FSDP2 and its Adam state are saved as each rank's shards,
loaded at the same number of processes (each its own rows) and at another (every rank's rows
joined and sharded again), and resumed past a damaged shard (``resume``). Each rank writes the
whole tensors it then holds to <out>/<mode>-<size>-<rank>.pt."""

import os
import sys
from pathlib import Path

import torch

from segtrain import store as st
from segtrain.backends.torch_sharded import ShardedTorchState, shard_model
from segtrain.world import current

mode, out = sys.argv[1], Path(sys.argv[2])
world = current()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))  # 5 rows: uneven shares
shard_model(model, world, torch.device("cpu"))
optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
state = ShardedTorchState({"model": model, "optimizer": optimizer, "scheduler": scheduler}, world=world)
store = st.CheckpointStore(out / "ckpt", keep=3)


def train(steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(4, 6)).square().sum().backward()
        optimizer.step()
        scheduler.step()


def whole() -> dict:
    held = {f"model.{k}": v.full_tensor() for k, v in model.state_dict().items()}
    for index, slot in optimizer.state_dict()["state"].items():
        held.update({f"optimizer.{index}.{k}": v.full_tensor() if hasattr(v, "full_tensor") else v.clone()
                     for k, v in slot.items()})
    held["lr"] = torch.tensor(optimizer.param_groups[0]["lr"], dtype=torch.float64)
    return held


found = {}
if mode == "write":  # steps 3 and 4
    torch.manual_seed(10 + world.rank)
    train(3)
    store.save(3, lambda folder: state.write_state(folder, {"step": 3}), {"model_hash": "x"}, world=world)
    found = whole()
    train(1)
    store.save(4, lambda folder: state.write_state(folder, {"step": 4}), {"model_hash": "x"}, world=world)
elif mode == "read":  # step 3, as it was written
    extra = state.read_state(store.path(3))
    assert extra == {"step": 3}, extra
    found = whole()
else:  # "resume": the newest checkpoint that loads on every rank (a shard of step 4 is damaged)
    from segtrain import resume
    from segtrain.planning import Segment
    from segtrain.settings import RunSettings

    segment = Segment(index=0, start=0, end=10, interval=1, time_limit=60, save_seconds=0.1, eval_every=10,
                      monitor="loss", mode="min", keep=3, log_every=1)
    skipped = []
    restored = resume.restore(RunSettings(model_hash="x"), segment, store, None, state, skipped, world=world)
    found = {**whole(), "step": torch.tensor(restored.step), "skipped": torch.tensor([s["step"] for s in skipped])}
torch.save(found, out / f"{mode}-{world.world_size}-{world.rank}.pt")
world.close()
os._exit(0)  # as a job's processes end: gloo's threads may abort in the interpreter's teardown
