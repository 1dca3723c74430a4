"""Test task: a digits MLP (PyTorch) whose learning rate drops on a plateau of the monitored metric
(ReduceLROnPlateau, which steps on a value, not per step)."""

import torch
from sklearn.datasets import load_digits
from torch import nn


def build_dataset(params):
    digits = load_digits()
    return torch.tensor(digits.data, dtype=torch.float32) / 16.0, torch.tensor(digits.target)


def build_model(params):
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))


def build_optimizer(model, params):
    return torch.optim.SGD(model.parameters(), lr=params.get("lr", 0.5), momentum=0.9)


def build_scheduler(optimizer, params):
    # patience 0 and a high threshold: the rate drops at nearly every evaluation, so a resume that
    # lost the scheduler's state would show
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.7, patience=0, threshold=0.5)


def compute_loss(model, batch):
    x, y = batch
    logits = model(x)
    return nn.functional.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean()}
