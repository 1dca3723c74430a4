"""A Keras `model.fit` script, brought to the pipeline by one changed call (marked "segtrain").

Run by the pipeline with ``framework: keras`` and ``script: examples/digits_cnn_keras_fit.py``;
alone, ``python examples/digits_cnn_keras_fit.py --steps 200`` trains without checkpoints.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import segtrain.keras  # noqa: E402  segtrain

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.003)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--steps", type=int, default=None, help="steps when run alone (the pipeline's config sets them)")
args = p.parse_args()

digits = load_digits()
x = (digits.images[..., None] / 16.0).astype("float32")  # N x 8 x 8 x 1
y = digits.target

model = keras.Sequential([
    keras.Input((8, 8, 1)),
    keras.layers.RandomTranslation(0.125, 0.125, fill_mode="constant"),  # augmentation: a seeded layer
    keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
    keras.layers.MaxPooling2D(),
    keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
    keras.layers.Flatten(),
    keras.layers.Dropout(0.3),
    keras.layers.Dense(10),
])
schedule = keras.optimizers.schedules.ExponentialDecay(args.lr, decay_steps=500, decay_rate=0.5)
model.compile(keras.optimizers.Adam(schedule), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])

segtrain.session(total_steps=args.steps)  # segtrain: alone, how long to train
# segtrain: was model.fit(x[:1500], y[:1500], batch_size=..., epochs=..., validation_data=...)
segtrain.keras.fit(model, x[:1500], y[:1500], batch_size=args.batch_size, validation_data=(x[1500:], y[1500:]),
                   callbacks=[keras.callbacks.TerminateOnNaN()])
