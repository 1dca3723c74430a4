"""Test task: a digits MLP trained by two optimizers (AdamW for the hidden layer, SGD with
momentum for the output layer), each with its own schedule: a per-step StepLR for one, a
ReduceLROnPlateau on the monitored metric for the other."""

import torch
from sklearn.datasets import load_digits
from torch import nn


def build_dataset(params):
    digits = load_digits()
    return torch.tensor(digits.data, dtype=torch.float32) / 16.0, torch.tensor(digits.target)


def build_model(params):
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))


def build_optimizer(model, params):
    return {"hidden": torch.optim.AdamW(model[0].parameters(), lr=0.01),
            "head": torch.optim.SGD(model[3].parameters(), lr=0.3, momentum=0.9)}


def build_scheduler(optimizers, params):
    return [torch.optim.lr_scheduler.StepLR(optimizers["hidden"], step_size=30, gamma=0.5),
            torch.optim.lr_scheduler.ReduceLROnPlateau(optimizers["head"], factor=0.7, patience=0, threshold=0.5)]


def compute_loss(model, batch):
    x, y = batch
    logits = model(x)
    return nn.functional.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean()}
