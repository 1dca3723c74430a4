"""Run by tests/test_world.py as 2 ranks under torchrun (gloo on CPU): the world's agreements,
a checkpoint saved together, one that fails on one rank, and a resume that skips a checkpoint
whose file of one rank is damaged. Each rank writes what it saw to <out>/rank-<r>.json."""

import json
import os
import sys
from pathlib import Path

import torch

from segtrain import store as st
from segtrain.backends.torch_state import TorchState, rank_file
from segtrain.world import current

out = Path(sys.argv[1])
world = current()
seen = {"rank": world.rank, "size": world.world_size, "main": world.is_main}
seen["agree_one"] = world.agree(world.rank == 1)
seen["agree_none"] = world.agree(False)
seen["reason"] = world.agree_reason("SIGTERM" if world.rank == 1 else None)
seen["reason_lowest"] = world.agree_reason(f"rank {world.rank}")
seen["broadcast"] = world.broadcast({"attempt": 7} if world.is_main else None)
seen["gathered"] = world.all_gather(world.rank * 10)

store = st.CheckpointStore(out / "ckpt", keep=3)
model = torch.nn.Linear(3, 2)
torch.manual_seed(100 + world.rank)  # each rank's own stream: saved by each rank
state = TorchState({"model": model}, world=world)
at_step_1 = None
for step in (1, 2):
    if step == 1:
        at_step_1 = torch.get_rng_state().clone()
    ck = store.save(step, lambda folder, s=step: state.write_state(folder, {"step": s}), {"model_hash": "x"},
                    world=world)
    seen[f"files_{step}"] = sorted(ck.manifest["files"])
    seen["world_size_recorded"] = ck.manifest["world_size"]
    torch.rand(5)  # the streams move on between the saves
world.barrier()


def failing(folder):
    if world.rank == 1:
        raise OSError("rank 1's disk went away")
    state.write_state(folder, {"step": 3})


try:
    store.save(3, failing, world=world)
    seen["failed_save"] = "saved"
except (OSError, st.StoreError) as exc:
    seen["failed_save"] = str(exc)
world.barrier()
seen["step_3_exists"] = store.path(3).exists()
seen["temporaries"] = sorted(p.name for p in store.root.iterdir() if p.name.startswith(".tmp"))

# rank 1's file of step 2 is damaged: every rank resumes from step 1
if world.is_main:
    damaged = store.path(2) / rank_file(1)
    damaged.write_bytes(damaged.read_bytes()[:-3] + b"xyz")
world.barrier()
from segtrain import resume  # noqa: E402
from segtrain.planning import Segment  # noqa: E402
from segtrain.settings import RunSettings  # noqa: E402

segment = Segment(index=0, start=0, end=10, interval=1, time_limit=60, save_seconds=0.1, eval_every=10,
                  monitor="loss", mode="min", keep=3, log_every=1)
torch.manual_seed(999)  # whatever the streams are now, the restore sets this rank's saved ones
skipped = []
restored = resume.restore(RunSettings(model_hash="x"), segment, store, None, state, skipped, world=world)
step = restored.step
seen["resumed_step"] = step
seen["skipped"] = [s["step"] for s in skipped]
seen["own_streams_back"] = bool(torch.equal(torch.get_rng_state(), at_step_1))
seen["first_draw"] = torch.rand(1).item()
(out / f"rank-{world.rank}.json").write_text(json.dumps(seen))
world.close()
os._exit(0)  # as a job's processes end (pipeline.exit_now): gloo's threads may abort in the interpreter's teardown
