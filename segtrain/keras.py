"""Keep ``model.fit`` and your callbacks: ``segtrain.keras.fit`` in place of ``model.fit``.

In a run with ``script: train.py`` and ``framework: keras``::

    import segtrain.keras

    model.compile(optimizer, loss, metrics=[...])
    segtrain.keras.fit(model, x, y, batch_size=64, sample_weight=w, validation_data=(xv, yv),
                       callbacks=[...])

It runs ``model.fit`` epoch by epoch (a resumed epoch from where the checkpoint left it) on the
batches of the pipeline's seeded order, and hands every step to the job: saves at the planned
interval, evaluation at ``eval_every``, the deadline stop and the stop signals, the metrics log.
``x``, ``y`` and ``sample_weight`` are arrays, or dicts or lists of arrays (multi-input models),
sliced along their first axis. A resume is bitwise identical to an uninterrupted run.

Limits, said here and at run time: one step per execution (compile with the default
``steps_per_execution=1``); your callbacks see the true epoch numbers, but their own counters (an
EarlyStopping's patience, a ReduceLROnPlateau's wait) start afresh in every job; the logged
training loss and metrics are fit's running means since the start of the epoch or of the job,
whichever is later (the weights do not depend on them).
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


def fit(model, x, y=None, *, batch_size: int = 32, sample_weight=None, validation_data=None, callbacks=None,
        verbose: int = 0):
    """``model.fit`` for a pipeline job (see the module's text); returns nothing: the run's metrics
    are in its metrics log, its report and TensorBoard files."""
    from .backends.keras_backend import KerasState
    from .data import DataOrder
    from .script import session

    seg = session()
    if not model.compiled:
        raise RuntimeError("segtrain.keras.fit: compile the model first (model.compile(optimizer, loss, ...))")
    if getattr(model, "steps_per_execution", 1) not in (1, None):
        raise ValueError(f"segtrain.keras.fit: the model is compiled with steps_per_execution="
                         f"{model.steps_per_execution}; a checkpoint must see every step: compile with "
                         "steps_per_execution=1 (the default)")
    arrays = (x, y, sample_weight)
    if not model.built:
        model(_take(x, np.arange(1)))
    state = KerasState(model)
    order = DataOrder(_num_samples(x), batch_size, seg.seed)
    evaluate = None
    if validation_data is not None:
        vx, vy, *vw = validation_data

        def evaluate():
            logs = model.evaluate(vx, vy, sample_weight=vw[0] if vw else None, batch_size=batch_size, verbose=0,
                                  return_dict=True)
            return {f"val_{k}": float(v) for k, v in logs.items()}

    user_callbacks = list(callbacks or [])
    if seg.exporting:
        seg._export_keras(state, model)
    if seg.measuring:
        _measure(seg, model, state, arrays, order, evaluate, user_callbacks, verbose)
    if seg._job is None:  # alone, outside the pipeline
        steps = seg.total_steps
        model.fit(_StepBatches(arrays, order, 0, steps), epochs=1, callbacks=user_callbacks, verbose=verbose or 2)
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
