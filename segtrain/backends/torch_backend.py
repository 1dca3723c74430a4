"""PyTorch backend: builds the task, takes steps, and turns the full training state into files.

Everything saved is tensors or plain Python values, so a checkpoint loads with
``torch.load(weights_only=True)`` and never unpickles code.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import numpy as np

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed for deterministic cuBLAS

import torch  # noqa: E402

from ..store import IncompatibleCheckpoint  # noqa: E402
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


class Backend:
    """Trains a PyTorch task one step at a time; see README 'Writing a task' for the interface."""

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
        deterministic = training.get("deterministic", True)
        torch.set_num_threads(threads)
        # True: deterministic kernels or an error (bitwise resumes); 'warn': a warning where an op
        # has none; False: the fastest kernels
        torch.use_deterministic_algorithms(deterministic is not False, warn_only=deterministic == "warn")
        torch.backends.cudnn.benchmark = deterministic is False
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        # fp16 gradients underflow without loss scaling; its scale and growth tracker are state
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # seeds CUDA too
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
        self.optimizer = call_task(self.task.build_optimizer, self.model, self.params, run=context)
        build_scheduler = getattr(self.task, "build_scheduler", None)
        self.scheduler = call_task(build_scheduler, self.optimizer, self.params, run=context) if build_scheduler else None

    def all_finite(self) -> bool:
        """Whether every parameter is finite (checked before each save; one host sync)."""
        params = [p.detach() for p in self.model.parameters()]
        return bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True

    @contextlib.contextmanager
    def isolated_rng(self, seed: int):
        """Run the body (an evaluation) on RNG streams of its own, seeded by ``seed``, and put the
        training streams back afterwards: what evaluation draws never shifts training."""
        state = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                 torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])
            torch.set_rng_state(state[2])
            if state[3] is not None:
                torch.cuda.set_rng_state_all(state[3])

    def _batch(self, indices: np.ndarray):
        if self._tensors is not None:
            idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
            batch = [t[idx] for t in self._tensors]
        else:
            batch = torch.utils.data.default_collate([self.dataset[int(i)] for i in indices])
        return self._to_device(batch)

    @property
    def steps_on_metric(self) -> bool:
        """Whether the scheduler steps on a metric (ReduceLROnPlateau) after each evaluation
        instead of after each step."""
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, indices: np.ndarray) -> dict:
        """One optimizer step on the samples ``indices`` (``accumulate`` micro-batches of equal size);
        returns loss, lr and the task's metrics as tensors: reading them as numbers waits for the
        device, so the caller does that only on the steps it logs (``as_numbers``)."""
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        parts = np.array_split(np.asarray(indices), self.accumulate)
        total, sums = None, {}
        for part in parts:
            with self._autocast():
                out = self.task.compute_loss(self.model, self._batch(part))
            loss, metrics = (out if isinstance(out, tuple) else (out, {}))
            scaled = loss / self.accumulate
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total = scaled.detach() if total is None else total + scaled.detach()
            for k, v in metrics.items():
                v = torch.as_tensor(v).detach() / self.accumulate
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
        if self.scheduler is not None and not self.steps_on_metric:
            self.scheduler.step()
        return {"loss": total, "lr": lr, **sums}

    @staticmethod
    def as_numbers(row: dict) -> dict:
        """``train_step``'s row as Python floats (one device synchronisation)."""
        return {k: float(v) for k, v in row.items()}

    def after_evaluation(self, metrics: dict, monitor: str) -> None:
        """Step a metric-driven scheduler (ReduceLROnPlateau) on the monitored value."""
        if self.steps_on_metric and monitor in metrics:
            self.scheduler.step(metrics[monitor])

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

    def _to_device(self, batch):
        if isinstance(batch, (list, tuple)):
            return [b.to(self.device) if torch.is_tensor(b) else b for b in batch]
        return batch.to(self.device) if torch.is_tensor(batch) else batch

    def write_state(self, folder: Path, extra: dict) -> None:
        """Write the full training state into ``folder`` (one ``state.pt``)."""
        rng = {"python": _python_rng_state(), "numpy": _numpy_rng_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng,
            "extra": extra,
        }
        torch.save(state, Path(folder) / STATE_FILE)

    def read_state(self, folder: Path) -> dict:
        """Restore everything written by ``write_state``; returns its ``extra``."""
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise IncompatibleCheckpoint(
                f"the checkpoint in {folder} does not fit the model the task builds now ({exc}); "
                "the model definition changed: give the run a new name to start over"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        _set_python_rng_state(rng["python"])
        _set_numpy_rng_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return state["extra"]

    EXPORTS = ("pt", "safetensors")

    @staticmethod
    def export(run: dict, folder: Path, out: dict) -> None:
        """Write a checkpoint's weights as a plain ``state_dict`` file (``out['pt']``) and as
        safetensors (``out['safetensors']``) for sharing; both load on a CPU-only machine."""
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        torch.save(state["model"], out["pt"])
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state["model"].items()}, str(out["safetensors"]))
