"""Run by tests/test_world.py under torchrun (gloo on CPU), first as 2 ranks (``write``), then as 3
and as 2 (``read``): a model sharded with FSDP2 and its Adam state are saved as each rank's shards,
and loaded at the same number of processes (each its own rows) and at another (every rank's rows
joined and sharded again). Each rank writes the whole tensors it then holds to <out>/<mode>-<size>-<rank>.pt."""

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
state = ShardedTorchState(model, optimizer, {"scheduler": scheduler}, world)
store = st.CheckpointStore(out / "ckpt", keep=3)
if mode == "write":
    torch.manual_seed(10 + world.rank)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 6)).square().sum().backward()
        optimizer.step()
        scheduler.step()
    store.save(3, lambda folder: state.write_state(folder, {"step": 3}), {}, world=world)
else:
    extra = state.read_state(store.path(3))
    assert extra == {"step": 3}, extra
whole = {f"model.{k}": v.full_tensor() for k, v in model.state_dict().items()}
for index, slot in optimizer.state_dict()["state"].items():
    whole.update({f"optimizer.{index}.{k}": v.full_tensor() if hasattr(v, "full_tensor") else v
                  for k, v in slot.items()})
whole["lr"] = torch.tensor(optimizer.param_groups[0]["lr"], dtype=torch.float64)
torch.save(whole, out / f"{mode}-{world.world_size}-{world.rank}.pt")
world.close()
