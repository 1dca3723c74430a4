"""A Keras task's data: (x, y) or (x, y, sample_weight), and nothing is cut off silently."""

import pytest

pytest.importorskip("tensorflow")

from segtrain.backends.keras_backend import Backend  # noqa: E402
from segtrain.data import DataOrder  # noqa: E402

TASK = '''
import numpy as np, keras
WEIGHTED = {weighted}
def build_dataset(p):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    return (x, y, np.where(y == 1, 5.0, 0.5).astype("float32")) if WEIGHTED else (x, y)
def build_model(p):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    m.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m
'''


def first_loss(tmp_path, weighted):
    task = tmp_path / f"task_{weighted}.py"
    task.write_text(TASK.format(weighted=weighted))
    backend = Backend(str(task), {}, 0)
    backend.build()
    return backend.as_numbers(backend.train_step(DataOrder(64, 16, 0).batch(0)))["loss"]


def test_a_third_array_is_the_sample_weight(tmp_path):
    assert first_loss(tmp_path, True) != pytest.approx(first_loss(tmp_path, False))


def test_more_arrays_are_refused_with_the_way_to_bring_them(tmp_path):
    task = tmp_path / "task.py"
    task.write_text("import numpy as np\ndef build_dataset(p):\n    return [np.zeros((8, 2))] * 4\n"
                    "def build_model(p):\n    pass\n")
    with pytest.raises(ValueError, match=r"\(x, y\) or \(x, y, sample_weight\).*segtrain.keras.fit"):
        Backend(str(task), {}, 0)


def test_a_state_of_every_dtype_round_trips_and_trains_on_like_the_original(tmp_path):
    """KerasState reads variables through DLPack views and hands loaded arrays to TensorFlow the
    same way (bfloat16, which DLPack cannot carry, through NumPy): every value comes back, a
    snapshot keeps its values when training goes on, and a restored model's next step equals the
    original's."""
    import keras
    import numpy as np

    from segtrain.backends.keras_backend import KerasState
    from segtrain.store import CheckpointStore

    class Odd(keras.layers.Layer):
        def build(self, shape):
            self.scale = self.add_weight(shape=(shape[-1],), initializer="ones", dtype="bfloat16", trainable=False)
            self.count = self.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False)
            self.flag = self.add_weight(shape=(3,), initializer="zeros", dtype="bool", trainable=False)

        def call(self, x):
            return x * keras.ops.cast(self.scale, x.dtype)

    def build():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), Odd(), keras.layers.Dense(3), keras.layers.Dropout(0.5)])
        model.compile(keras.optimizers.Adam(0.1), "mse")
        return model

    x, y = np.random.default_rng(0).normal(size=(2, 8, 4)).astype("float32")
    model = build()
    model.train_on_batch(x, y[:, :3])
    model.layers[0].count.assign(7)
    model.layers[0].flag.assign([True, False, True])
    state = KerasState(model)
    snap = state.snapshot({"step": 1})
    saved = [v.numpy().copy() for v in model.variables + model.optimizer.variables]
    ck = CheckpointStore(tmp_path / "s").save(1, snap.write)
    model.train_on_batch(x, y[:, :3])  # the snapshot was copied out before this step
    assert not all(np.array_equal(a, v.numpy()) for a, v in zip(saved, model.variables))
    assert all(np.array_equal(a, b) for a, b in zip(saved, snap.arrays.values()))

    restored = build()
    restored_state = KerasState(restored)
    assert restored_state.read_state(ck.path) == {"step": 1}
    for a, v in zip(saved, restored.variables + restored.optimizer.variables):
        assert a.dtype == v.numpy().dtype and np.array_equal(a, v.numpy())
    restored.train_on_batch(x, y[:, :3])
    for a, b in zip(model.variables + model.optimizer.variables, restored.variables + restored.optimizer.variables):
        assert np.array_equal(a.numpy(), b.numpy())


