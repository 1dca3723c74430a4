"""Test task (Keras): a custom layer that draws unseeded keras.random numbers while training.

Unseeded draws come from Keras' global SeedGenerator, which is not among model.variables."""

import keras
from sklearn.datasets import load_digits


class Noise(keras.layers.Layer):
    def call(self, x, training=False):
        if training:
            return x + 0.1 * keras.random.normal(keras.ops.shape(x))  # no seed: the global generator
        return x


def build_dataset(params):
    digits = load_digits()
    return (digits.data / 16.0).astype("float32"), digits.target.astype("int64")


def build_model(params):
    model = keras.Sequential([keras.Input((64,)), Noise(), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(0.003),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model
