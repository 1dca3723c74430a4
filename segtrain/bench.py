"""Checkpoint benchmark, printing ratios measured in one run: ``python -m segtrain.bench checkpoint``.

Save and load of a state of ``--size`` on ``--dir`` (the storage the run will use): raw write and
read with fsync, ``torch.save``/``torch.load``, ``torch.distributed.checkpoint``'s save and
async_save (what it blocks), and this project's synchronous save, asynchronous save (what it
blocks after the job's first, and its background write) and load (verify and restore); then the
same for Keras against ``tf.train.Checkpoint``. Interleaved and repeated; medians. (The training
throughput benchmark is harness code: tests/bench_train.py.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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

    import torch

    from . import store as store_mod
    from .backends.torch_state import TorchState

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
    ckpt = sub.add_parser("checkpoint", help="checkpoint save and load against raw writes, torch.save, DCP, Keras")
    ckpt.add_argument("--size", default="800MB", help="state size (e.g. 800MB, 2GB)")
    ckpt.add_argument("--dir", default=".", help="folder on the storage to measure (the run's checkpoint_root)")
    ckpt.add_argument("--repeats", type=int, default=3)
    ckpt.add_argument("--no-keras", action="store_true", help="PyTorch only")
    ckpt.add_argument("--processes", type=int, default=1,
                      help="above 1: that many ranks (torchrun), each with its FSDP2 shard, against DCP")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.what == "checkpoint" and args.processes > 1:
        from .bench_ranks import bench_ranks

        print(bench_ranks(args.processes, parse_size(args.size), Path(args.dir), args.repeats))
    elif args.what == "checkpoint":
        print(bench_checkpoint(parse_size(args.size), Path(args.dir), args.repeats, not args.no_keras))
    return 0


if __name__ == "__main__":
    sys.exit(main())
