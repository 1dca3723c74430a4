"""Test task: OneCycleLR, which must know the run's length: build_scheduler takes the run context."""

import torch
from sklearn.datasets import load_digits
from torch import nn


def build_dataset(params):
    digits = load_digits()
    return torch.tensor(digits.data, dtype=torch.float32) / 16.0, torch.tensor(digits.target)


def build_model(params):
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def build_optimizer(model, params):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def build_scheduler(optimizer, params, run):
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=run.total_steps)


def compute_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
