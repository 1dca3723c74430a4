"""The cost of the stop agreement per step, as a ratio of a training step, measured in one run:

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/bench_agree.py

Each rank times the agreement every step makes (``agree_reason(None)``: one small all-reduce on the
gloo group) and a DDP step of the digits CNN on its share of a 32-sample batch, alternating them in
rounds; rank 0 prints the medians and their ratio (the target: under 1 %)."""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segtrain.backends.torch_backend import Backend  # noqa: E402
from segtrain.data import DataOrder  # noqa: E402
from segtrain.world import current  # noqa: E402

world = current()
task = Path(__file__).resolve().parent.parent / "examples" / "digits_cnn_torch.py"
backend = Backend(str(task), {"channels": 8, "dropout": 0.3, "lr": 0.003, "lr_step": 300}, seed=0)
backend.build()
order = DataOrder(backend.num_samples, 32, seed=0)
batches = backend.batches(order, 0, 10_000)
for _ in range(20):  # warm-up
    backend.train_step(next(batches))
    world.agree_reason(None)
agree, step = [], []
for _ in range(15):
    t = time.perf_counter()
    for _ in range(50):
        world.agree_reason(None)
    agree.append((time.perf_counter() - t) / 50)
    t = time.perf_counter()
    for _ in range(50):
        out = backend.train_step(next(batches))
    float(out["loss"])
    step.append((time.perf_counter() - t) / 50)
ratios = [a / s for a, s in zip(agree, step)]
if world.is_main:
    print(f"{world.world_size} ranks, gloo on {torch.get_num_threads()} thread(s) each: agreement "
          f"{statistics.median(agree) * 1e6:.0f} us, DDP step of the digits CNN {statistics.median(step) * 1e3:.2f} ms; "
          f"agreement / step = {statistics.median(ratios) * 100:.2f} % (rounds {min(ratios) * 100:.2f}-"
          f"{max(ratios) * 100:.2f} %)")
world.close()
