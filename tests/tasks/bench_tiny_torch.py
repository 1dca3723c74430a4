"""The benchmark's tiny model, whose step costs next to nothing: the loop's own cost shows (tests/bench_train.py)."""
import torch
from torch import nn


def build_dataset(params):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 4, generator=g)
    return x, (x[:, 0] > 0).long()


def build_model(params):
    return nn.Linear(4, 2)


def build_optimizer(model, params):
    return torch.optim.SGD(model.parameters(), lr=0.01)


def compute_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
