"""Loader workers (num_workers): batches are a function of (seed, step) alone, whatever the number
of workers and wherever a segment starts."""

import torch

from segtrain.backends.torch_backend import Backend
from segtrain.data import DataOrder

from conftest import REPO

TASK = str(REPO / "tests" / "tasks" / "augment_digits_torch.py")


def fetched(workers: int, start: int, end: int, accumulate: int = 1, backend=None):
    backend = backend or Backend(TASK, {}, seed=3, threads=1, training={"num_workers": workers, "accumulate": accumulate})
    order = DataOrder(backend.num_samples, 16 * accumulate, seed=3)
    return [b.batch for b in backend.batches(order, start, end)]


def test_batches_do_not_depend_on_the_workers_or_the_start_step():
    whole = fetched(2, 0, 12)
    for workers, start in ((2, 5), (3, 7), (1, 11)):
        for a, b in zip(whole[start:], fetched(workers, start, 12)):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(whole[0][0], whole[1][0])  # augmentation is still random, step to step


def test_workers_leave_the_training_streams_alone():
    import random

    import numpy as np

    backend = Backend(TASK, {}, seed=3, threads=1, training={"num_workers": 2})
    torch.manual_seed(0)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    fetched(2, 0, 3, backend=backend)  # a loader is made at every segment's start
    assert torch.equal(before[0], torch.get_rng_state())
    assert (before[1] == np.random.get_state()[1]).all() and before[2] == random.getstate()


def test_dict_batches_reach_the_step_and_split_into_micro_batches():
    from segtrain.backends.torch_data import _split

    batch = {"x": torch.arange(8).view(8, 1), "meta": [torch.arange(8), torch.ones(8)]}
    parts = _split(batch, 4)
    assert len(parts) == 4 and torch.equal(parts[1]["x"], torch.tensor([[2], [3]]))
    assert torch.equal(parts[3]["meta"][0], torch.tensor([6, 7]))
