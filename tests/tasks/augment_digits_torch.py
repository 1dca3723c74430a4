"""Test task: a map-style Dataset that augments with the global RNGs (torch and Python), BatchNorm,
dropout, AdamW and clipping, and no build_validation: the pipeline holds out a split, read
through the same augmenting Dataset. Evaluation must not draw from the training streams."""

import random

import torch
from sklearn.datasets import load_digits
from torch import nn


class Augmented(torch.utils.data.Dataset):
    def __init__(self):
        digits = load_digits()
        self.x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        self.y = torch.tensor(digits.target)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i] + 0.05 * torch.randn(64)  # the global torch RNG
        if random.random() < 0.5:  # and Python's
            x = x.view(8, 8).flip(1).reshape(64)
        return x, self.y[i]


class Clipped(torch.optim.AdamW):
    def step(self, closure=None):
        for group in self.param_groups:
            torch.nn.utils.clip_grad_norm_(group["params"], 1.0)
        return super().step(closure)


def build_dataset(params):
    return Augmented()


def build_model(params):
    return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))


def build_optimizer(model, params):
    return Clipped(model.parameters(), lr=0.01)


def compute_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