def test_steps_grouped_into_one_graph_call_train_exactly_as_one_call_each(tmp_path):
    """The pipeline trains the steps between two saves in one graph call (as fit's
    steps_per_execution does). Dropout draws, the learning-rate schedule, the optimizer and the
    metrics go on exactly as in one call per step: the same losses, rates and accuracies at every
    step, and bitwise the same variables, however the steps are grouped."""

    from conftest import REPO

    task = str(REPO / "examples" / "digits_cnn_keras.py")

    def train(groups):
        backend = Backend(task, {"lr_step": 20}, 0)  # the rate halves every 20 steps: inside calls
        backend.build()
        order, step, rows = DataOrder(backend.num_samples, 32, 0), 0, []
        for count in groups:
            batches = [order.batch(step + i) for i in range(count)]
            rows += [backend.as_numbers(r) for r in backend.train_steps(batches)]
            step += count
        model = backend.model
        return rows, [v.numpy() for v in model.variables + model.optimizer.variables]

    one_rows, one_vars = train([1] * 90)
    many_rows, many_vars = train([1, 5, 32, 7, 25, 20])
    assert len(many_rows) == 90 and many_rows == one_rows
    assert len({r["lr"] for r in one_rows}) == 5  # the schedule stepped inside the calls
    assert all(a.tobytes() == b.tobytes() for a, b in zip(one_vars, many_vars))


def test_one_call_trains_up_to_the_next_save_or_evaluation_and_about_a_second(tmp_path):
    """free_steps: a call never runs past a step that saves, evaluates or ends the segment or the
    run, nor past the step budget, nor (at the last call's pace) much past a second."""
    from segtrain import runner
    from segtrain.config import resolve
    from segtrain.planning import Segment

    from conftest import KMLP, REPO

    run = resolve({"runs": {"r": {**KMLP, "total_steps": 1000}}}, base=REPO)["r"]
    seg = Segment(index=0, start=0, end=500, interval=50, time_limit=3600, save_seconds=0.01, eval_every=70)
    job = runner.SegmentJob(run, seg, runner.RunPaths(tmp_path), None, tmp_path / "out")
    assert job.free_steps(32) == 1  # the pace is not known before the first call
    job._call_seconds, job._call_steps = 0.001, 1
    for done, limit, expected in [(0, 32, 32), (40, 32, 10), (50, 32, 20), (63, 32, 7), (130, 8, 8),
                                  (490, 32, 10), (499, 32, 1)]:
        job.step = done
        job._call_seconds, job._call_steps = 0.001, 1
        assert job.free_steps(limit) == expected, (done, limit)
    job.step, job._call_seconds, job._call_steps = 0, 0.25, 10  # 25 ms a step: 40 steps in a second
    assert job.free_steps(100) == 40
    job.step, job._call_seconds, job._call_steps = 0, 3.0, 1  # a step longer than a second: one at a time
    assert job.free_steps(32) == 1


def test_fit_takes_model_fits_arguments_or_refuses_them_with_the_reason():
    import keras
    import numpy as np

    import segtrain.keras as skf

    # class_weight: one weight per label (one-hot rows too), times the sample weights
    w = skf._class_weighted(np.array([0, 1, 1]), np.array([1.0, 2.0, 3.0]), {0: 0.5, 1: 2.0})
    assert w.tolist() == [0.5, 4.0, 6.0]
    assert skf._class_weighted(np.eye(2)[[1, 0]], None, {0: 1.0, 1: 3.0}).tolist() == [3.0, 1.0]
    with pytest.raises(ValueError, match=r"no weight for class\(es\) \[2\]"):
        skf._class_weighted(np.array([0, 2]), None, {0: 1.0})
    # validation_split: Keras's cut, the last samples
    (a, b) = skf._split({"p": np.arange(10)}, 9)
    assert a["p"].tolist() == list(range(9)) and b["p"].tolist() == [9]

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    x = np.zeros((8, 2), "float32")
    for kwargs, why in [({"initial_epoch": 2}, "the pipeline resumes"), ({"steps_per_epoch": 3}, "every sample once"),
                        ({"validation_freq": 2}, "eval_every"), ({"shuffle": "batch"}, "run's seed"),
                        ({"validation_split": 1.5}, r"fraction in \(0, 1\)")]:
        with pytest.raises(ValueError, match=why):
            skf.fit(model, x, x, **kwargs)

    # in a measure job (before any training job): epochs that disagree with total_steps, named
    from segtrain import script
    from segtrain.settings import RunSettings

    script._ACTIVE = script.Session(RunSettings(name="r", total_steps=400), measure=("unused", "unused"))
    try:
        with pytest.raises(ValueError, match=r"epochs=6 trains 6 x 4 = 24 steps \(8 samples in batches of 2, the "
                                             r"last partial batch dropped\), and the run's total_steps is 400: set "
                                             r"total_steps: 24 in the config"):
            skf.fit(model, x, x, batch_size=2, epochs=6)
    finally:
        script._ACTIVE = None
