"""Example PyTorch task: a small CNN with dropout and a learning-rate schedule on the digits.

Dropout draws from the RNG and the schedule has its own state, so an exact resume needs both.
"""

import torch
from sklearn.datasets import load_digits
from torch import nn


def build_dataset(params):
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N x 1 x 8 x 8
    y = torch.tensor(digits.target, dtype=torch.int64)
    return x, y


def build_model(params):
    channels = params.get("channels", 16)
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 4 x 4
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(params.get("dropout", 0.3)),
        nn.Linear(2 * channels * 16, 10),
    )


def build_optimizer(model, params):
    return torch.optim.Adam(model.parameters(), lr=params.get("lr", 0.003))


def build_scheduler(optimizer, params):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=params.get("lr_step", 500), gamma=0.5)


def compute_loss(model, batch):
    x, y = batch
    logits = model(x)
    accuracy = (logits.argmax(dim=1) == y).float().mean()
    return nn.functional.cross_entropy(logits, y), {"accuracy": accuracy.item()}
