"""Test task: a digits MLP (PyTorch) with dropout and a pause of params['pause'] s in every step.

The pause makes a segment outlast a walltime; it touches no numbers, so a run with pause 0 is the
exact reference for a run with a pause. SLOW_TASK_PAUSE in the environment overrides it, so a test
can measure fast and train slowly (a machine that got slower after planning).
"""

import os
import time

import torch
from sklearn.datasets import load_digits
from torch import nn


def build_dataset(params):
    digits = load_digits()
    return torch.tensor(digits.data, dtype=torch.float32) / 16.0, torch.tensor(digits.target)


def build_model(params):
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    # a plain attribute: not part of the state
    model.pause = float(os.environ.get("SLOW_TASK_PAUSE", params.get("pause", 0.0)))
    return model


def build_optimizer(model, params):
    return torch.optim.Adam(model.parameters(), lr=0.003)


def compute_loss(model, batch):
    time.sleep(model.pause)
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
