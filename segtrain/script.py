"""Bring your own PyTorch training loop: the pipeline's guarantees for the script you already have.

A run with ``script: train.py`` (instead of ``task:``) runs that script in every job. The script
asks for its session and hands its loop to it::

    import segtrain

    seg = segtrain.session()
    seg.track(model=model, optimizer=optimizer, scheduler=scheduler)  # anything with state_dict()
    loader = seg.dataloader(dataset, batch_size=64, num_workers=4)
    for step, batch in seg.steps(loader):  # restores first, then saves at the planned interval
        loss = train_step(batch)           # and stops at the segment's end, the deadline or a signal
        seg.log(loss=loss)

Behind the session is the same job as the pipeline's own loop (``runner.SegmentJob``): the
planned interval, verified atomic checkpoints (keep-k plus best), the deadline stop, the stop
signals, the attempts ledger and the metrics across segments. The data position is exact with
``seg.dataloader`` (its order is the pipeline's seeded order); with a loader of your own the run
resumes at the right step, its data restarts at the loader's beginning, and the job says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import runpy
import sys
from pathlib import Path

from .epochs import SegmentDone
from .settings import RunSettings

log = logging.getLogger(__name__)

_ACTIVE: "Session | None" = None  # the job's session, set by run_script around the user's script
_STANDALONE: "Session | None" = None  # the session of a script run alone, outside the pipeline


class _MeasureDone(BaseException):
    """Ends the user's script once the measure job has what it came for (not an Exception: a
    script's ``except Exception`` must not swallow it)."""


def session(total_steps: int | None = None) -> "Session":
    """This job's session. Outside the pipeline (``python train.py``) a session that trains
    ``total_steps`` steps without checkpoints, to try the script."""
    global _STANDALONE
    if _ACTIVE is not None:
        if total_steps is not None and total_steps != _ACTIVE.total_steps:
            log.warning("session(total_steps=%d) is ignored: the run's config sets total_steps %d",
                        total_steps, _ACTIVE.total_steps)
        _ = _ACTIVE.world  # several processes: the process group exists when the session returns, in every job
        return _ACTIVE
    if _STANDALONE is not None and total_steps in (None, _STANDALONE.total_steps):
        return _STANDALONE
    if total_steps is None:
        raise RuntimeError(
            "segtrain.session(): this script is not running in a pipeline job. Run it through the "
            "pipeline (config: script: <this file>), or give total_steps to try it alone: "
            "segtrain.session(total_steps=100)")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.warning("not in a pipeline job: training %d steps without checkpoints", total_steps)
    _STANDALONE = Session(RunSettings(name="standalone", total_steps=total_steps, log_every=100))
    return _STANDALONE


def finite(modules) -> bool:
    """Whether every parameter of ``modules`` is finite (one device synchronisation)."""
    from .backends.torch_state import modules_finite

    return modules_finite(modules)


