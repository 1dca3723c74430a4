"""Training throughput benchmark: ``python tests/bench_train.py [--repeats N] [--steps N] [--quick]``
(``make bench-train``); prints ratios measured in one run.

The pipeline's loop (``runner.run_segment``, the code a train_segment job runs, with its
bookkeeping) against a minimal hand-written loop on the same model, data, batch size and device:
a small CNN and a mid-size MLP in PyTorch, the CNN in Keras against
``model.fit(steps_per_execution=32)``, and a data-bound case (a Dataset that reads PNG files and
decodes them) with 0 and 4 loader workers. Variants are interleaved and repeated, every other
round in reverse order; a ratio is the median of the rounds' ratios, so a machine that slows down
part-way hurts both sides of a ratio alike. The tasks are files in tests/tasks/bench_*.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASKS = Path(__file__).resolve().parent / "tasks"
sys.path.insert(0, str(REPO))


def _run_settings(task: str, framework: str = "torch", **extra):
    from segtrain.config import resolve

    cfg = {"runs": {"bench": {"task": task, "framework": framework, "total_steps": 10**6, "params": {},
                              "validation_split": 0, "log_every": 10, **extra}}}
    return resolve(cfg, base=REPO)["bench"]


def pipeline_rate(task: str, steps: int, framework: str = "torch", **extra) -> float:
    """Steps per second of runner.run_segment over ``steps`` steps (no evaluation, one save at the
    end, which is left out: the rate is read from the metrics rows' times)."""
    import csv

    from segtrain import runner
    from segtrain.planning import Segment

    run = _run_settings(task, framework, **extra)
    with tempfile.TemporaryDirectory() as tmp:
        paths = runner.RunPaths(Path(tmp))
        seg = Segment(index=0, start=0, end=steps, interval=steps, time_limit=10**6, save_seconds=0.0,
                      log_every=10, eval_every=10**9)
        runner.run_segment(run, seg, paths, None, paths.segment_dir(0))
        with open(paths.working_metrics(0), newline="") as fh:
            rows = list(csv.DictReader(fh))
    rows = [r for r in rows if r.get("step") and not r.get("save_seconds")]
    first, last = rows[len(rows) // 5], rows[-1]  # past the warm-up
    return (int(last["step"]) - int(first["step"])) / (float(last["time"]) - float(first["time"]))


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _hand_task(task: str):
    """The task module, its model (on the device) and optimizer for a hand-written loop: seeded,
    and on the pipeline run's thread count (as ``configure`` sets it)."""
    import torch

    from segtrain.taskfile import load_task

    torch.manual_seed(0)
    torch.set_num_threads(_run_settings(task).threads)
    t = load_task(task)
    model = t.build_model({}).to(_device())
    return t, model, t.build_optimizer(model, {})


class _HandPrecision:
    """What a hand-written loop does for ``precision`` (fp32, bf16, fp16): autocast and, for fp16,
    a GradScaler."""

    def __init__(self, precision: str):
        import torch

        from segtrain.backends.torch_backend import AUTOCAST_DTYPES

        device = _device().type
        dtype = AUTOCAST_DTYPES[precision]
        self.autocast = (lambda: torch.autocast(device, dtype=dtype)) if dtype else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler(device) if precision == "fp16" else None

    def step(self, model, opt, compute_loss, batch) -> None:
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            out = compute_loss(model, batch)
        loss = out[0] if isinstance(out, tuple) else out
        if self.scaler is None:
            loss.backward()
            opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def hand_rate_torch(task: str, steps: int, batch_size: int = 32, precision: str = "fp32") -> float:
    """A minimal hand-written PyTorch loop on the same task, data, batch size and device."""
    import torch

    t, model, opt = _hand_task(task)
    device = _device()
    x, y = (a.to(device) for a in t.build_dataset({})[:2])
    sched = t.build_scheduler(opt, {}) if hasattr(t, "build_scheduler") else None
    how = _HandPrecision(precision)
    model.train()
    perm = torch.randperm(len(x)).to(device)
    warm = steps // 5
    for step in range(steps):
        if step == warm:
            _sync()
            start = time.perf_counter()
        lo = (step * batch_size) % (len(x) - batch_size)
        idx = perm[lo:lo + batch_size]
        how.step(model, opt, t.compute_loss, (x[idx], y[idx]))
        if sched is not None:
            sched.step()
    _sync()
    return (steps - warm) / (time.perf_counter() - start)


def hand_rate_loader(task: str, steps: int, workers: int, batch_size: int = 32) -> float:
    """A minimal hand-written loop over a plain shuffled ``DataLoader`` with ``workers`` workers
    (pinned memory and non-blocking copies on a GPU): what PyTorch's own loader reaches on this
    machine, the ceiling for the pipeline's."""
    import torch

    t, model, opt = _hand_task(task)
    device = _device()
    pin = device.type == "cuda"
    loader = torch.utils.data.DataLoader(t.build_dataset({}), batch_size=batch_size, shuffle=True,
                                         num_workers=workers, prefetch_factor=4 if workers else None,
                                         persistent_workers=workers > 0, pin_memory=pin)
    how = _HandPrecision("fp32")
    warm, step = steps // 5, 0
    while step < steps:
        for batch in loader:
            if step == warm:
                _sync()
                start = time.perf_counter()
            how.step(model, opt, t.compute_loss, [b.to(device, non_blocking=pin) for b in batch])
            step += 1
            if step == steps:
                break
    _sync()
    return (steps - warm) / (time.perf_counter() - start)


def _fetch_items(task: str, count: int, ready, results) -> None:
    import torch

    from segtrain.taskfile import load_task

    torch.set_num_threads(1)  # as in a DataLoader worker
    dataset = load_task(task).build_dataset({})
    dataset[0]
    ready.wait()
    start = time.perf_counter()
    for i in range(count):
        dataset[i % len(dataset)]
    results.put(time.perf_counter() - start)


def parallel_fetch_ceiling(task: str, count: int, processes: int) -> float:
    """How much faster ``processes`` processes fetch the task's items together than one alone
    (each fetches ``count``): what the machine's cores give to decoding, whatever the loader."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")

    def rate(n: int) -> float:
        ready, results = ctx.Barrier(n + 1), ctx.Queue()
        procs = [ctx.Process(target=_fetch_items, args=(task, count, ready, results)) for _ in range(n)]
        for p in procs:
            p.start()
        ready.wait()
        slowest = max(results.get() for _ in procs)
        for p in procs:
            p.join()
        return n * count / slowest

    return rate(processes) / rate(1)


def fit_rate_keras(task: str, steps: int, batch_size: int = 32) -> float:
    """model.fit with steps_per_execution=32 on the same task and batch size."""
    import keras
    import numpy as np

    from segtrain.taskfile import load_task

    keras.utils.set_random_seed(0)
    t = load_task(task)
    arrays = [np.asarray(a) for a in t.build_dataset({})]
    model = t.build_model({})
    model.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"], steps_per_execution=32)
    n = (len(arrays[0]) // batch_size) * batch_size
    epochs = max(2, steps * batch_size // n)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.start = time.perf_counter()

    timer = Timer()
    model.fit(arrays[0][:n], arrays[1][:n], batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True,
              callbacks=[timer])
    return (epochs - 1) * (n // batch_size) / (time.perf_counter() - timer.start)


def write_png_dataset(root: Path, count: int = 1024) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = (digits.images[i % len(digits.images)] * 15).astype(np.uint8)
        Image.fromarray(img).resize((256, 256)).save(root / f"{i:05d}.png")
    np.save(root / "labels.npy", digits.target[np.arange(count) % len(digits.target)])


def bench_train(repeats: int, steps: int, quick: bool) -> str:
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="segtrain-bench-"))
    mlp, tiny, png = TASKS / "bench_mlp_torch.py", TASKS / "bench_tiny_torch.py", TASKS / "bench_png_torch.py"
    png_root = tmp / "png"
    write_png_dataset(png_root, 512 if quick else 1024)
    os.environ["SEGTRAIN_BENCH_PNG_ROOT"] = str(png_root)  # read by the task; loader workers inherit it
    cnn = str(REPO / "examples" / "digits_cnn_torch.py")
    kcnn = str(REPO / "examples" / "digits_cnn_keras.py")

    cases = {  # name -> (variant -> callable giving steps/s)
        "small CNN, PyTorch": {"pipeline": lambda: pipeline_rate(cnn, steps),
                               "hand loop": lambda: hand_rate_torch(cnn, steps)},
        "mid-size MLP, PyTorch": {"pipeline": lambda: pipeline_rate(str(mlp), steps // 2),
                                  "hand loop": lambda: hand_rate_torch(str(mlp), steps // 2)},
        "small CNN, Keras": {"pipeline": lambda: pipeline_rate(kcnn, steps, "keras"),
                             "fit(steps_per_execution=32)": lambda: fit_rate_keras(kcnn, steps)},
        "PNG files, PyTorch loader": {"workers 4": lambda: pipeline_rate(str(png), steps // 4, num_workers=4),
                                      "workers 0": lambda: pipeline_rate(str(png), steps // 4, num_workers=0),
                                      "plain DataLoader, workers 4": lambda: hand_rate_loader(str(png), steps // 4, 4)},
    }
    # The loop's own cost per step, on a model whose step costs next to nothing: the fastest of the
    # rounds on each side (noise only ever adds), so it is not lost in the machine's noise as a
    # ratio of a few percent is
    cases["tiny model (loop overhead)"] = {"pipeline": lambda: pipeline_rate(str(tiny), 3 * steps),
                                           "hand loop": lambda: hand_rate_torch(str(tiny), 3 * steps)}
    results: dict[str, dict[str, list[float]]] = {c: {v: [] for v in vs} for c, vs in cases.items()}
    cores, ceilings = len(os.sched_getaffinity(0)), []
    for r in range(repeats):  # interleaved: every variant once per round, in reverse order every other round
        ceilings.append(parallel_fetch_ceiling(str(png), 200 if quick else 800, cores))
        for case, variants in cases.items():
            order = list(variants) if r % 2 == 0 else list(variants)[::-1]
            for variant in order:
                results[case][variant].append(variants[variant]())
    device = "cuda (" + torch.cuda.get_device_name() + ")" if torch.cuda.is_available() else "cpu"
    lines = [f"Training throughput, steps/s, median of {repeats} interleaved runs; torch device: {device}",
             f"{'case':<28} {'variant':<30} {'steps/s':>9} {'ratio':>7} {'per round':>11}  each run (steps/s)"]
    for case, variants in results.items():
        names = list(variants)
        base = variants[names[1]]
        for name in names:
            runs = variants[name]
            # the ratio: median of the rounds' ratios, each of two runs made one after the other, so
            # a machine that is slower for a while slows both sides of a ratio alike
            paired = [a / b for a, b in zip(runs, base)]
            spread = f"{min(paired):.2f}-{max(paired):.2f}"
            each = " ".join(f"{x:.1f}" for x in runs)
            lines.append(f"{case:<28} {name:<30} {statistics.median(runs):>9.1f} {statistics.median(paired):>7.2f} "
                         f"{spread:>11}  {each}")
    lines.append("ratio: against the second variant of each case (hand loop, fit, or workers 0), the median of the "
                 "rounds' ratios; per round: their range")
    tiny_runs = results["tiny model (loop overhead)"]
    overhead = 1e6 / max(tiny_runs["pipeline"]) - 1e6 / max(tiny_runs["hand loop"])
    cnn_step = 1e6 / max(results["small CNN, PyTorch"]["hand loop"])
    lines.append(f"pipeline loop overhead: {overhead:.0f} us a step (tiny model, fastest run of each side); on the "
                 f"small CNN's fastest hand step ({cnn_step:.0f} us) that allows a ratio of "
                 f"{cnn_step / (cnn_step + max(overhead, 0.0)):.2f}")
    png_runs = results["PNG files, PyTorch loader"]
    vs_plain = statistics.median(a / b for a, b in zip(png_runs["workers 4"], png_runs["plain DataLoader, workers 4"]))
    lines.append(f"PNG, workers 4: pipeline / plain DataLoader = {vs_plain:.2f}; {cores} processes decoding "
                 f"together fetch {statistics.median(ceilings):.2f}x the items of one (runs: "
                 f"{' '.join(f'{c:.2f}' for c in ceilings)}): the most any loader can gain over workers 0 here")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tests/bench_train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="fewer files and steps (a smoke test)")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    print(bench_train(args.repeats, args.steps if not args.quick else 100, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
