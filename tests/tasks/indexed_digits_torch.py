"""Test task: the digits CNN with each sample's index in the batch, logged as two numbers per step
(the mean index and the mean squared index of the samples the step trained). With several
processes the pipeline averages every logged number over their equal shares, so these are the
whole step's: the same at any number of processes exactly when the step trained the same samples."""

import torch
from sklearn.datasets import load_digits
from torch import nn


def build_dataset(params):
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    return x, y, torch.arange(len(y), dtype=torch.int64)


def build_model(params):
    channels = params.get("channels", 4)
    return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3),
                         nn.Linear(channels * 64, 10))


def build_optimizer(model, params):
    return torch.optim.Adam(model.parameters(), lr=params.get("lr", 0.003))


def compute_loss(model, batch):
    x, y, index = batch
    index = index.double()
    metrics = {"index_mean": index.mean().item(), "index_square_mean": (index**2).mean().item()}
    return nn.functional.cross_entropy(model(x), y), metrics
