"""Example Keras task: a small MLP on scikit-learn's handwritten digits (shipped, not downloaded)."""

import keras
import numpy as np
from sklearn.datasets import load_digits


def build_dataset(params):
    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


def build_model(params):
    model = keras.Sequential([
        keras.Input(shape=(64,)),
        keras.layers.Dense(params.get("hidden", 64), activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=params.get("lr", 0.1), momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model
