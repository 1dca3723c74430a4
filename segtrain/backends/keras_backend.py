"""Keras 3 (TensorFlow backend): builds the task, takes steps, and turns the full state into files.

Why not ``model.fit`` with ``ModelCheckpoint``/``BackupAndRestore``: those restore weights or the
epoch, not the batch, and ``tf.train.Checkpoint`` misses the Keras 3 seed-generator state that
dropout draws from. Here the state is every ``model.variables`` value (weights and seed-generator
states) and every ``optimizer.variables`` value (iteration count included), assigned back in
order; with the data order owned by the pipeline, a resume is bitwise identical.

Files are the arrays' raw bytes (``state.bin``, see ``segtrain.arrays``) and JSON: nothing is
unpickled. Arrays pass between TensorFlow and NumPy through DLPack, without TensorFlow's slow
conversion of NumPy arrays.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras.src.random.seed_generator import global_seed_generator  # noqa: E402

from ..arrays import ALIGN, read_arrays, write_arrays  # noqa: E402
from ..checkpointing import as_numbers  # noqa: E402
from ..settings import RunSettings  # noqa: E402
from ..store import IncompatibleCheckpoint, hashed_file, load_verified  # noqa: E402
from ..taskfile import RunContext, call_task, load_task  # noqa: E402

ARRAYS = "state.bin"  # every array's raw bytes, one after the other (64-byte aligned)
NPZ = "state.npz"  # the format of checkpoints written before state.bin: still read
META = "state.json"  # the RNG, extra, and each array's name, dtype, shape and offset in state.bin


def _task_arrays(data, where: str) -> list:
    """(x, y) or (x, y, sample_weight) NumPy arrays from a Keras task; anything else is refused,
    not cut silently to its first two entries."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3) or any(isinstance(a, dict) for a in data):
        raise ValueError(
            f"{where} must return (x, y) or (x, y, sample_weight) arrays; for several inputs (dicts or lists of "
            "arrays) or your own callbacks, bring a fit script: segtrain.keras.fit (README, 'Bringing your training')")
    arrays = [np.asarray(a) for a in data]
    if any(len(a) != len(arrays[0]) for a in arrays):
        raise ValueError(f"{where}: x, y (and sample_weight) hold different numbers of samples "
                         f"({', '.join(str(len(a)) for a in arrays)})")
    return arrays


def _host_array(variable) -> np.ndarray:
    """A variable's current value as a NumPy array, without a copy where TensorFlow allows it: a
    CPU tensor shared through DLPack (TensorFlow copies the buffer before a later update writes
    to it, so the array keeps the value it had). Elsewhere (a GPU, bfloat16) ``.numpy()``'s copy."""
    value = variable.value
    tensor = value.read_value() if hasattr(value, "read_value") else tf.convert_to_tensor(value)
    if tensor.device.endswith("CPU:0"):
        try:
            return np.from_dlpack(tensor)
        except (BufferError, RuntimeError, TypeError, ValueError):
            pass
    return tensor.numpy()


def _assign(variable, array: np.ndarray) -> None:
    """``variable.assign(array)`` for a fresh array nothing else will write to. An aligned array of
    the variable's dtype is handed to TensorFlow through DLPack, which takes its buffer as it is;
    converting a NumPy array costs TensorFlow a slow copy (73 ms for 67 MB here against 13 ms for
    NumPy's)."""
    if array.ctypes.data % ALIGN == 0 and array.dtype.name == str(variable.dtype) and array.flags.c_contiguous:
        try:
            variable.assign(tf.experimental.dlpack.from_dlpack(array.__dlpack__()))
            return
        except (BufferError, RuntimeError, TypeError, ValueError):
            pass  # a dtype DLPack does not carry (bfloat16)
    variable.assign(array)


class KerasSnapshot:
    """A Keras state's arrays (``state.bin``) and its JSON part (``state.json``), ready to write."""

    def __init__(self, arrays: dict, meta: dict):
        self.arrays, self.meta = arrays, meta

    def write(self, folder: Path) -> None:
        with hashed_file(folder, ARRAYS) as fh:
            index = write_arrays(fh, self.arrays)
        (Path(folder) / META).write_text(json.dumps({**self.meta, "arrays": index}))


