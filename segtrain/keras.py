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

The logged training loss and metrics are fit's running means since the epoch began, in a
resumed job too (the checkpoint keeps them; an evaluation between epochs does not reset them).
A model compiled with ``steps_per_execution=N`` trains N steps per graph call, as ``fit`` does: a
call also ends at each save, evaluation and segment end, and calls stay aligned to multiples of N,
so the same steps end a call in every run; fit reports a call's last step only, so the loss is
logged at the logged steps that end a call (all of them when ``log_every`` is a multiple of N), and
a stop takes effect at the end of a call. The weights do not depend on the grouping (tested).

Limits, said here and at run time: each epoch drops its last partial batch (Keras trains it);
your callbacks see the true epoch numbers, but their own counters (an EarlyStopping's patience, a
ReduceLROnPlateau's wait) start afresh in every job; it returns nothing (no History: the metrics
are in the run's log).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from .backends.keras_backend import KerasState, _host_array  # noqa: E402


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
    """Hands each finished step to the job and ends ``fit`` when the job is done. With
    ``steps_per_execution`` N, Keras reports only a call's last step: the steps before it are
    handed over unseen (no row; a call never ends past a save or an evaluation, see ``fit``)."""

    def __init__(self, job, steps, state, per_call: int):
        super().__init__()
        self.job, self.steps, self.state, self.per_call = job, steps, state, per_call
        self.done, self.begin, self.means = False, 0, None
        self.count = 0  # the steps of the fit call running

    def on_epoch_begin(self, epoch, logs=None):
        # fit reset its running means just now; a call that starts inside an epoch continues them
        if self.means is not None:
            self.state.set_means(self.means)
            self.means = None

    def on_train_batch_begin(self, batch, logs=None):
        self.begin = batch
        if self.per_call == 1:
            self.job.log({"lr": self.model.optimizer.learning_rate})

    def on_train_batch_end(self, batch, logs=None):
        logs = dict(logs or {})
        if self.per_call == 1:
            self.job.log(logs)
        else:
            # Keras numbers a call's last step as if it were full; the fit call's last one may be shorter
            last = min(batch, self.count - 1)
            self.job.log_steps([None] * (last - self.begin) + [{**logs, "lr": _rate_of_last_step(self.model)}])
        try:
            next(self.steps)
        except StopIteration:
            self.done = True
            self.model.stop_training = True


def _rate_of_last_step(model):
    """The learning rate the step just trained used (a schedule's value at the step before the
    optimizer's count; ``optimizer.learning_rate`` already gives the next step's)."""
    optimizer = model.optimizer
    rate = getattr(optimizer, "_learning_rate", None)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return rate(optimizer.iterations - 1)
    return optimizer.learning_rate


class _FitState(KerasState):
    """The model's training state and fit's running means (the loss and compiled metrics since
    the epoch began), so that a job resumed inside an epoch logs what an uninterrupted fit logs."""

    def __init__(self, model):
        super().__init__(model)
        self.restored_means = None

    def _more(self):
        variables = self.model.metrics_variables
        return ({f"fit_mean_{i:05d}": _host_array(v) for i, v in enumerate(variables)},
                {"fit_means": [[v.path, list(v.shape)] for v in variables]})

    def _read_more(self, data: dict, meta: dict) -> None:
        recorded = meta.get("fit_means")  # absent in checkpoints written before they were saved
        self.restored_means = None if recorded is None else [
            np.array(data[f"fit_mean_{i:05d}"]) for i in range(len(recorded))]

    def means(self) -> list:
        return [np.array(v.numpy()) for v in self.model.metrics_variables]

    def set_means(self, values) -> None:
        variables = self.model.metrics_variables
        if values is None:
            return
        if len(values) != len(variables) or any(tuple(v.shape) != a.shape for v, a in zip(variables, values)):
            import logging

            logging.getLogger(__name__).warning(
                "the checkpoint's running means of the loss and metrics do not fit the model's compiled metrics "
                "(%d values for %d variables): they start afresh at this step", len(values), len(variables))
            return
        for v, a in zip(variables, values):
            v.assign(a)


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
    from .data import DataOrder

    if not model.compiled:
        raise RuntimeError("segtrain.keras.fit: compile the model first (model.compile(optimizer, loss, ...))")
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
    if planned is not None or not seg.total_steps:  # Keras's default is one epoch
        chosen = 1 if epochs is None else epochs
        seg._run_length(chosen * order.steps_per_epoch,
                        f"segtrain.keras.fit: epochs={chosen} trains {chosen} x {order.steps_per_epoch} = "
                        f"{chosen * order.steps_per_epoch} steps ({_num_samples(x)} samples in batches of {batch_size}, "
                        "the last partial batch dropped)", fix="remove epochs")
    order = DataOrder(_num_samples(x), batch_size, seg.seed, shuffle=bool(shuffle))
    arrays = (x, y, sample_weight)
    if not model.built:
        model(_take(x, np.arange(1)))
    if hasattr(model, "_symbolic_build"):  # the compiled metrics now, not at the first step: their
        model._symbolic_build(data_batch=_StepBatches(arrays, order, 0, 1)[0])  # means are in every save
    state = _FitState(model)
    evaluate = None
    if validation_data is not None:
        vx, vy, *vw = validation_data

        def evaluate():
            means = state.means()  # evaluate resets the metrics; training's running means go on after it
            logs = model.evaluate(vx, vy, sample_weight=vw[0] if vw else None,
                                  batch_size=validation_batch_size or batch_size, verbose=0, return_dict=True)
            state.set_means(means)
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
    per_call = int(getattr(model, "steps_per_execution", 1) or 1)
    if per_call > 1 and job.run.log_every % per_call and seg.world.is_main:
        import logging

        logging.getLogger(__name__).warning(
            "steps_per_execution=%d: fit reports the loss at the end of each call of %d steps, so a logged step "
            "inside a call has no row (log_every %d is not a multiple of %d: set log_every: %d for a row at every "
            "logged step)", per_call, per_call, job.run.log_every, per_call, per_call * -(-job.run.log_every // per_call))
    steps = job.steps(state, evaluate=evaluate)
    try:
        next(steps)
    except StopIteration:
        return
    driver = _Driver(job, steps, state, per_call)
    spe = order.steps_per_epoch
    means = state.restored_means  # the checkpoint's: the running means at the step resumed
    while not driver.done:
        step = job.step
        epoch = step // spe
        count = min(spe - step % spe, job.segment.end - step)
        if per_call > 1:
            # A call of several steps ends at a save, an evaluation and the segment's end; and calls
            # stay aligned to multiples of steps_per_execution, so the same steps end a call (and have
            # their loss logged) in every run, whatever its segments and resumes.
            count = min(count, job.next_event() - step, per_call - step % per_call if step % per_call else count)
        driver.means, driver.count = (means if step % spe else None), count
        model.fit(_StepBatches(arrays, order, step, count), initial_epoch=epoch, epochs=epoch + 1,
                  callbacks=[driver, *user_callbacks], verbose=verbose, shuffle=False)
        if job.step != step + count and not driver.done:
            raise RuntimeError(f"model.fit ended at step {job.step}, before step {step + count}: a callback "
                               "stopped training (e.g. EarlyStopping); the run's length is total_steps")
        means = state.means()


def _measure(seg, model, state, arrays, order, evaluate, callbacks, verbose):
    """A measure job: time steps, evaluations and saves; write the costs; end the script."""
    from .measure import StepMarks

    marks = StepMarks(seg.run)
    names: set = {"lr"}
    per_call = int(getattr(model, "steps_per_execution", 1) or 1)
    # several steps per call: the first call (tracing) and whole calls after it, timed per call
    count = marks.count if per_call == 1 else per_call * (1 + -(-marks.count // per_call))

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.begin = batch

        def on_train_batch_end(self, batch, logs=None):
            names.update((logs or {}).keys())
            marks.mark(batch - self.begin + 1)

    model.fit(_StepBatches(arrays, order, 0, count), epochs=1, callbacks=[Timer(), *callbacks],
              verbose=verbose, shuffle=False)
    seg._finish_measure(state, marks.step_times(), names, evaluate, order.steps_per_epoch, "segtrain", marks.startup)
