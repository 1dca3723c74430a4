"""A Keras `fit` script for the tests: two named inputs, sample and class weights, dropout, a
validation split, epochs, steps_per_execution and a callback of the user's, trained through
segtrain.keras.fit. --step-sleep slows each step (through a callback) so kills land where a test
wants them."""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import segtrain.keras  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--step-sleep", type=float, default=0.0)
p.add_argument("--epochs", type=int, default=8)
p.add_argument("--steps-per-execution", type=int, default=1)
args = p.parse_args()

digits = load_digits()
pixels = (digits.data / 16.0).astype("float32")
rows = pixels.reshape(-1, 8, 8).mean(axis=2)  # a second, derived input: each row's mean
labels = digits.target.astype("int64")
weights = np.where(labels % 2 == 0, 1.0, 2.0).astype("float32")  # odd digits count twice

pix_in = keras.Input((64,), name="pixels")
row_in = keras.Input((8,), name="rows")
h = keras.layers.Concatenate()([keras.layers.Dense(32, activation="relu")(pix_in), row_in])
h = keras.layers.Dropout(0.2)(h)
model = keras.Model({"pixels": pix_in, "rows": row_in}, keras.layers.Dense(10)(h))
model.compile(keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(0.01, 100, 0.8)),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
              steps_per_execution=args.steps_per_execution)


class Epochs(keras.callbacks.Callback):
    """The user's own callback: it sees the true epoch numbers, and can slow a step."""

    def on_epoch_begin(self, epoch, logs=None):
        print(f"epoch {epoch} begins", flush=True)

    def on_train_batch_begin(self, batch, logs=None):
        self.begin = batch

    def on_train_batch_end(self, batch, logs=None):  # once per call of steps_per_execution steps
        if args.step_sleep:
            time.sleep(args.step_sleep * (batch - self.begin + 1))  # (the last call may be shorter)


# model.fit's own arguments: epochs give the run's length (8 x 50 steps of 32 of the 1617 training
# samples), validation_split holds out the last 10 %, class_weight multiplies sample_weight
segtrain.keras.fit(model, {"pixels": pixels, "rows": rows}, labels, batch_size=32, epochs=args.epochs,
                   sample_weight=weights, class_weight={c: 1.5 if c in (3, 8) else 1.0 for c in range(10)},
                   validation_split=0.1, callbacks=[Epochs()])
