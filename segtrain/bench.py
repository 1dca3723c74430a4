"""Benchmarks that print ratios measured in one run: ``python -m segtrain.bench train|checkpoint``.

checkpoint: save and load of a state of ``--size`` on ``--dir`` (the storage the run will use):
raw write and read with fsync, ``torch.save``/``torch.load``, ``torch.distributed.checkpoint``'s
save and async_save (what it blocks), and this project's synchronous save, asynchronous save (what
it blocks after the job's first, and its background write) and load (verify and restore); then the
same for Keras against ``tf.train.Checkpoint``. Interleaved and repeated; medians.

train: training throughput (steps per second) of the pipeline's loop (``runner.run_segment``, the
code a train_segment job runs, with its bookkeeping) against a minimal hand-written loop on the
same model, data, batch size and device: a small CNN and a mid-size MLP in PyTorch, the CNN in
Keras against ``model.fit(steps_per_execution=32)``, and a data-bound case (a Dataset that reads
PNG files and decodes them) with 0 and 4 loader workers. Variants are interleaved and repeated,
every other round in reverse order; a ratio is the median of the rounds' ratios, so a machine that
slows down part-way hurts both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MLP_TASK = '''
import torch
from torch import nn


def build_dataset(params):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 512, generator=g)
    return x, (x[:, :10].sum(1) > 0).long()


def build_model(params):
    return nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 2))


def build_optimizer(model, params):
    return torch.optim.AdamW(model.parameters(), lr=1e-3)


def compute_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
'''

TINY_TASK = '''
import torch
from torch import nn


def build_dataset(params):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 4, generator=g)
    return x, (x[:, 0] > 0).long()


def build_model(params):
    return nn.Linear(4, 2)


def build_optimizer(model, params):
    return torch.optim.SGD(model.parameters(), lr=0.01)


def compute_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
'''

PNG_TASK = '''
import numpy as np
import torch
from PIL import Image
from torch import nn

ROOT = {root!r}


class PngDigits(torch.utils.data.Dataset):
    """Reads and decodes a PNG per item, then crops and flips it at random: a data-bound loader."""

    def __init__(self):
        self.labels = np.load(ROOT + "/labels.npy")

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        with Image.open(f"{{ROOT}}/{{i:05d}}.png") as im:
            im = im.convert("L").resize((224, 224))
        a = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
        top, left = torch.randint(0, 33, (2,))
        a = a[top:top + 192, left:left + 192]
        if torch.rand(()) < 0.5:
            a = a.flip(1)
        return a[::24, ::24].reshape(-1), int(self.labels[i])


def build_dataset(params):
    return PngDigits()


def build_model(params):
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def build_optimizer(model, params):
    return torch.optim.SGD(model.parameters(), lr=0.05)


def compute_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
'''


def _run_settings(task: str, framework: str = "torch", **extra) -> dict:
    from .config import resolve

    cfg = {"runs": {"bench": {"task": task, "framework": framework, "total_steps": 10**6, "params": {},
                              "validation_split": 0, "log_every": 10, **extra}}}
    return resolve(cfg, base=REPO)["bench"]


def pipeline_rate(task: str, steps: int, framework: str = "torch", **extra) -> float:
    """Steps per second of runner.run_segment over ``steps`` steps (no evaluation, one save at the
    end, which is left out: the rate is read from the metrics rows' times)."""
    import csv

    from . import runner
    from .planning import Segment

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

    from .taskfile import load_task

    torch.manual_seed(0)
    torch.set_num_threads(_run_settings(task)["threads"])
    t = load_task(task)
    model = t.build_model({}).to(_device())
    return t, model, t.build_optimizer(model, {})


class _HandPrecision:
    """What a hand-written loop does for ``precision`` (fp32, bf16, fp16): autocast and, for fp16,
    a GradScaler."""

    def __init__(self, precision: str):
        import torch

        from .backends.torch_backend import AUTOCAST_DTYPES

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

    from .taskfile import load_task

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

    from .taskfile import load_task

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
    mlp = tmp / "mlp_task.py"
    mlp.write_text(MLP_TASK)
    tiny = tmp / "tiny_task.py"
    tiny.write_text(TINY_TASK)
    png_root = tmp / "png"
    write_png_dataset(png_root, 512 if quick else 1024)
    png = tmp / "png_task.py"
    png.write_text(textwrap.dedent(PNG_TASK.format(root=str(png_root))))
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


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _fsynced_save(save, path: Path) -> None:
    with open(path, "wb") as fh:
        save(fh)
        fh.flush()
        os.fsync(fh.fileno())


def _torch_state(size: int):
    """An MLP of four square layers and AdamW after one step: about ``size`` bytes of state
    (weights and two moments, float32)."""
    import torch

    width = max(64, int((size / 12 / 4) ** 0.5))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(4)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(8, width)).sum().backward()
    opt.step()
    return model, opt


