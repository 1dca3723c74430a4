"""The data order: a pure function of (seed, epoch) and the global step.

Owning the order is what makes a mid-epoch resume exact: the batch of any step can be recomputed
from the seed alone, so a resumed segment neither replays nor skips samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Position:
    """Where step ``step`` starts reading: ``epoch`` and ``index`` into that epoch's permutation."""

    epoch: int
    index: int

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}


def validation_split(num_samples: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) sample indices; the same for every job of a run."""
    perm = np.random.default_rng([seed, 7_777]).permutation(num_samples)
    n_val = int(round(num_samples * fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class DataOrder:
    """Batches of sample indices for every global step; the last incomplete batch of an epoch is dropped.

    ``indices`` restricts training to those samples (the rest is held out for validation).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, indices: np.ndarray | None = None,
                 shuffle: bool = True):
        self.indices = None if indices is None else np.asarray(indices)
        self.shuffle = shuffle  # False: every epoch in the samples' own order
        if self.indices is not None:
            num_samples = len(self.indices)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_samples < batch_size:
            raise ValueError(f"the dataset has {num_samples} samples, fewer than batch_size {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = num_samples // batch_size
        self._cached_epoch = -1
        self._perm = None

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._cached_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples) if self.shuffle \
                else np.arange(self.num_samples)
            self._cached_epoch = epoch
        return self._perm

    def _where(self, step: int) -> tuple[int, int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        return epoch, k * self.batch_size

    def position(self, step: int) -> Position:
        """Position of the batch that global step ``step`` (0-based) trains on."""
        return Position(*self._where(step))

    def batch(self, step: int) -> np.ndarray:
        epoch, lo = self._where(step)  # no Position object: this runs every step
        picked = self.permutation(epoch)[lo : lo + self.batch_size]
        return picked if self.indices is None else self.indices[picked]
