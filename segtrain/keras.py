"""Keep ``model.fit`` and your callbacks: ``segtrain.keras.fit`` in place of ``model.fit``.

In a run with ``script: train.py`` and ``framework: keras``::

    import segtrain.keras

    model.compile(optimizer, loss, metrics=[...])
    segtrain.keras.fit(model, x, y, batch_size=64, epochs=15, validation_split=0.1,   # was: model.fit(...)
                       sample_weight=w, class_weight={0: 1.0, 1: 3.0}, callbacks=[...])

It runs ``model.fit`` epoch by epoch (a resumed epoch from where the checkpoint left it) on the
batches of the pipeline's seeded order, and hands every step to the job: saves at the planned
interval, evaluation at ``eval_every``, the deadline stop and the stop signals, the metrics log.
``x``, ``y`` and ``sample_weight`` are arrays, or dicts or lists of arrays (multi-input models),
sliced along their first axis. A resume is bitwise identical to an uninterrupted run.

``model.fit``'s arguments, honoured: ``batch_size``, ``epochs`` (the run's length: epochs x
steps per epoch must equal the config's ``total_steps``, or the measure job says the number to
set; alone, they are the length), ``validation_split`` (Keras's rule: the last fraction of the
samples, before shuffling), ``validation_data`` (it wins over the split, as in Keras),
``validation_batch_size``, ``shuffle`` (True: every epoch shuffled by the run's seed; False: the
samples' order), ``class_weight`` (times ``sample_weight``), ``sample_weight``, ``callbacks``,
``verbose``. Refused with the reason: ``initial_epoch`` other than 0 (the pipeline resumes),
``steps_per_epoch``, ``validation_steps``, ``validation_freq`` other than 1 (evaluations follow
``eval_every``), ``shuffle="batch"``.

Limits, said here and at run time: each epoch drops its last partial batch (Keras trains it);
one step per execution (compile with the default ``steps_per_execution=1``); your callbacks see
the true epoch numbers, but their own counters (an EarlyStopping's patience, a ReduceLROnPlateau's
wait) start afresh in every job; the logged training loss and metrics are fit's running means
since the start of the epoch or of the job, whichever is later (the weights do not depend on
them); it returns nothing (no History: the metrics are in the run's log).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def _take(data, idx):
    if data is None:
        return None
    if isinstance(data, dict):
        return {k: _take(v, idx) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(_take(v, idx) for v in data)
    return np.asarray(data)[idx]


def _num_samples(data) -> int:
    if isinstance(data, dict):
        return _num_samples(next(iter(data.values())))
    if isinstance(data, (list, tuple)):
        return _num_samples(data[0])
    return len(data)


class _StepBatches(keras.utils.PyDataset):
    """The batches of global steps ``start`` to ``start + count - 1`` of the seeded order."""

    def __init__(self, arrays, order, start: int, count: int):
        super().__init__()
        self.arrays, self.order, self.start, self.count = arrays, order, start, count

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        idx = self.order.batch(self.start + i)
        return tuple(_take(a, idx) for a in self.arrays if a is not None)


class _Driver(keras.callbacks.Callback):
    """Hands each finished step to the job (``advance``) and ends ``fit`` when the job is done."""

    def __init__(self, advance, before=None):
        super().__init__()
        self.advance, self.before, self.done = advance, before, False

    def on_train_batch_begin(self, batch, logs=None):
        if self.before is not None:
            self.before()

    def on_train_batch_end(self, batch, logs=None):
        if self.advance(logs or {}):
            self.done = True
            self.model.stop_training = True


def _split(data, at: int):
    """``data`` (an array, or dicts or lists of arrays) cut at sample ``at``: (before, from)."""
    if data is None:
        return None, None
    return _take(data, np.arange(at)), _take(data, np.arange(at, _num_samples(data)))


def _class_weighted(y, sample_weight, class_weight: dict):
    """Per-sample weights from ``class_weight`` ({class: weight}), times ``sample_weight`` as
    Keras does; the classes are the labels (integers, or the argmax of one-hot rows)."""
    if isinstance(y, (dict, list, tuple)):
        raise ValueError("segtrain.keras.fit: class_weight needs one array of labels y (Keras's own rule for a model "
                         "with several outputs: give sample_weight instead)")
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)
    labels = labels.reshape(len(labels)).astype(np.int64)
    missing = sorted(set(np.unique(labels).tolist()) - set(class_weight))
    if missing:
        raise ValueError(f"segtrain.keras.fit: class_weight has no weight for class(es) {missing}")
    weights = np.array([class_weight[c] for c in labels], dtype=np.float32)
    return weights if sample_weight is None else weights * np.asarray(sample_weight, dtype=np.float32)


def _refuse(**given):
    for name, (value, default, why) in given.items():
        if value is not default and value != default:
            raise ValueError(f"segtrain.keras.fit: {name}={value!r}: {why}")


def fit(model, x, y=None, batch_size: int | None = None, epochs: int | None = None, verbose="auto", callbacks=None,
        validation_split: float = 0.0, validation_data=None, shuffle=True, class_weight=None, sample_weight=None,
        initial_epoch: int = 0, steps_per_epoch=None, validation_steps=None, validation_batch_size=None,
        validation_freq: int = 1):
    """``model.fit`` for a pipeline job, with ``model.fit``'s arguments (see the module's text);
    returns nothing: the run's metrics are in its metrics log, its report and TensorBoard files."""
    from . import script as script_mod
    from .backends.keras_backend import KerasState
    from .data import DataOrder

    if not model.compiled:
        raise RuntimeError("segtrain.keras.fit: compile the model first (model.compile(optimizer, loss, ...))")
    if getattr(model, "steps_per_execution", 1) not in (1, None):
        raise ValueError(f"segtrain.keras.fit: the model is compiled with steps_per_execution="
                         f"{model.steps_per_execution}; a checkpoint must see every step: compile with "
                         "steps_per_execution=1 (the default); several steps per call are not built for fit yet")
    _refuse(initial_epoch=(initial_epoch, 0, "the pipeline resumes the run itself, at the exact step: remove it"),
            steps_per_epoch=(steps_per_epoch, None, "an epoch is every sample once (the last partial batch "
                             "dropped): remove it, and set the run's length with epochs or total_steps"),
            validation_steps=(validation_steps, None, "the validation data is evaluated whole: remove it"),
            validation_freq=(validation_freq, 1, "evaluations follow the run's eval_every (config): remove it"))
    if shuffle not in (True, False):
        raise ValueError(f"segtrain.keras.fit: shuffle={shuffle!r}: the pipeline shuffles every epoch by the run's "
                         "seed (True) or keeps the samples' order (False)")
    if validation_data is None and validation_split:
        if not 0 < validation_split < 1:
            raise ValueError(f"segtrain.keras.fit: validation_split={validation_split}: give a fraction in (0, 1)")
        at = int(np.floor(_num_samples(x) * (1.0 - validation_split)))  # Keras's rule: the last samples, unshuffled
        (x, vx), (y, vy), (sample_weight, vw) = _split(x, at), _split(y, at), _split(sample_weight, at)
        validation_data = (vx, vy) if vw is None else (vx, vy, vw)
    if class_weight is not None:
        sample_weight = _class_weighted(y, sample_weight, class_weight)
    batch_size = batch_size or 32
    order = DataOrder(_num_samples(x), batch_size, 0, shuffle=bool(shuffle))
    planned = None if epochs is None else epochs * order.steps_per_epoch
    seg = script_mod._ACTIVE or script_mod._STANDALONE or script_mod.session(total_steps=planned or order.steps_per_epoch)
    if planned is not None and (seg._job is not None or seg.measuring) and planned != seg.total_steps:
        raise ValueError(
            f"segtrain.keras.fit: epochs={epochs} trains {epochs} x {order.steps_per_epoch} = {planned} steps "
            f"({_num_samples(x)} samples in batches of {batch_size}, the last partial batch dropped), and the run's "
            f"total_steps is {seg.total_steps}: set total_steps: {planned} in the config, or remove epochs")
    order = DataOrder(_num_samples(x), batch_size, seg.seed, shuffle=bool(shuffle))
    arrays = (x, y, sample_weight)
    if not model.built:
        model(_take(x, np.arange(1)))
    state = KerasState(model)
    evaluate = None
    if validation_data is not None:
        vx, vy, *vw = validation_data

        def evaluate():
            logs = model.evaluate(vx, vy, sample_weight=vw[0] if vw else None,
                                  batch_size=validation_batch_size or batch_size, verbose=0, return_dict=True)
            return {f"val_{k}": float(v) for k, v in logs.items()}

    verbose = 0 if verbose == "auto" else verbose
    user_callbacks = list(callbacks or [])
    if seg.exporting:
        seg._export_keras(state, model)
    if seg.measuring:
        _measure(seg, model, state, arrays, order, evaluate, user_callbacks, verbose)
    if seg._job is None:  # alone, outside the pipeline
        model.fit(_StepBatches(arrays, order, 0, seg.total_steps), epochs=1, callbacks=user_callbacks,
                  verbose=verbose or 2)
        return
    job = seg._job
    job.restore_once(state)
    job.order = order
    if user_callbacks and job.step > 0:
        import logging

        logging.getLogger(__name__).warning(
            "resuming at step %d: your callbacks see the true epoch numbers, but their own counters (patience, "
            "wait, best) start afresh in this job", job.step)
    steps = job.steps(state, evaluate=evaluate)
    try:
        next(steps)
    except StopIteration:
        return

    def before():
        job.log({"lr": model.optimizer.learning_rate})

    def advance(logs):
        job.log(logs)
        try:
            next(steps)
        except StopIteration:
            return True
        return False

    driver = _Driver(advance, before)
    while not driver.done:
        step = job.step
        epoch = step // order.steps_per_epoch
        count = min(order.steps_per_epoch - step % order.steps_per_epoch, job.segment.end - step)
        model.fit(_StepBatches(arrays, order, step, count), initial_epoch=epoch, epochs=epoch + 1,
                  callbacks=[driver, *user_callbacks], verbose=verbose, shuffle=False)
        if job.step != step + count and not driver.done:
            raise RuntimeError(f"model.fit ended at step {job.step}, before step {step + count}: a callback "
                               "stopped training (e.g. EarlyStopping); the run's length is total_steps")


def _measure(seg, model, state, arrays, order, evaluate, callbacks, verbose):
    """A measure job: time steps, evaluations and saves; write the costs; end the script."""
    from .measure import StepMarks

    marks = StepMarks(seg.run)
    names: set = {"lr"}

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            names.update((logs or {}).keys())
            marks.mark()

    model.fit(_StepBatches(arrays, order, 0, marks.count), epochs=1, callbacks=[Timer(), *callbacks],
              verbose=verbose, shuffle=False)
    seg._finish_measure(state, marks.step_times(), names, evaluate, order.steps_per_epoch, "segtrain", marks.startup)