class KerasState:
    """A compiled model's whole training state, as a checkpoint holds it: every ``model.variables``
    value (weights and seed-generator states), every ``optimizer.variables`` value (iteration count
    included), the global seed generator, Python's and NumPy's RNG. Used by the pipeline's loop and
    by ``segtrain.keras.fit``."""

    state_format = "keras"

    def __init__(self, model):
        self.model = model
        # Create the optimizer's variables now, so a restore can assign them before the first step.
        model.optimizer.build(model.trainable_variables)
        # The generator behind keras.random calls without a seed (e.g. in a custom layer): not among
        # model.variables, so it is saved on its own. Created now, in every job at the same point,
        # so its initial seed (drawn from Python's RNG) is the same for a fresh and a resumed run.
        self.global_seed = global_seed_generator()

    def all_finite(self) -> bool:
        """Whether every trainable weight is finite (checked before each save): a NaN or an
        infinity makes its array's sum non-finite (one read, no array as large as the weights);
        an array whose finite values overflow the sum is checked value by value."""
        with np.errstate(over="ignore", invalid="ignore"):
            for v in self.model.trainable_variables:
                a = _host_array(v)
                if not np.isfinite(a.sum(dtype=np.float32)) and not np.isfinite(a).all():
                    return False
        return True

    @contextlib.contextmanager
    def isolated_rng(self, seed: int):
        """Run the body (an evaluation) on RNG streams of its own and put the training streams back."""
        state = (random.getstate(), np.random.get_state(), self.global_seed.state.numpy())
        random.seed(seed)
        np.random.seed(seed % 2**32)
        self.global_seed.state.assign(np.array([seed % 2**31, 0], dtype=state[2].dtype))
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])
            self.global_seed.state.assign(state[2])

    def _variables(self):
        return list(self.model.variables), list(self.model.optimizer.variables)

    def _collect(self, extra: dict, buffers: dict | None = None) -> "KerasSnapshot":
        """The state's arrays and its JSON part; with ``buffers``, the arrays are copied into
        them (allocated at the first snapshot, reused by the next)."""
        model_vars, opt_vars = self._variables()
        arrays = {f"model_{i:05d}": _host_array(v) for i, v in enumerate(model_vars)}
        arrays.update({f"optimizer_{i:05d}": _host_array(v) for i, v in enumerate(opt_vars)})
        key, keys, pos, has_gauss, cached = np.random.get_state()
        arrays["numpy_rng_keys"] = keys
        arrays["keras_global_seed"] = self.global_seed.state.numpy()
        more_arrays, more_meta = self._more()
        arrays.update(more_arrays)
        if buffers is not None:
            for name, value in arrays.items():
                buf = buffers.get(name)
                if buf is None or buf.shape != value.shape or buf.dtype != value.dtype:
                    buf = buffers[name] = np.empty_like(value)
                np.copyto(buf, value)
                arrays[name] = buf
        version, internal, gauss = random.getstate()
        meta = {
            "extra": json.loads(json.dumps(extra)),  # a copy: the job changes its dicts later
            "model_variables": [[v.path, list(v.shape)] for v in model_vars],
            "optimizer_variables": [[v.path, list(v.shape)] for v in opt_vars],
            "python_rng": [version, list(internal), gauss],
            "numpy_rng": [key, int(pos), int(has_gauss), float(cached)],
            **more_meta,
        }
        return KerasSnapshot(arrays, meta)

    def _more(self) -> tuple[dict, dict]:
        """Arrays and JSON a subclass saves besides the variables (``_read_more`` gets them back)."""
        return {}, {}

    def _read_more(self, data: dict, meta: dict) -> None:
        """What ``_more`` saved, from a checkpoint being read."""

    def write_state(self, folder: Path, extra: dict) -> None:
        self._collect(extra).write(folder)

    def snapshot(self, extra: dict) -> "KerasSnapshot":
        """Copy every variable into this job's host buffers; ``.write(folder)`` writes the files."""
        if not hasattr(self, "_buffers"):
            self._buffers = {}
        return self._collect(extra, self._buffers)

    verified_reads = (ARRAYS, NPZ)  # read_state hashes them while they load (store.load_verified)

    def read_state(self, folder: Path) -> dict:
        meta = json.loads((Path(folder) / META).read_text())
        model_vars, opt_vars = self._variables()
        if "arrays" in meta:
            data = load_verified(folder, ARRAYS, lambda path: read_arrays(path, meta["arrays"]))
        else:  # written before state.bin
            def read_npz(path):
                with np.load(path, allow_pickle=False) as npz:
                    return {name: npz[name] for name in npz.files}
            data = load_verified(folder, NPZ, read_npz)
        for prefix, variables, recorded in (("model", model_vars, meta["model_variables"]),
                                            ("optimizer", opt_vars, meta["optimizer_variables"])):
            if len(variables) != len(recorded) or any(
                list(v.shape) != shape for v, (_, shape) in zip(variables, recorded)
            ):
                raise IncompatibleCheckpoint(
                    f"the checkpoint in {folder} does not fit the model built now "
                    f"({prefix} variables differ); the model definition changed: give the run a new name"
                )
            for i, v in enumerate(variables):
                _assign(v, data.pop(f"{prefix}_{i:05d}"))
        keys = data["numpy_rng_keys"]
        if "keras_global_seed" in data:  # absent in checkpoints of versions before it was saved
            self.global_seed.state.assign(data["keras_global_seed"])
        version, internal, gauss = meta["python_rng"]
        random.setstate((version, tuple(internal), gauss))
        key, pos, has_gauss, cached = meta["numpy_rng"]
        np.random.set_state((key, keys, pos, has_gauss, cached))
        self._read_more(data, meta)
        return meta["extra"]

    as_numbers = staticmethod(as_numbers)


