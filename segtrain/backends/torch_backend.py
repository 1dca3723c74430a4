"""PyTorch backend: builds the task, takes steps, and turns the full training state into files.

Everything saved is tensors or plain Python values, so a checkpoint loads with
``torch.load(weights_only=True)`` and never unpickles code.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Collection

import numpy as np

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed for deterministic cuBLAS

import torch  # noqa: E402

from ..checkpointing import HostCopy, as_numbers  # noqa: E402
from ..store import IncompatibleCheckpoint, hashed_file, load_verified  # noqa: E402
from ..taskfile import RunContext, call_task, load_task  # noqa: E402

STATE_FILE = "state.pt"


def _python_rng_state():
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _set_python_rng_state(state):
    random.setstate((state["version"], tuple(int(x) for x in state["internal"].tolist()), state["gauss"]))


def _numpy_rng_state():
    key, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "key": key,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _set_numpy_rng_state(state):
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["key"], keys, state["pos"], state["has_gauss"], state["cached"]))


def rng_state() -> dict:
    """Every random stream a training step may draw from: Python's, numpy's, torch's (and CUDA's)."""
    rng = {"python": _python_rng_state(), "numpy": _numpy_rng_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict) -> None:
    _set_python_rng_state(rng["python"])
    _set_numpy_rng_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA too


@contextlib.contextmanager
def isolated_rng(seed: int):
    """Run the body (an evaluation) on RNG streams of its own, seeded by ``seed``, and put the
    training streams back afterwards: what evaluation draws never shifts training."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    seed_everything(seed)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state_all(state[3])


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # precision -> autocast dtype


