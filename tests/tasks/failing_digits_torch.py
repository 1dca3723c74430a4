"""Test task: a digits MLP (PyTorch) whose training raises at global step params['fail_at'], or,
with params['nan'] true, whose loss turns NaN there.

The step count lives in a buffer of the model, so it is saved and restored with the checkpoints:
every attempt that resumes before that step fails at it again, as a real bug would.
"""

import torch
from sklearn.datasets import load_digits
from torch import nn


class Counting(nn.Module):
    def __init__(self, fail_at, nan=False):
        super().__init__()
        self.nan = nan
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.fail_at = fail_at

    def forward(self, x):
        if self.training:
            self.steps += 1
            if int(self.steps) == self.fail_at and self.nan:
                return self.net(x) * float("nan")
            if int(self.steps) == self.fail_at:
                raise ValueError(f"the task broke at step {self.fail_at} (a deliberate test failure)")
        return self.net(x)


def build_dataset(params):
    digits = load_digits()
    return torch.tensor(digits.data, dtype=torch.float32) / 16.0, torch.tensor(digits.target)


def build_model(params):
    return Counting(params["fail_at"], params.get("nan", False))


def build_optimizer(model, params):
    return torch.optim.SGD(model.parameters(), lr=0.05)


def compute_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
