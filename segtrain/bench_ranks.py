"""The checkpoint benchmark with several processes, printing ratios measured in one run:
``python -m segtrain.bench checkpoint --processes 2``.

The command starts itself as that many ranks (torchrun), each holding its FSDP2 shard of an MLP
and AdamW of ``--size`` in all, on ``--dir``. Interleaved and repeated, timed on every rank (the
slowest rank is what training waits for): ``torch.distributed.checkpoint``'s save, its
async_save (what a rank is blocked, then the write), and this project's save (every rank's
shards hashed and fsynced, committed by rank 0); the loads at the same number of processes.
Then half as many processes (another torchrun) load both checkpoints again, resharding them. And
the stop agreement: the all-reduce a step makes, against a training step of that model.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _sharded_state(size: int, world):
    """The benchmark's MLP of four square layers, sharded over ``world`` with FSDP2, and AdamW
    after one step: about ``size`` bytes of state in all."""
    import torch

    from segtrain.backends.torch_sharded import shard_model

    width = max(64, int((size / 12 / 4) ** 0.5))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(4)])
    shard_model(model, world, torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(8, width)).sum().backward()
    opt.step()
    return model, opt, width


def _dcp_state(model, opt) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, opt)
    return {"model": msd, "optim": osd}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _rank_main(phase: str, work: Path, size: int, repeats: int) -> None:
    """One rank's share of the benchmark; rank 0 writes every rank's times to ``work``."""
    import torch.distributed.checkpoint as dcp

    from segtrain import store as store_mod
    from segtrain.backends.torch_sharded import ShardedTorchState
    from segtrain.world import current

    world = current()
    model, opt, width = _sharded_state(size, world)
    state = ShardedTorchState({"model": model, "optimizer": opt}, world=world)
    store = store_mod.CheckpointStore(work / "store", keep=repeats + 1)
    times: dict[str, list[float]] = {}

    def record(name, seconds):
        times.setdefault(name, []).append(seconds)

    def each_rank(name, fn):
        world.barrier()  # every rank starts together: a rank's time is its own, not its wait for another
        record(name, _timed(fn))

    for n in range(1, repeats + 1):
        target = work / f"dcp-{n}"

        def verified_load(step=n):
            store_mod.verify(store.path(step), state.verified_reads)
            state.read_state(store.path(step))

        if phase == "write":
            each_rank("dcp.save", lambda: dcp.save(_dcp_state(model, opt), checkpoint_id=str(target)))
            world.barrier()
            t = time.perf_counter()
            pending = dcp.async_save(_dcp_state(model, opt), checkpoint_id=str(target) + "-async")
            record("dcp.async_save: blocked", time.perf_counter() - t)
            pending.result()
            record("dcp.async_save: blocked + write", time.perf_counter() - t)
            each_rank("segtrain save (shards, hashed, committed)",
                      lambda: store.save(n, lambda f: state.write_state(f, {"step": n}), {}, world=world))
            each_rank("dcp.load", lambda: dcp.load(_dcp_state(model, opt), checkpoint_id=str(target)))
            each_rank("segtrain load (verify + restore)", verified_load)
        else:  # another number of processes: both formats reshard
            each_rank("dcp.load, resharded", lambda: dcp.load(_dcp_state(model, opt), checkpoint_id=str(target)))
            each_rank("segtrain load, resharded", verified_load)
    if phase == "write":
        import torch

        x = torch.randn(8, width)
        for _ in range(5):
            world.agree_reason(None)
        agree = [_timed(lambda: world.agree_reason(None)) for _ in range(200)]

        def step():
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()

        steps = [_timed(step) for _ in range(20)]
        record("stop agreement (per step)", statistics.median(agree))
        record("training step of this model", statistics.median(steps[5:]))
    everyone = world.all_gather(times)
    if world.is_main:
        (work / f"{phase}.json").write_text(json.dumps({"world_size": world.world_size, "times": everyone}))
    world.close()


def _slowest(result: dict) -> dict[str, float]:
    """Per measurement: the median over repeats of the slowest rank's time."""
    ranks = result["times"]
    return {name: statistics.median(max(r[name][i] for r in ranks) for i in range(len(ranks[0][name])))
            for name in ranks[0]}


def bench_ranks(processes: int, size: int, folder: Path, repeats: int) -> str:
    """Start the ranks (``processes``, then half as many to reshard) and report what they measured."""
    from segtrain.launch import torchrun_argv

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="segtrain-ranks-bench-", dir=folder))
    fewer = max(1, processes // 2)
    try:
        for phase, n in (("write", processes), ("reshard", fewer)):
            argv = torchrun_argv(n, str(Path(__file__).resolve()), 5) + [phase, str(work), str(size), str(repeats)]
            done = subprocess.run(argv, capture_output=True, text=True, env=_environ())
            if done.returncode != 0:
                raise RuntimeError(f"the {phase} ranks failed ({done.returncode}): {done.stderr[-3000:]}")
        wrote = _slowest(json.loads((work / "write.json").read_text()))
        resharded = _slowest(json.loads((work / "reshard.json").read_text()))
        nbytes = sum(f.stat().st_size for f in (work / "store").glob("step-*/shard-*.pt"))
        nbytes //= max(1, len(list((work / "store").glob("step-*"))))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from segtrain.stopping import agreement_interval

    ours = wrote["segtrain save (shards, hashed, committed)"]
    agree, step = wrote["stop agreement (per step)"], wrote["training step of this model"]
    every = agreement_interval([agree], step)
    lines = [f"Sharded checkpoint (FSDP2, MLP + AdamW, {nbytes / 1e6:.0f} MB of shards) by {processes} processes on "
             f"{folder}, median of {repeats} interleaved runs of the slowest rank; resharded loads by {fewer}",
             f"{'what':<44} {'seconds':>9} {'vs segtrain save':>17}"]
    for name, sec in [*wrote.items(), *resharded.items()]:
        if "agreement" not in name and "training step" not in name:
            lines.append(f"{name:<44} {sec:>9.4f} {sec / ours:>17.3f}")
    lines += ["",
              f"segtrain save / dcp.save                     {ours / wrote['dcp.save']:.3f}",
              f"segtrain save / dcp.async_save blocked+write {ours / wrote['dcp.async_save: blocked + write']:.3f}",
              f"segtrain load / dcp.load                     "
              f"{wrote['segtrain load (verify + restore)'] / wrote['dcp.load']:.3f}",
              f"segtrain resharded load / dcp's              "
              f"{resharded['segtrain load, resharded'] / resharded['dcp.load, resharded']:.3f}",
              f"stop agreement per step: {wrote['stop agreement (per step)'] * 1e6:.0f} us, "
              f"{wrote['stop agreement (per step)'] / wrote['training step of this model'] * 100:.2f} % of a "
              f"training step of this model ({wrote['training step of this model'] * 1e3:.1f} ms); the loop agrees "
              f"every {every} step(s): {agree / every / step * 100:.2f} %"]
    return "\n".join(lines)


def _environ() -> dict:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


if __name__ == "__main__":  # one rank, started by bench_ranks through torchrun
    sys.path.insert(0, str(REPO))
    _rank_main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
