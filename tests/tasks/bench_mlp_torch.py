"""The benchmark's mid-size MLP on random data (tests/bench_train.py)."""
import torch
from torch import nn


def build_dataset(params):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 512, generator=g)
    return x, (x[:, :10].sum(1) > 0).long()


def build_model(params):
    return nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 2))


def build_optimizer(model, params):
    return torch.optim.AdamW(model.parameters(), lr=1e-3)


def compute_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