def configure(threads: int, deterministic) -> torch.device:
    """Threads and kernel choice for a job; returns the device it trains on.

    ``deterministic`` True: deterministic kernels or an error (bitwise resumes); 'warn': a warning
    where an op has none; False: the fastest kernels."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic is not False, warn_only=deterministic == "warn")
    torch.backends.cudnn.benchmark = deterministic is False
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _Prepared:
    """A batch already fetched, collated and moved (by ``Backend.batches``), not sample indices."""

    def __init__(self, batch):
        self.batch = batch


def _split(batch, parts: int):
    """``batch`` cut into ``parts`` micro-batches along the first dimension (nested structures too)."""
    if parts == 1:
        return [batch]
    if torch.is_tensor(batch):
        return list(batch.chunk(parts))
    if isinstance(batch, dict):
        cut = {k: _split(v, parts) for k, v in batch.items()}
        return [{k: cut[k][i] for k in batch} for i in range(parts)]
    if isinstance(batch, (list, tuple)):
        cut = [_split(v, parts) for v in batch]
        return [[c[i] for c in cut] for i in range(parts)]
    return [batch] * parts


class _StepBatches(torch.utils.data.Sampler):
    """The index batches of steps ``start`` to ``end - 1`` from the seeded data order, each item
    tagged with its step and position, so that a worker can seed what it draws for it."""

    def __init__(self, order, start: int, end: int):
        self.order, self.start, self.end = order, start, end

    def __iter__(self):
        for step in range(self.start, self.end):
            yield [(step, pos, int(i)) for pos, i in enumerate(self.order.batch(step))]

    def __len__(self):
        return self.end - self.start


def _worker_ignores_stops(worker_id: int) -> None:
    """A stop signal (a pod's SIGTERM reaches the whole process group) is the training process's to
    handle: it saves, then ends, and its workers with it. A worker killed by it would instead make
    the DataLoader raise in the middle of a step, before the save."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    die_with_parent()


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the one that forked it ends (Linux): a training
    process killed by SIGKILL (out of memory) must not leave workers behind. Elsewhere, nothing."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call: nobody would signal us
        os._exit(0)


class _SeededItems(torch.utils.data.Dataset):
    """``dataset[i]`` fetched with the torch, numpy and Python streams seeded by (seed, step, pos)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        step, pos, i = key
        item_seed = int(np.random.SeedSequence([self.seed, step, pos]).generate_state(1, np.uint64)[0] >> 1)
        # the CPU generator only: torch.manual_seed also visits every accelerator's generator, which
        # costs about 0.2 ms, per item; a forked worker cannot use CUDA anyway
        torch.default_generator.manual_seed(item_seed)
        np.random.seed(item_seed % 2**32)
        random.seed(item_seed)
        return self.dataset[i]


class _Items(torch.utils.data.Dataset):
    """``dataset[i]`` for the (step, pos, i) keys of ``_StepBatches``, drawing from the process's streams."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        return self.dataset[key[2]]


def step_loader(dataset, order, start: int, end: int, seed: int, num_workers: int = 0, pin_memory: bool = False,
                collate_fn=None, prefetch_factor: int | None = None):
    """A DataLoader over the batches of global steps ``start`` to ``end - 1`` of the seeded ``order``.

    With workers, each item is fetched with the random streams seeded by (seed, step, position
    in the batch): augmentation gives the same batch whichever worker fetches it, and a resume
    at any step is exact. Without workers, items draw from the training process's streams, which
    every checkpoint holds (nothing is fetched ahead, so nothing is drawn out of turn)."""
    workers = num_workers > 0
    return torch.utils.data.DataLoader(
        _SeededItems(dataset, seed) if workers else _Items(dataset),
        batch_sampler=_StepBatches(order, start, end), collate_fn=collate_fn,
        num_workers=num_workers, pin_memory=pin_memory,
        prefetch_factor=(prefetch_factor or 4) if workers else None,
        worker_init_fn=_worker_ignores_stops if workers else None,
        # the loader draws its workers' base seed from this, not from the training stream: a
        # loader made at each segment's start must not shift what training draws
        generator=torch.Generator().manual_seed(seed),
        multiprocessing_context=("fork" if "fork" in torch.multiprocessing.get_all_start_methods() else None)
        if workers else None)


class Several:
    """Several optimizers (or schedulers) that a task returns as a list, tuple or dict, driven as
    one: each steps, and each one's state is saved under its name (its position in a list)."""

    def __init__(self, items):
        self.items = dict(items) if isinstance(items, dict) else {str(i): x for i, x in enumerate(items)}
        if not self.items:
            raise ValueError("an empty list of optimizers or schedulers")

    @property
    def param_groups(self) -> list:
        return [group for item in self.items.values() for group in item.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for item in self.items.values():
            item.zero_grad(set_to_none=set_to_none)

    def step(self, *args) -> None:
        for item in self.items.values():
            item.step(*args)

    def state_dict(self) -> dict:
        return {name: item.state_dict() for name, item in self.items.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.items):
            raise RuntimeError(f"the checkpoint holds {sorted(state)}, the task builds {sorted(self.items)}")
        for name, item in self.items.items():
            item.load_state_dict(state[name])


def several(built):
    """``built`` as it is, or a ``Several`` when the task returned a list, tuple or dict."""
    return Several(built) if isinstance(built, (list, tuple, dict)) else built


def all_finite(params) -> bool:
    """Whether every value of the tensors ``params`` is finite, in one read of each and one host
    sync: a NaN or an infinity makes its tensor's sum non-finite. A sum can also overflow when
    every value is finite but huge; such tensors are then checked value by value."""
    params = [p.detach() for p in params]
    if not params:
        return True
    sums = torch.stack([torch.sum(p, dtype=torch.float32) for p in params])
    finite = torch.isfinite(sums)
    if bool(finite.all()):
        return True
    return all(bool(torch.isfinite(p).all()) for p, ok in zip(params, finite.tolist()) if not ok)


def read_state_file(folder: Path, mapped: Collection[tuple] = ()) -> dict:
    """``folder/state.pt`` with ``torch.load(weights_only=True)``, hashed against the manifest
    while it loads (CorruptCheckpoint before anything is used when it does not match).

    The file is memory-mapped. The entries at the key paths in ``mapped`` (a module's state
    dict, which ``load_state_dict`` copies into the live parameters) stay views of the mapping
    and are read once, when the caller applies them; they must not be kept past that. Every
    other tensor is copied out while the second thread hashes the file. That is cheaper than
    ``torch.load`` reading the whole file into fresh memory, and it leaves the model's bytes to
    a single copy."""

    def load(path: Path) -> dict:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError, ValueError):  # a file system without mmap, or a damaged file
            return torch.load(path, map_location="cpu", weights_only=True)
        return _owned(state, (), frozenset(mapped), {})

    return load_verified(folder, STATE_FILE, load)


def _owned(value, path: tuple, mapped: frozenset, copies: dict):
    """``value`` with every tensor outside ``mapped`` copied out of the file's mapping; views of
    one storage stay views of one copy (``copies``: storage address -> its copy)."""
    if path in mapped:
        return value
    if isinstance(value, dict):
        out = value.copy()  # keeps the dict's type (a state dict is an OrderedDict)
        for key, item in value.items():
            out[key] = _owned(item, path + (key,), mapped, copies)
        return out
    if isinstance(value, (list, tuple)):
        items = [_owned(item, path + (i,), mapped, copies) for i, item in enumerate(value)]
        return items if isinstance(value, list) else type(value)(items)
    if not torch.is_tensor(value):
        return value
    if value.layout != torch.strided or value.is_quantized or type(value) is not torch.Tensor:
        return value.clone()
    storage = value.untyped_storage()
    own = copies.get(storage.data_ptr())
    if own is None:
        # a tensor's clone lets go of the GIL (a storage's does not), so the hash thread runs alongside
        own = torch.empty(0, dtype=torch.uint8).set_(storage).clone().untyped_storage()
        copies[storage.data_ptr()] = own
    return torch.empty(0, dtype=value.dtype).set_(own, value.storage_offset(), value.size(), value.stride())


def write_state_file(folder: Path, state: dict) -> None:
    """``state`` as ``folder/state.pt``, hashed as it is written (loads with weights_only=True)."""
    with hashed_file(folder, STATE_FILE) as fh:
        torch.save(state, fh)


class TorchSnapshot:
    """A state copied into host buffers (``HostCopy``), written by the background writer."""

    def __init__(self, host: HostCopy, state: dict):
        self.host, self.state = host, state

    def write(self, folder: Path) -> None:
        self.host.ready()  # the device-to-host copies have landed
        write_state_file(folder, self.state)


def modules_finite(modules) -> bool:
    """Whether every parameter of ``modules`` is finite (one device synchronisation)."""
    return all_finite(p for m in modules for p in m.parameters())


LEGACY_LOOP_KEYS = ("model", "optimizer", "scheduler", "scaler")  # the loop's format before "tracked"


class TorchState:
    """Named objects with ``state_dict``/``load_state_dict`` (modules, optimizers, schedulers, a
    grad scaler) and the random streams, as a job saves and restores them: the one PyTorch state
    format, for the pipeline's loop and for a user's script.

    One ``state.pt`` per checkpoint: each object's ``state_dict()`` under ``tracked``, the model's
    weights also under ``model`` (where the export reads them; one copy in the file), the RNG
    streams and the job's extra (step, data position, best). It loads with
    ``torch.load(weights_only=True)``. ``owner`` names who builds the objects in messages ("the
    task", "the script")."""

    verified_reads = (STATE_FILE,)  # read_state hashes it while it loads (store.load_verified)

    def __init__(self, objects: dict, owner: str = "the script"):
        self.objects = {name: obj for name, obj in objects.items() if obj is not None}
        self.owner = owner

    def _state(self, extra: dict) -> dict:
        tracked = {name: obj.state_dict() for name, obj in self.objects.items()}
        return {"model": tracked.get("model"), "tracked": tracked, "rng": rng_state(), "extra": extra}

    def write_state(self, folder: Path, extra: dict) -> None:
        write_state_file(folder, self._state(extra))

    def snapshot(self, extra: dict) -> "TorchSnapshot":
        """Copy the whole state into this job's host buffers; ``.write(folder)`` writes ``state.pt``."""
        if not hasattr(self, "_host"):
            self._host = HostCopy()
        return TorchSnapshot(self._host, self._host.copy(self._state(extra)))

    def read_state(self, folder: Path) -> dict:
        """Restore what ``write_state`` or a snapshot wrote (or the loop's earlier format, its
        objects at the top level); returns its ``extra``."""
        modules = {("tracked", n) for n, obj in self.objects.items() if isinstance(obj, torch.nn.Module)}
        state = read_state_file(folder, mapped={("model",), *modules})  # modules copy what they load
        tracked = state.get("tracked")
        if tracked is None:
            tracked = {k: state[k] for k in LEGACY_LOOP_KEYS if state.get(k) is not None}
        if set(tracked) != set(self.objects):
            raise IncompatibleCheckpoint(
                f"the checkpoint in {folder} holds {sorted(tracked)} and {self.owner} now builds "
                f"{sorted(self.objects)}; build the same objects, or give the run a new name to start over")
        for name, obj in self.objects.items():
            try:
                obj.load_state_dict(tracked[name])
            except (RuntimeError, KeyError, ValueError) as exc:
                raise IncompatibleCheckpoint(
                    f"the checkpoint in {folder} does not fit the '{name}' {self.owner} builds now ({exc}); "
                    "its definition changed: give the run a new name to start over") from None
        set_rng_state(state["rng"])
        return state["extra"]

    def all_finite(self) -> bool:
        return modules_finite(obj for obj in self.objects.values() if isinstance(obj, torch.nn.Module))

    @contextlib.contextmanager
    def isolated_rng(self, seed: int):
        """An evaluation draws from streams of its own, and the modules' train/eval modes are put back."""
        modes = [(m, m.training) for obj in self.objects.values() if isinstance(obj, torch.nn.Module)
                 for m in obj.modules()]
        try:
            with isolated_rng(seed), torch.no_grad():
                yield
        finally:
            for module, training in modes:
                module.training = training

    as_numbers = staticmethod(as_numbers)


class Backend:
    """Trains a PyTorch task one step at a time; see README 'Bringing your training' for the interface."""

    framework = "torch"

    def __init__(self, task_path: str, params: dict, seed: int, threads: int = 1, training: dict | None = None):
        """Seed everything and build the task's data; ``build`` then builds the model.

        ``training``: precision (fp32, bf16, fp16), accumulate (micro-batches per step),
        clip_grad_norm and deterministic (True, False or 'warn'), as in the run's config."""
        self.task = load_task(task_path)
        self.params = dict(params)
        self.seed = seed
        training = dict(training or {})
        self.precision = training.get("precision", "fp32")
        self.accumulate = int(training.get("accumulate", 1))
        self.clip_grad_norm = training.get("clip_grad_norm")
        self.num_workers = int(training.get("num_workers", 0))
        deterministic = training.get("deterministic", True)
        self.device = configure(threads, deterministic)
        self.autocast_dtype = AUTOCAST_DTYPES[self.precision]
        # fp16 gradients underflow without loss scaling; its scale and growth tracker are state
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        seed_everything(seed)
        self.dataset = self.task.build_dataset(self.params)
        if isinstance(self.dataset, (tuple, list)):
            self._tensors = [torch.as_tensor(t) for t in self.dataset]
            self.num_samples = len(self._tensors[0])
        else:
            self._tensors = None
            self.num_samples = len(self.dataset)

    def build(self, context: RunContext | None = None) -> None:
        """Build the model, optimizer and scheduler (given the run's context if they ask for it)."""
        self.model = call_task(self.task.build_model, self.params, run=context).to(self.device)
        self._all_modules = list(self.model.modules())
        # several optimizers (e.g. one per parameter group, each with its own schedule): a list,
        # tuple or dict, stepped together after each backward pass
        built = call_task(self.task.build_optimizer, self.model, self.params, run=context)
        self.optimizer = several(built)
        build_scheduler = getattr(self.task, "build_scheduler", None)
        # the task's schedulers are built on its own optimizers (as it returned them)
        scheduler = call_task(build_scheduler, built, self.params, run=context) if build_scheduler else None
        self.scheduler = several(scheduler) if scheduler is not None else None
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
        items = list(self.scheduler.items.values()) if isinstance(self.scheduler, Several) else [self.scheduler]
        self._per_step = [s for s in items if s is not None and not isinstance(s, plateau)]
        self._on_metric = [s for s in items if isinstance(s, plateau)]

    def all_finite(self) -> bool:
        """Whether every parameter is finite (checked before each save; one host sync)."""
        return all_finite(self.model.parameters())

    isolated_rng = staticmethod(isolated_rng)

    def _batch(self, indices: np.ndarray):
        if self._tensors is not None:
            idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
            batch = [t[idx] for t in self._tensors]
        else:
            batch = torch.utils.data.default_collate([self.dataset[int(i)] for i in indices])
        return self._to_device(batch)

    def batches(self, order, start: int, end: int):
        """The batches of global steps ``start`` to ``end - 1``, in order.

        Tensor datasets are indexed on the training thread. A map-style Dataset with
        ``num_workers`` > 0 goes through a DataLoader: workers fetch and collate ahead (pinned
        memory and non-blocking copies on a GPU), and every item is fetched with the random
        streams seeded by (seed, step, position in the batch), so augmentation in workers gives the
        same batch whichever worker fetches it, and a resume at any step is exact. Without
        workers the items draw from the training process's streams, which every checkpoint holds.
        """
        if self._tensors is not None or self.num_workers == 0:
            for step in range(start, end):
                yield order.batch(step)
            return
        pin = self.device.type == "cuda"
        for batch in step_loader(self.dataset, order, start, end, self.seed, self.num_workers, pin_memory=pin):
            yield _Prepared(self._to_device(batch, non_blocking=pin))

    @property
    def steps_on_metric(self) -> bool:
        """Whether a scheduler steps on a metric (ReduceLROnPlateau) after each evaluation
        instead of after each step."""
        return bool(self._on_metric)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, indices: np.ndarray) -> dict:
        """One optimizer step on the samples ``indices`` (``accumulate`` micro-batches of equal size);
        returns loss, lr and the task's metrics as tensors: reading them as numbers waits for the
        device, so the caller does that only on the steps it logs (``as_numbers``)."""
        if not all(m.training for m in self._all_modules):  # model.train() costs 0.1-0.2 ms on a small CNN
            self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        if isinstance(indices, _Prepared):
            parts = _split(indices.batch, self.accumulate)
        elif self.accumulate == 1:
            parts = [self._batch(indices)]
        else:
            parts = [self._batch(part) for part in np.array_split(np.asarray(indices), self.accumulate)]
        total, sums = None, {}
        for part in parts:
            with self._autocast():
                out = self.task.compute_loss(self.model, part)
            loss, metrics = (out if isinstance(out, tuple) else (out, {}))
            scaled = loss / self.accumulate if self.accumulate > 1 else loss
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total = scaled.detach() if total is None else total + scaled.detach()
            for k, v in metrics.items():
                # a number stays a number (a tensor of it costs ~40 us a step); a tensor is detached
                v = v.detach() if torch.is_tensor(v) else v
                v = v / self.accumulate if self.accumulate > 1 else v
                sums[k] = v if k not in sums else sums[k] + v
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when a gradient is inf/nan; the scale drops
            self.scaler.update()
        else:
            self.optimizer.step()
        for scheduler in self._per_step:
            scheduler.step()
        return {"loss": total, "lr": lr, **sums}

    as_numbers = staticmethod(as_numbers)  # train_step's row as floats (one device synchronisation)

    def after_evaluation(self, metrics: dict, monitor: str) -> None:
        """Step a metric-driven scheduler (ReduceLROnPlateau) on the monitored value."""
        if monitor in metrics:
            for scheduler in self._on_metric:
                scheduler.step(metrics[monitor])

    @property
    def has_validation_data(self) -> bool:
        return hasattr(self.task, "build_validation")

    def evaluate(self, indices: np.ndarray | None, batch_size: int) -> dict:
        """Mean loss and task metrics over the validation samples (``indices`` into the training
        dataset, or the task's own build_validation data when ``indices`` is None)."""
        if indices is None:
            if not hasattr(self, "_val"):
                data = self.task.build_validation(self.params)
                self._val = [torch.as_tensor(t) for t in data] if isinstance(data, (tuple, list)) else data
            val = self._val
            n = len(val[0]) if isinstance(val, list) else len(val)

            def batch(lo, hi):
                if isinstance(val, list):
                    return [t[lo:hi].to(self.device) for t in val]
                return self._to_device(torch.utils.data.default_collate([val[i] for i in range(lo, hi)]))
        else:
            n = len(indices)

            def batch(lo, hi):
                return self._batch(indices[lo:hi])

        was_training = self.model.training
        self.model.eval()
        totals: dict[str, float] = {}
        with torch.no_grad():
            for lo in range(0, n, batch_size):
                hi = min(lo + batch_size, n)
                with self._autocast():
                    out = self.task.compute_loss(self.model, batch(lo, hi))
                loss, metrics = (out if isinstance(out, tuple) else (out, {}))
                for k, v in {"loss": float(loss), **{k: float(v) for k, v in metrics.items()}}.items():
                    totals[k] = totals.get(k, 0.0) + v * (hi - lo)
        self.model.train(was_training)
        return {f"val_{k}": v / n for k, v in totals.items()}

    def _to_device(self, batch, non_blocking: bool = False):
        """Move every tensor of a batch (tensors, lists, tuples, dicts, nested) to the device."""
        if self.device.type == "cpu":
            return batch  # a Dataset's tensors are on the CPU; walking the batch costs ~30 us a step
        if torch.is_tensor(batch):
            return batch.to(self.device, non_blocking=non_blocking)
        if isinstance(batch, dict):
            return {k: self._to_device(v, non_blocking) for k, v in batch.items()}
        if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
            return type(batch)(*(self._to_device(v, non_blocking) for v in batch))
        if isinstance(batch, (list, tuple)):
            return [self._to_device(v, non_blocking) for v in batch]
        return batch

    @property
    def checkpointed(self) -> TorchState:
        """What a checkpoint holds: the model, optimizer, scheduler and grad scaler (those the run
        has), in the one PyTorch state format."""
        if not hasattr(self, "_tracked"):
            self._tracked = TorchState({"model": self.model, "optimizer": self.optimizer,
                                        "scheduler": self.scheduler, "scaler": self.scaler}, owner="the task")
        return self._tracked

    def write_state(self, folder: Path, extra: dict) -> None:
        """Write the full training state into ``folder`` (one ``state.pt``)."""
        self.checkpointed.write_state(folder, extra)

    def snapshot(self, extra: dict) -> "TorchSnapshot":
        """Copy the full state into this job's host buffers; ``.write(folder)`` writes ``state.pt``."""
        return self.checkpointed.snapshot(extra)

    verified_reads = TorchState.verified_reads

    def read_state(self, folder: Path) -> dict:
        """Restore everything written by ``write_state``; returns its ``extra``."""
        return self.checkpointed.read_state(folder)

    EXPORTS = ("pt", "safetensors")

    @staticmethod
    def export(run: dict, folder: Path, out: dict) -> None:
        """Write a checkpoint's weights as a plain ``state_dict`` file (``out['pt']``) and as
        safetensors (``out['safetensors']``) for sharing; both load on a CPU-only machine."""
        from safetensors.torch import load_file, save_file

        folder = Path(folder)
        if (folder / STATE_FILE).exists():
            weights = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)["model"]
        elif (folder / "lightning.ckpt").exists():  # a Lightning script's checkpoint (segtrain.lightning)
            weights = torch.load(folder / "lightning.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        else:  # a Hugging Face Trainer's checkpoint (segtrain.huggingface)
            weights = load_file(str(folder / "model.safetensors"))
        torch.save(weights, out["pt"])

        save_file({k: v.contiguous() for k, v in weights.items()}, str(out["safetensors"]))
