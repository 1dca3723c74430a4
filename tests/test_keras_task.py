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
