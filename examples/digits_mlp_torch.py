"""Example PyTorch task: a small MLP on scikit-learn's handwritten digits (8x8 images, 10 classes).

The data ships inside scikit-learn, so nothing is downloaded at run time.
"""

import torch
from sklearn.datasets import load_digits
from torch import nn


def build_dataset(params):
    """All 1,797 digits as (inputs, labels); the pipeline draws the batches in a seeded order."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    return x, y


def build_model(params):
    hidden = params.get("hidden", 64)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def build_optimizer(model, params):
    return torch.optim.SGD(model.parameters(), lr=params.get("lr", 0.1), momentum=0.9)


def compute_loss(model, batch):
    x, y = batch
    logits = model(x)
    accuracy = (logits.argmax(dim=1) == y).float().mean()
    return nn.functional.cross_entropy(logits, y), {"accuracy": accuracy.item()}