class SegmentLoader:
    """Batches in the pipeline's seeded order (a function of the seed and the global step), so a
    resume at any step reads exactly the batch an uninterrupted run would. Made by
    ``Session.dataloader``. Iterated (by a trainer: Lightning), it gives the rest of the epoch of
    ``position`` (the global step of its next batch) and moves on; ``state_dict`` makes it a
    resumable loader to Lightning, and segtrain.lightning sets ``position`` from the global step
    on a resume (a trainer that prefetches saves a state one batch ahead)."""

    def __init__(self, dataset, batch_size: int, seed: int, num_workers: int = 0, collate_fn=None,
                 pin_memory: bool | None = None, prefetch_factor: int | None = None, world=None):
        from .data import DataOrder
        from .world import SINGLE

        self.world = world if world is not None else SINGLE  # each process loads its share of every batch
        if batch_size % self.world.world_size:
            raise ValueError(f"seg.dataloader(batch_size={batch_size}): a step's {batch_size} samples do not split "
                             f"into {self.world.world_size} equal shares, one per process; give a multiple of "
                             f"{self.world.world_size} (batch_size is the step's batch over all processes)")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.num_workers, self.collate_fn, self.prefetch_factor = num_workers, collate_fn, prefetch_factor
        self.pin_memory = pin_memory
        self.order = DataOrder(len(dataset), batch_size, seed)
        self.position = 0

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state.get("position", 0))

    def __len__(self) -> int:
        return self.order.steps_per_epoch

    def batches(self, start: int, end: int):
        """The batches of global steps ``start`` to ``end - 1``."""
        import torch

        from .backends.torch_data import step_loader

        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        return step_loader(self.dataset, self.order, start, end, self.seed, self.num_workers, pin_memory=pin,
                           collate_fn=self.collate_fn, prefetch_factor=self.prefetch_factor,
                           rank=self.world.rank, world_size=self.world.world_size)

    def __iter__(self):
        start = self.position
        for i, batch in enumerate(self.batches(start, (start // len(self) + 1) * len(self))):
            self.position = start + i + 1
            yield batch


class _LrAtStep:
    """The learning rate a step used: the optimizer's at its ``step()`` call in the script's loop
    body (a script may set the rate in the body, before the step; a scheduler steps after it),
    read by a pre-step hook; the rate before the body where the optimizer has no hooks."""

    def __init__(self, optimizer):
        self.optimizer, self.used, self.handle = optimizer, [], None
        if optimizer is not None and callable(getattr(optimizer, "register_step_pre_hook", None)):
            self.handle = optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.used.append(self._rate()))

    def _rate(self):
        return self.optimizer.param_groups[0]["lr"]

    def begin(self) -> None:
        self.used.clear()
        if self.optimizer is not None:
            self.before = self._rate()

    def log(self, job) -> None:
        if self.optimizer is not None:
            job.log({"lr": self.used[0] if self.used else self.before})

    def close(self) -> None:
        if self.handle is not None:
            self.handle.remove()


def _shuffles(loader) -> bool:
    """Whether a loader of the script's own draws a new order each pass (a DataLoader with
    shuffle=True): a resume that starts it again gives other batches, whatever else is exact."""
    sampler = getattr(loader, "sampler", None)
    try:
        from torch.utils.data import RandomSampler
    except ImportError:
        return False
    return isinstance(sampler, RandomSampler) or isinstance(getattr(loader, "batch_sampler", None), RandomSampler)


def _noting_empty(batches, job):
    """Batches, noting on ``job`` whether they are None (the script makes its own batches, from a
    sampler of its own, and hands seg.steps() a placeholder such as itertools.repeat(None))."""
    for batch in batches:
        job.data_placeholder = batch is None
        yield batch


def _foreign_batches(loader, start: int):
    """Batches of a loader that is not ours, endlessly (epoch after epoch), from its beginning."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError(f"the data loader gave no batch (training was at step {start}); "
                               "a loader for seg.steps() must give at least one batch per pass")


class Session:
    """What a training script sees of its job; made by ``segtrain.session()``."""

    def __init__(self, run: RunSettings, job=None, measure=None, export=None):
        self.run = run
        self._job = job  # runner.SegmentJob of a training job
        self._measure = measure  # (store root, costs file) of a measure job
        self._export = export  # (checkpoint folder, {ext: path}) of a Keras export job
        self._objects: dict = {}
        self._row: dict = {}
        self.stopped = False
        self._length: tuple[int, str] | None = None  # the framework's own length, for the plan

    def _run_length(self, planned: int, how: str, fix: str = "") -> None:
        """A framework's own run length (fit's epochs, a trainer's max_epochs or max_steps),
        ``planned`` steps, said as ``how``: the run's length where the config leaves total_steps
        out (the measure job hands it to the plan); else it must equal total_steps, and a job
        says so before it trains. ``fix``: the way to the other choice, in the framework's terms."""
        if self._job is None and self._measure is None:
            return  # alone, or the export job
        if self.run.total_steps and planned != self.run.total_steps:
            raise ValueError(f"{how}, and the run's total_steps is {self.run.total_steps}: set total_steps: {planned} "
                             f"in the config (or leave total_steps out: the run then trains {planned} steps)"
                             + (f", or {fix}" if fix else ""))
        if not self.run.total_steps:
            self._length = (int(planned), how)

    # -- what the script may read --
    @property
    def total_steps(self) -> int:
        return self.run.total_steps

    @property
    def seed(self) -> int:
        return self.run.seed

    @property
    def world(self):
        """This process among the job's processes (``segtrain.world``: rank, world_size,
        local_rank, is_main, barrier, broadcast): with ``processes`` above 1, torch.distributed's
        process group is ready, so the script wraps its model (``DistributedDataParallel``) and
        logs or writes files where ``is_main``. One process alone: rank 0 of 1."""
        if self._job is not None:
            return self._job.world
        from .world import current

        return current()

    @property
    def measuring(self) -> bool:
        """True in the job that measures step and checkpoint costs (a few steps, then the script ends)."""
        return self._measure is not None

    @property
    def segment(self) -> int:
        return self._job.segment.index if self._job is not None else 0

    # -- what the script does --
    def track(self, **objects) -> None:
        """The objects whose state is the training state: the model (required, under the name
        ``model``: its weights are what the run exports), optimizers, schedulers, a GradScaler, an
        EMA, anything with ``state_dict()`` and ``load_state_dict()``."""
        for name, obj in objects.items():
            if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
                raise TypeError(f"seg.track({name}=...): a {type(obj).__name__} has no state_dict()/load_state_dict(); "
                                "track objects whose state can be saved and restored")
        self._objects.update(objects)

    def dataloader(self, dataset, batch_size: int, num_workers: int = 0, collate_fn=None,
                   pin_memory: bool | None = None, prefetch_factor: int | None = None) -> SegmentLoader:
        """A loader whose position is part of every checkpoint: a resume reads exactly the batch
        an uninterrupted run would. Shuffled each epoch by the run's seed, the last partial batch
        dropped. With workers, each item's random streams (augmentation) are seeded by (seed,
        step, position), so any number of workers gives the same batches. ``batch_size`` is a
        step's batch over all processes: each process loads its equal share of it."""
        return SegmentLoader(dataset, batch_size, self.seed, num_workers, collate_fn, pin_memory, prefetch_factor,
                             world=self.world)

    def log(self, **values) -> None:
        """The current step's loss and metrics (tensors are read only on the steps that log)."""
        if self._job is not None:
            self._job.log(values)
        self._row.update(values)

    def steps(self, loader, evaluate=None):
        """Yield ``(step, batch)`` for each step of this job, ``step`` counting from 1 for the
        run's first step. Restores the newest checkpoint first; between steps it evaluates
        (``evaluate()`` returns validation metrics such as ``{"val_loss": ...}``), saves, logs and
        stops in time. Let it run to its end: do not break out of it."""
        if self.run.framework != "torch":
            raise RuntimeError("seg.steps() drives a PyTorch loop; a Keras script calls segtrain.keras.fit(model, ...)")
        state = self._state()
        if self._measure is not None:
            yield from self._measure_steps(state, loader, evaluate)
            return
        if self._job is None:
            yield from self._standalone_steps(state, loader, evaluate)
            return
        job = self._job
        if job.started:
            raise RuntimeError("seg.steps() is called a second time in one job; call it once, for the whole "
                               "training (it yields every step of the job, epochs included: see README, "
                               "'Bringing your training')")
        job.restore_once(state, into="the tracked objects")
        batches = self._batches(loader, job)
        lr = _LrAtStep(self._optimizer())
        try:
            for step in job.steps(state, evaluate=evaluate):
                lr.begin()
                yield step, next(batches)
                lr.log(job)
        finally:
            lr.close()
        self._check_ended(job)

    def epochs(self, loader, evaluate=None):
        """Yield the epoch numbers (from 0) this job trains, for a script whose loop is
        epoch-shaped; inside each, ``seg.batches()`` yields the epoch's batches (see
        ``segtrain.epochs``: per-epoch schedulers and tests keep their place). ``loader`` is
        ``seg.dataloader(...)`` (an exact resume) or the script's own. Restores the newest
        checkpoint first; saves, logs and stops in time as ``seg.steps`` does."""
        from .epochs import EpochLoop, Paired

        if self.run.framework != "torch":
            raise RuntimeError("seg.epochs() drives a PyTorch loop; a Keras script calls segtrain.keras.fit(model, ...)")
        if not hasattr(loader, "__len__") or len(loader) < 1:
            raise ValueError("seg.epochs(loader): the loader must have a length (its batches per epoch)")
        state = self._state()
        per = len(loader)
        if self._job is None or self._measure is not None:  # alone, or the measure job: its steps in epochs
            pairs = Paired(self._measure_steps(state, loader, evaluate) if self._measure is not None
                           else self._standalone_steps(state, loader, evaluate))
            self._epochs = EpochLoop(None, pairs.steps(), pairs.batches(), per, int(self.total_steps))
        else:
            job = self._job
            if job.started:
                raise RuntimeError("seg.epochs() is called a second time in one job; call it once, for the whole "
                                   "training")
            job.restore_once(state, into="the tracked objects")
            job.epoch_steps = per
            batches = self._batches(loader, job)
            self._epochs = EpochLoop(job, job.steps(state, evaluate=evaluate, hold_finish=True), batches, per,
                                     int(self.total_steps))
        yield from self._epochs.epochs()

    def batches(self):
        """This epoch's batches that this job trains (inside ``for epoch in seg.epochs(loader)``)."""
        if getattr(self, "_epochs", None) is None:
            raise RuntimeError("seg.batches() runs inside `for epoch in seg.epochs(loader):`")
        lr = _LrAtStep(self._optimizer() if self._job is not None and self._measure is None else None)
        try:
            for batch in self._epochs.batches():
                lr.begin()
                yield batch
                lr.log(self._job)
        finally:
            lr.close()

    # -- the rest is the job's --
    def _state(self):
        """The tracked objects in the one PyTorch state format (backends.torch_state.TorchState)."""
        from .backends.torch_sharded import ShardedTorchState, is_sharded
        from .backends.torch_state import TorchState

        if "model" not in self._objects:
            raise ValueError("seg.steps(): track the model first, as seg.track(model=model, optimizer=...): its "
                             "weights are what a checkpoint restores and what the run exports")
        if self.world.world_size > 1 and any(is_sharded(o) for o in self._objects.values()):
            return ShardedTorchState(self._objects, world=self.world)  # a model the script sharded with FSDP2
        return TorchState(self._objects, world=self.world)

    def _optimizer(self):
        return next((o for o in self._objects.values() if hasattr(o, "param_groups")), None)

    def _batches(self, loader, job):
        if isinstance(loader, SegmentLoader):
            job.order = loader.order
            return iter(loader.batches(job.step, job.segment.end))
        job.data_note = (f"approximate: the script's own {type(loader).__name__} restarts at its beginning on a "
                         "resume; use seg.dataloader(...) for an exact data position")
        job.data_shuffled = _shuffles(loader)
        if job.step > 0:
            log.warning("resuming at step %d with the script's own %s (not seg.dataloader): segtrain cannot position "
                        "it, so it starts again at its beginning; unless its batches depend only on the restored "
                        "random streams, the data order differs from an uninterrupted run (not bitwise identical). "
                        "seg.dataloader(dataset, batch_size) resumes exactly", job.step, type(loader).__name__)
        return _noting_empty(_foreign_batches(loader, job.step), job)

    @staticmethod
    def _check_ended(job):
        if job.summary is None:
            raise RuntimeError(f"segment {job.segment.index} ended at step {job.step}, before its end step "
                               f"{job.segment.end}")

    def _standalone_steps(self, state, loader, evaluate):
        """The script run alone (``python train.py``): every step of the run, no checkpoints; the
        evaluation once at the end, as the job's would (a broken ``evaluate`` shows here, not first
        in the pipeline's measure job)."""
        from .training import evaluation_seed

        batches = iter(loader.batches(0, self.total_steps)) if isinstance(loader, SegmentLoader) \
            else _foreign_batches(loader, 0)
        for step in range(1, self.total_steps + 1):
            self._row = {}
            yield step, next(batches)
            if step % self.run.log_every == 0 or step == self.total_steps:
                log.info("step %d/%d %s", step, self.total_steps,
                         ", ".join(f"{k} {float(v):.4g}" for k, v in self._row.items()))
        if evaluate is not None:
            with state.isolated_rng(evaluation_seed(self.seed, self.total_steps)):
                metrics = state.as_numbers(evaluate())
            log.info("evaluation at step %d: %s", self.total_steps,
                     ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))))

    def _measure_steps(self, state, loader, evaluate):
        """A measure job: time steps, evaluations and checkpoints, write the costs, end the script."""
        from .measure import StepMarks

        marks = StepMarks(self.run)
        batches = (iter(loader.batches(0, marks.count)) if isinstance(loader, SegmentLoader)
                   else _foreign_batches(loader, 0))
        names = {"lr"} if self._optimizer() is not None else set()
        for step in range(1, marks.count + 1):
            self._row = {}
            yield step, next(batches)
            names |= set(state.as_numbers(self._row))  # waits for the device
            marks.mark()
        if not isinstance(loader, SegmentLoader):
            self._iterable = type(loader).__name__  # what the plan names (it cannot position it)
        self._finish_measure(state, marks.step_times(), names, evaluate,
                             len(loader) if hasattr(loader, "__len__") else 0,
                             "segtrain" if isinstance(loader, SegmentLoader) else "the script's own", marks.startup)

    def _finish_measure(self, state, step_times, names, evaluate, steps_per_epoch, data_loader, startup,
                        evaluates: str = ""):
        """Time evaluations and saves and loads, write the costs, end the script."""
        from . import store as store_mod
        from .measure import costs_of, time_checkpoints, time_evaluations

        store_root, costs_file = self._measure
        run = self.run
        eval_times = []
        if evaluate is not None:
            eval_times, warmup = time_evaluations(state, run.seed, evaluate, names)
            startup += warmup
        costs = costs_of(step_times, time_checkpoints(state, run, store_root), startup=startup,
                         eval_times=eval_times, steps_per_epoch=steps_per_epoch, names=names, run=run,
                         store_root=store_root)
        costs["data_loader"] = data_loader
        if getattr(self, "_iterable", None):
            costs["data_iterable"] = self._iterable
        if self._length is not None:  # the config leaves total_steps out: the framework's length is the run's
            costs["total_steps"], costs["total_steps_from"] = self._length
        if evaluates:  # a trainer evaluates on its own schedule: its metrics may not be known yet
            costs["evaluates"] = evaluates
        if self.world.is_main:  # several processes: each measured its share; the main one's are the job's
            store_mod.write_json_atomic(Path(costs_file), {**costs, "processes": self.world.world_size})
            log.info("measured: %s", costs)
        raise _MeasureDone

    @property
    def exporting(self) -> bool:
        """True in the job that exports a Keras script's checkpoint (it builds the model, then ends)."""
        return self._export is not None

    def _export_keras(self, state, model):
        folder, out = self._export
        state.read_state(folder)
        model.save(out["keras"])
        model.save_weights(out["weights.h5"])
        raise _MeasureDone


