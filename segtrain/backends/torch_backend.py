"""PyTorch backend: builds the task, takes steps, and turns the full training state into files.

Everything saved is tensors or plain Python values, so a checkpoint loads with
``torch.load(weights_only=True)`` and never unpickles code.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed for deterministic cuBLAS

import torch  # noqa: E402

from ..checkpointing import as_numbers  # noqa: E402
from ..settings import RunSettings  # noqa: E402
from ..taskfile import RunContext, call_task, load_task  # noqa: E402
from ..world import current as current_world  # noqa: E402
from .torch_data import _Prepared, _split, rank_share, step_loader  # noqa: E402
from .torch_sharded import SHARDED_FORMAT, ShardedTorchState, shard_model  # noqa: E402
from .torch_state import (  # noqa: E402
    Several,
    TorchSnapshot,
    TorchState,
    all_finite,
    isolated_rng,
    seed_everything,
    several,
)
from .torch_weights import exported_weights, safetensors_form  # noqa: E402

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # precision -> autocast dtype


def configure(threads: int, deterministic) -> torch.device:
    """Threads and kernel choice for a job; returns the device it trains on.

    ``deterministic`` True: deterministic kernels or an error (bitwise resumes); 'warn': a warning
    where an op has none; False: the fastest kernels."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic is not False, warn_only=deterministic == "warn")
    torch.backends.cudnn.benchmark = deterministic is False
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _Replicated(torch.nn.parallel.DistributedDataParallel):
    """DDP around the task's model that still answers for the model's own attributes (a task's
    ``compute_loss`` reads ``model.pause`` or ``model.num_classes``). Its call goes through DDP,
    which averages the gradients; a task that calls another method of the model (``model.encode``)
    bypasses that and must call the model itself."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


class Backend:
    """Trains a PyTorch task one step at a time; see README 'Bringing your training' for the interface."""

    framework = "torch"
    state_format = TorchState.state_format
    steps_per_call = 1  # one train_step call trains one step

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
        self.data_parallel = training.get("data_parallel", "ddp")
        deterministic = training.get("deterministic", True)
        self.device = configure(threads, deterministic)
        self.world = current_world()  # one process, or this rank of a data-parallel job (torchrun)
        if self.world.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
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
        # several processes: each trains its share of every global batch. DDP averages the
        # gradients (the model, optimizer and scheduler stay replicated); FSDP2 shards the
        # parameters and the optimizer's state over the processes and averages as it shards
        self.sharded = self.world.world_size > 1 and self.data_parallel == "fsdp2"
        if self.sharded:
            self._training_model = shard_model(self.model, self.world, self.device)
            self.state_format, self.verified_reads = SHARDED_FORMAT, ShardedTorchState.verified_reads
        elif self.world.world_size > 1:
            self._training_model = _Replicated(self.model,
                                               device_ids=[self.device.index] if self.device.type == "cuda" else None)
        else:
            self._training_model = self.model
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
        rank, size = self.world.rank, self.world.world_size
        if self._tensors is not None or self.num_workers == 0:
            for step in range(start, end):
                indices = order.batch(step)
                yield indices[rank_share(len(indices), rank, size)]
            return
        pin = self.device.type == "cuda"
        for batch in step_loader(self.dataset, order, start, end, self.seed, self.num_workers, pin_memory=pin,
                                 rank=rank, world_size=size):
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
                out = self.task.compute_loss(self._training_model, part)
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
        if not hasattr(self, "_tracked") and self.sharded:
            self._tracked = ShardedTorchState({"model": self.model, "optimizer": self.optimizer,
                                               "scheduler": self.scheduler, "scaler": self.scaler},
                                              owner="the task", world=self.world)
        if not hasattr(self, "_tracked"):
            self._tracked = TorchState({"model": self.model, "optimizer": self.optimizer,
                                        "scheduler": self.scheduler, "scaler": self.scaler}, owner="the task",
                                       world=self.world)
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
    def export(run: RunSettings, folder: Path, out: dict) -> None:
        """Write a checkpoint's weights as a plain ``state_dict`` file (``out['pt']``) and as
        safetensors (``out['safetensors']``) for sharing; both load on a CPU-only machine. The
        weights are read as the checkpoint's recorded ``state_format`` says."""
        from safetensors.torch import save_file

        weights = exported_weights(Path(folder))
        torch.save(weights, out["pt"])  # keeps tied weights tied (one storage under both names)
        tensors, metadata = safetensors_form(weights)
        save_file(tensors, str(out["safetensors"]), metadata=metadata)
