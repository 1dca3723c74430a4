"""Test task: a digits MLP (Keras) with dropout and a pause of params['pause'] s in every step.

The pause makes a segment outlast a walltime; it touches no numbers, so a run with pause 0 is the
exact reference for a run with a pause.
"""

import time

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits


def build_dataset(params):
    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


def build_model(params):
    model = keras.Sequential([
        keras.Input(shape=(64,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.003),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train_step, pause = model.train_step, params.get("pause", 0.0)

    def slow_train_step(data):
        # a Python pause that runs at every step, also inside the compiled step function
        tf.py_function(lambda: time.sleep(pause), [], [])
        return train_step(data)

    model.train_step = slow_train_step
    return model