def _prepare_process(run: RunSettings) -> None:
    """What the pipeline's loop does before it builds a task: threads, kernels, seeds."""
    deterministic, threads, seed = run.deterministic, run.threads, run.seed
    if run.framework == "keras":
        from .backends.keras_backend import configure as configure_keras

        configure_keras(threads, seed, deterministic)
        return
    from .backends.torch_backend import configure, seed_everything

    configure(threads, deterministic)
    seed_everything(seed)
    # Lightning's seed_everything() without a seed (LightningCLI's default) takes the run's seed
    os.environ.setdefault("PL_GLOBAL_SEED", str(seed))


def run_script(run: RunSettings, sess: Session) -> None:
    """Run the run's script as ``__main__`` in this process, with ``sess`` as its session."""
    global _ACTIVE
    from .definition import find_task

    script = Path(find_task(run.task) or run.task).resolve()
    args = list(run.script_args or ())
    _prepare_process(run)
    if callable(getattr(sys.stdout, "reconfigure", None)):
        sys.stdout.reconfigure(line_buffering=True)  # the script's prints reach the job's log in order
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.parent))
    _ACTIVE = sess
    try:
        with _group_made_once():
            runpy.run_path(str(script), run_name="__main__")
    except (_MeasureDone, SegmentDone):
        return
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"{script.name} exited with status {exc.code}") from None
    finally:
        _ACTIVE = None
        sys.argv, sys.path[:] = saved_argv, saved_path
    if sess.measuring or sess.exporting:
        raise RuntimeError(f"{script.name} ended without running seg.steps() or segtrain.keras.fit(): the "
                           "pipeline's jobs hand the script's loop to one of them")
    job = sess._job
    if job.summary is None:
        from .runner import Stopped

        if job.stopped:  # the script caught the Stopped exception: the job still ends as stopped
            raise Stopped(job.stopped)
        raise RuntimeError(
            f"{script.name} ended at step {job.attempting} before segment {job.segment.index}'s end step "
            f"{job.segment.end}: seg.steps() must run to its end (no break out of it)")


