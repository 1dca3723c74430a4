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