def _keras_state(size: int):
    import keras
    import numpy as np

    width = max(64, int((size / 12 / 4) ** 0.5))
    model = keras.Sequential([keras.Input((width,))] + [keras.layers.Dense(width) for _ in range(4)])
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="mse")
    model.train_on_batch(np.ones((8, width), "float32"), np.ones((8, width), "float32"))
    return model


def bench_checkpoint(size: int, folder: Path, repeats: int, keras_too: bool) -> str:
    """Checkpoint save and load on ``folder``, interleaved and repeated; medians."""
    import statistics

    import torch

    from . import store as store_mod
    from .backends.torch_backend import TorchState

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="segtrain-ckpt-bench-", dir=folder))
    model, opt = _torch_state(size)
    state = TorchState({"model": model, "optimizer": opt})
    live = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    nbytes += sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
    blob = os.urandom(1 << 20) * max(1, nbytes >> 20)
    store = store_mod.CheckpointStore(work / "store", keep=2)
    step = iter(range(1, 10**9))
    times: dict[str, list[float]] = {}

    def record(name, seconds):
        times.setdefault(name, []).append(seconds)

    dcp = None
    try:
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        if not dist.is_initialized():
            # a one-process group on an in-memory store: no port to collide with another run's
            dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    except Exception as exc:  # no distributed build: the DCP rows are left out
        print(f"torch.distributed.checkpoint unavailable: {exc}", file=sys.stderr)
        dcp = None
    pending = None
    extra = {"step": 0}
    # the first snapshot allocates the host buffers, once per job: not part of the steady figure
    first_snapshot = _timed(lambda: state.snapshot(extra))
    for _ in range(repeats):
        raw = work / "raw.bin"
        record("raw write + fsync", _timed(lambda: _fsynced_save(lambda fh: fh.write(blob), raw)))
        record("raw read", _timed(lambda: raw.read_bytes()))
        raw.unlink()
        plain = work / "plain.pt"
        record("torch.save + fsync", _timed(lambda: _fsynced_save(lambda fh: torch.save(live, fh), plain)))
        record("torch.load", _timed(lambda: torch.load(plain, weights_only=True)))
        plain.unlink()
        if dcp is not None:
            target = work / f"dcp-{len(times.get('dcp.save', []))}"
            record("dcp.save", _timed(lambda: dcp.save(live, checkpoint_id=str(target))))
            t = time.perf_counter()
            pending = dcp.async_save(live, checkpoint_id=str(target) + "-async")
            record("dcp.async_save: blocked", time.perf_counter() - t)
            pending.result()
            shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(str(target) + "-async", ignore_errors=True)
        n = next(step)
        record("segtrain sync save", _timed(lambda: store.save(n, lambda f: state.write_state(f, {"step": n}))))
        n = next(step)
        t = time.perf_counter()
        state.all_finite()
        snap = state.snapshot({"step": n})
        record("segtrain async: blocked", time.perf_counter() - t)
        record("segtrain async: persist", _timed(lambda: store.save(n, snap.write)))

        def load():
            store_mod.verify(store.path(n), state.verified_reads)
            state.read_state(store.path(n))
        record("segtrain load (verify + restore)", _timed(load))
        store.prune()
    rows = [(name, statistics.median(v)) for name, v in times.items()]
    med = dict(rows)
    lines = [f"Checkpoint of {nbytes / 1e6:.0f} MB (PyTorch MLP + AdamW) on {folder}, median of {repeats} interleaved "
             f"runs; first snapshot of a job (allocates its host buffers): {first_snapshot:.3f} s",
             f"{'what':<36} {'seconds':>8} {'GB/s':>6} {'vs segtrain sync save':>22}"]
    for name, sec in rows:
        lines.append(f"{name:<36} {sec:>8.3f} {nbytes / sec / 1e9:>6.2f} {sec / med['segtrain sync save']:>22.3f}")
    lines.append("")
    lines.append(f"async blocked / sync save           {med['segtrain async: blocked'] / med['segtrain sync save']:.3f}")
    if "dcp.async_save: blocked" in med:
        lines.append(f"async blocked / dcp.async_save's    "
                     f"{med['segtrain async: blocked'] / med['dcp.async_save: blocked']:.3f}")
    lines.append(f"persist rate / raw write rate       "
                 f"{med['raw write + fsync'] / med['segtrain async: persist']:.3f}")
    lines.append(f"load / torch.load                   {med['segtrain load (verify + restore)'] / med['torch.load']:.3f}")
    if keras_too:
        lines += ["", _bench_keras_checkpoint(size, work, repeats)]
    shutil.rmtree(work, ignore_errors=True)
    return "\n".join(lines)