@contextlib.contextmanager
def _group_made_once():
    """A script that makes its process group itself (``dist.init_process_group()`` first, as
    torchrun scripts do) gets the job's: a training job made it before the script ran. The call
    is accepted when it asks for this job's world (the same size and rank), refused otherwise."""
    try:
        import torch.distributed as dist
    except ImportError:
        yield
        return
    if not dist.is_available():
        yield
        return
    made = dist.init_process_group

    def init_process_group(*args, **kwargs):
        if not dist.is_initialized():
            return made(*args, **kwargs)
        size, rank = dist.get_world_size(), dist.get_rank()
        asked_size, asked_rank = kwargs.get("world_size", -1), kwargs.get("rank", -1)
        if asked_size not in (-1, size) or asked_rank not in (-1, rank):
            raise RuntimeError(f"init_process_group(world_size={asked_size}, rank={asked_rank}): this job's process "
                               f"group is rank {rank} of {size} (the run's processes); leave world_size and rank "
                               "out (torchrun's environment gives them)")
        log.info("the script's init_process_group(): the job's process group (rank %d of %d) is used", rank, size)

    dist.init_process_group = init_process_group
    try:
        yield
    finally:
        dist.init_process_group = made


def export_script(run: RunSettings, folder: Path, out: dict) -> None:
    """Save a Keras script's checkpoint as a model file: the script builds and compiles its model
    (custom layers included), ``segtrain.keras.fit`` loads the checkpoint into it and saves it."""
    run_script(run, Session(run, export=(Path(folder), out)))


def measure_script(run: RunSettings, store_root: Path, costs_file: Path) -> None:
    run_script(run, Session(run, measure=(Path(store_root), Path(costs_file))))


def train_script(run: RunSettings, segment, paths, previous, out_dir) -> dict:
    """Train one segment by running the user's script; returns the segment summary."""
    from .runner import SegmentJob

    with SegmentJob(run, segment, paths, previous, out_dir) as job:
        run_script(run, Session(run, job=job))
        return job.summary
