"""Test task: the digits as a map-style Dataset without augmentation (its items draw no random
numbers), a dropout MLP, and a pause of params['pause'] s per step. Loader workers fetch it when
num_workers > 0; since fetching draws nothing, any number of workers, none included, trains the
same weights."""

import time

import torch
from sklearn.datasets import load_digits
from torch import nn


class Digits(torch.utils.data.Dataset):
    def __init__(self):
        digits = load_digits()
        self.x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        self.y = torch.tensor(digits.target)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def build_dataset(params):
    return Digits()


def build_model(params):
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    model.pause = float(params.get("pause", 0.0))  # a plain attribute: not part of the state
    return model


def build_optimizer(model, params):
    return torch.optim.Adam(model.parameters(), lr=0.003)


def compute_loss(model, batch):
    time.sleep(model.pause)
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