def configure(threads: int, seed: int, deterministic) -> None:
    """Threads, seeds and kernels for a job, for the pipeline's loop and a script alike:
    ``threads`` for TensorFlow's pools, Python's, NumPy's and the backend's seeds from ``seed``,
    and deterministic ops unless ``deterministic`` is False (TensorFlow has no warn-only mode)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # already initialised in this process (tests build several backends)
    keras.utils.set_random_seed(seed)
    if deterministic is not False:
        tf.config.experimental.enable_op_determinism()


class Backend:
    """Trains a compiled Keras model one batch at a time; see README 'Bringing your training'."""

    framework = "keras"
    state_format = KerasState.state_format

    def __init__(self, task_path: str, params: dict, seed: int, threads: int = 1, training: dict | None = None):
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(f"KERAS_BACKEND is {keras.backend.backend()!r}; this backend needs 'tensorflow'")
        configure(threads, seed, (training or {}).get("deterministic", True))
        self.task = load_task(task_path)
        self.task_path = task_path
        self.params = dict(params)
        data = self.task.build_dataset(self.params)
        self.arrays = _task_arrays(data, f"{task_path}: build_dataset")
        self.num_samples = len(self.arrays[0])

    def build(self, context: RunContext | None = None) -> None:
        """Build and check the task's compiled model (given the run's context if it asks)."""
        self.model = call_task(self.task.build_model, self.params, run=context)
        if getattr(self.model, "optimizer", None) is None or not self.model.compiled:
            raise RuntimeError(f"{self.task_path}: build_model must return a compiled model "
                               "(model.compile(optimizer, loss))")
        if not self.model.built:
            self.model.build((None, *self.arrays[0].shape[1:]))
        self.state = KerasState(self.model)

    def all_finite(self) -> bool:
        return self.state.all_finite()

    def isolated_rng(self, seed: int):
        return self.state.isolated_rng(seed)

    def _step_function(self, data):
        """One graph call per step: reset the metrics (so the logs are this step's), read the
        learning rate this step uses, and run the model's own ``train_step``. ``train_on_batch``
        does the same in several eager calls, converts every log to a number (a device wait),
        and the rate read eagerly evaluates the schedule: both cost more than a small step."""
        model = self.model
        if getattr(self, "_step_fn", None) is None:
            model._maybe_symbolic_build(data_batch=data)  # builds the compiled loss and metrics, as fit does

            def one_step(batch):
                lr = model.optimizer.learning_rate
                for metric in model.metrics:
                    metric.reset_state()
                logs = model.train_step(batch)
                return {"loss": logs.pop("loss"), "lr": tf.cast(lr, tf.float32), **logs}

            self._step_fn = tf.function(one_step, jit_compile=bool(model.jit_compile), reduce_retracing=True)
        return self._step_fn

    def _steps_function(self, data):
        """Several steps in one graph call, as ``fit(steps_per_execution=N)`` runs them: a loop
        over the leading axis of ``data`` (one batch per step) that calls the same step function
        (compiled alone, as one step is), one iteration after the other, and stacks each step's
        logs. The variables (weights, optimizer, seed generators) change as they would in as many
        single calls, so results do not depend on how steps are grouped into calls. Traced once,
        for any number of steps (the step function once more, inside the loop)."""
        if getattr(self, "_steps_fn", None) is None:
            step, kinds = self._step_fn, self._log_dtypes

            def many_steps(batches):
                count = tf.shape(batches[0])[0]
                logs = {key: tf.TensorArray(dtype, size=count) for key, dtype in kinds.items()}

                def body(i, logs):
                    out = step(tuple(part[i] for part in batches))
                    return i + 1, {key: logs[key].write(i, out[key]) for key in logs}

                _, logs = tf.while_loop(lambda i, _: i < count, body, (tf.constant(0), logs), parallel_iterations=1)
                return {key: log.stack() for key, log in logs.items()}

            spec = tuple(tf.TensorSpec((None, *part.shape[1:]), tf.as_dtype(part.dtype)) for part in data)
            self._steps_fn = tf.function(many_steps, input_signature=[spec])
        return self._steps_fn

    def _batch(self, indices: np.ndarray) -> tuple:
        x, y, *w = (a[indices] for a in self.arrays)
        return (x, y, w[0]) if w else (x, y)

    def train_step(self, indices: np.ndarray) -> dict:
        """One step on the samples ``indices``; loss, lr and metrics come back as tensors, read as
        numbers (``as_numbers``) only on the steps that log."""
        data = self._batch(np.asarray(indices, dtype=np.int64))
        logs = self._step_function(data)(data)
        if not hasattr(self, "_log_dtypes"):
            self._log_dtypes = {key: value.dtype for key, value in logs.items()}  # what a call of several stacks
        return logs

    @property
    def steps_per_call(self) -> int:
        """Steps in one graph call at most (``SegmentJob.free_steps`` ends a call earlier at a save or
        evaluation): the model's ``steps_per_execution`` when it was compiled with one, else 32."""
        chosen = int(getattr(self.model, "steps_per_execution", 1) or 1)
        return chosen if chosen > 1 else 32

    def train_steps(self, index_batches: list) -> list[dict]:
        """The steps on the samples of each of ``index_batches`` (equal sizes), in one graph call;
        one dict of numbers per step."""
        count = len(index_batches)
        if count == 1 or len({len(b) for b in index_batches}) > 1:
            return [self.train_step(b) for b in index_batches]
        if not hasattr(self, "_log_dtypes"):  # the first step alone tells what each step logs
            return [self.train_step(index_batches[0])] + self.train_steps(index_batches[1:])
        data = tuple(part.reshape(count, -1, *part.shape[1:])
                     for part in self._batch(np.concatenate(index_batches).astype(np.int64)))
        stacked = {key: value.numpy() for key, value in self._steps_function(data)(data).items()}
        return [{key: values[i] for key, values in stacked.items()} for i in range(count)]

    @staticmethod
    def batches(order, start: int, end: int):
        for step in range(start, end):
            yield order.batch(step)

    as_numbers = staticmethod(as_numbers)

    def after_evaluation(self, metrics: dict, monitor: str) -> None:
        """Keras schedules live in the optimizer; a plateau rule is the task's callback business."""

    steps_on_metric = False

    @property
    def has_validation_data(self) -> bool:
        return hasattr(self.task, "build_validation")

    def evaluate(self, indices: np.ndarray | None, batch_size: int) -> dict:
        """Mean loss and compiled metrics over the validation samples."""
        if indices is None:
            if not hasattr(self, "_val"):
                self._val = _task_arrays(self.task.build_validation(self.params), "build_validation")
            x, y, *w = self._val
        else:
            idx = np.asarray(indices, dtype=np.int64)
            x, y, *w = (a[idx] for a in self.arrays)
        logs = self.model.evaluate(x, y, sample_weight=w[0] if w else None, batch_size=batch_size, verbose=0,
                                   return_dict=True)
        return {f"val_{k}": float(v) for k, v in logs.items()}

    def write_state(self, folder: Path, extra: dict) -> None:
        self.state.write_state(folder, extra)

    def snapshot(self, extra: dict):
        return self.state.snapshot(extra)

    verified_reads = (ARRAYS, NPZ)

    def read_state(self, folder: Path) -> dict:
        return self.state.read_state(folder)

    EXPORTS = ("keras", "weights.h5")

    @staticmethod
    def export(run: RunSettings, folder: Path, out: dict) -> None:
        """Rebuild the task's model, load the checkpoint, save it as a ``.keras`` file
        (``out['keras']``) and its weights alone (``out['weights.h5']``)."""
        from ..training import prepare_training

        backend = prepare_training(run).backend  # the task's model, built as the jobs built it
        backend.read_state(folder)
        backend.model.save(out["keras"])
        backend.model.save_weights(out["weights.h5"])
