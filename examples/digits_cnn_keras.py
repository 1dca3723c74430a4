"""Example Keras task: a small CNN with dropout and a learning-rate schedule on the digits.

Dropout draws from a Keras seed generator and the schedule follows the optimizer's iteration
count, so an exact resume needs both (both are among the variables the pipeline saves).
"""

import keras
import numpy as np
from sklearn.datasets import load_digits


def build_dataset(params):
    digits = load_digits()
    return (digits.images[..., None] / 16.0).astype(np.float32), digits.target.astype(np.int64)


def build_model(params):
    channels = params.get("channels", 16)
    model = keras.Sequential([
        keras.Input(shape=(8, 8, 1)),
        keras.layers.Conv2D(channels, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(2 * channels, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dropout(params.get("dropout", 0.3)),
        keras.layers.Dense(10),
    ])
    schedule = keras.optimizers.schedules.ExponentialDecay(
        params.get("lr", 0.003), decay_steps=params.get("lr_step", 500), decay_rate=0.5, staircase=True
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model