def _bench_keras_checkpoint(size: int, work: Path, repeats: int) -> str:
    import statistics

    import tensorflow as tf

    from . import store as store_mod
    from .backends.keras_backend import KerasState

    model = _keras_state(size)
    state = KerasState(model)
    nbytes = sum(v.numpy().nbytes for v in model.variables) + sum(v.numpy().nbytes for v in model.optimizer.variables)
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    store = store_mod.CheckpointStore(work / "kstore", keep=2)
    times: dict[str, list[float]] = {}
    state.snapshot({"step": 0})
    for r in range(repeats):
        prefix = str(work / f"tf-{r}" / "ckpt")
        times.setdefault("tf.train.Checkpoint.write", []).append(_timed(lambda: ckpt.write(prefix)))
        for written in (work / f"tf-{r}").iterdir():  # untimed: its writeback must not slow what comes next
            store_mod.fsync_path(written)
        times.setdefault("tf.train.Checkpoint.read", []).append(_timed(lambda: ckpt.read(prefix).assert_consumed()))
        shutil.rmtree(work / f"tf-{r}", ignore_errors=True)
        n = 2 * r + 1
        times.setdefault("segtrain sync save", []).append(
            _timed(lambda: store.save(n, lambda f: state.write_state(f, {"step": n}))))
        t = time.perf_counter()
        state.all_finite()
        snap = state.snapshot({"step": n + 1})
        times.setdefault("segtrain async: blocked", []).append(time.perf_counter() - t)
        times.setdefault("segtrain async: persist", []).append(_timed(lambda: store.save(n + 1, snap.write)))

        def load():
            store_mod.verify(store.path(n + 1), state.verified_reads)
            state.read_state(store.path(n + 1))
        times.setdefault("segtrain load (verify + restore)", []).append(_timed(load))
        store.prune()
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [f"Keras: {nbytes / 1e6:.0f} MB (Dense layers + AdamW), median of {repeats} interleaved runs",
             f"{'what':<36} {'seconds':>8} {'GB/s':>6} {'vs tf.train.Checkpoint.write':>29}"]
    for name, sec in med.items():
        lines.append(f"{name:<36} {sec:>8.3f} {nbytes / sec / 1e9:>6.2f} "
                     f"{sec / med['tf.train.Checkpoint.write']:>29.3f}")
    lines.append("")
    lines.append(f"async blocked / Checkpoint.write    "
                 f"{med['segtrain async: blocked'] / med['tf.train.Checkpoint.write']:.3f}")
    lines.append(f"load / Checkpoint.read              "
                 f"{med['segtrain load (verify + restore)'] / med['tf.train.Checkpoint.read']:.3f}")
    return "\n".join(lines)


def parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    text = text.strip().upper()
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segtrain.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    train = sub.add_parser("train", help="training throughput: the pipeline's loop against hand-written loops")
    train.add_argument("--repeats", type=int, default=5)
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--quick", action="store_true", help="fewer files and steps (a smoke test)")
    ckpt = sub.add_parser("checkpoint", help="checkpoint save and load against raw writes, torch.save, DCP, Keras")
    ckpt.add_argument("--size", default="800MB", help="state size (e.g. 800MB, 2GB)")
    ckpt.add_argument("--dir", default=".", help="folder on the storage to measure (the run's checkpoint_root)")
    ckpt.add_argument("--repeats", type=int, default=3)
    ckpt.add_argument("--no-keras", action="store_true", help="PyTorch only")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.what == "train":
        print(bench_train(args.repeats, args.steps if not args.quick else 100, args.quick))
    elif args.what == "checkpoint":
        print(bench_checkpoint(parse_size(args.size), Path(args.dir), args.repeats, not args.no_keras))
    return 0


if __name__ == "__main__":
    sys.exit(main())
