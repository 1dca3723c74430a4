"""The benchmark's data-bound task: PNG files read and decoded per item (tests/bench_train.py)."""
import os

import numpy as np
import torch
from PIL import Image
from torch import nn

ROOT = os.environ.get("SEGTRAIN_BENCH_PNG_ROOT", "")  # written by tests/bench_train.py


class PngDigits(torch.utils.data.Dataset):
    """Reads and decodes a PNG per item, then crops and flips it at random: a data-bound loader."""

    def __init__(self):
        self.labels = np.load(ROOT + "/labels.npy")

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        with Image.open(f"{ROOT}/{i:05d}.png") as im:
            im = im.convert("L").resize((224, 224))
        a = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
        top, left = torch.randint(0, 33, (2,))
        a = a[top:top + 192, left:left + 192]
        if torch.rand(()) < 0.5:
            a = a.flip(1)
        return a[::24, ::24].reshape(-1), int(self.labels[i])


def build_dataset(params):
    return PngDigits()


def build_model(params):
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def build_optimizer(model, params):
    return torch.optim.SGD(model.parameters(), lr=0.05)


def compute_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
