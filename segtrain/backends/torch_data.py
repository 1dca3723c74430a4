"""Step loaders for PyTorch: the samples of steps [start, end) in the run's data order, in
worker processes that die with the training process and leave its random streams alone."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


class _Prepared:
    """A batch already fetched, collated and moved (by ``Backend.batches``), not sample indices."""

    def __init__(self, batch):
        self.batch = batch


def _split(batch, parts: int):
    """``batch`` cut into ``parts`` micro-batches along the first dimension (nested structures too)."""
    if parts == 1:
        return [batch]
    if torch.is_tensor(batch):
        return list(batch.chunk(parts))
    if isinstance(batch, dict):
        cut = {k: _split(v, parts) for k, v in batch.items()}
        return [{k: cut[k][i] for k in batch} for i in range(parts)]
    if isinstance(batch, (list, tuple)):
        cut = [_split(v, parts) for v in batch]
        return [[c[i] for c in cut] for i in range(parts)]
    return [batch] * parts


def rank_share(size: int, rank: int, world_size: int) -> slice:
    """The part of a global batch of ``size`` samples that ``rank`` of ``world_size`` trains: a
    contiguous, equal slice (the config refuses a batch size that does not split evenly), so a
    step's samples are the same whatever the number of processes."""
    if world_size == 1:
        return slice(0, size)
    share = size // world_size
    return slice(rank * share, (rank + 1) * share)


class _StepBatches(torch.utils.data.Sampler):
    """The index batches of steps ``start`` to ``end - 1`` from the seeded data order (this rank's
    share of each), each item tagged with its step and position in the global batch, so that a
    worker can seed what it draws for it."""

    def __init__(self, order, start: int, end: int, rank: int = 0, world_size: int = 1):
        self.order, self.start, self.end = order, start, end
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        for step in range(self.start, self.end):
            batch = self.order.batch(step)
            share = rank_share(len(batch), self.rank, self.world_size)
            yield [(step, pos, int(batch[pos])) for pos in range(share.start, share.stop)]

    def __len__(self):
        return self.end - self.start


def _worker_ignores_stops(worker_id: int) -> None:
    """A stop signal (a pod's SIGTERM reaches the whole process group) is the training process's to
    handle: it saves, then ends, and its workers with it. A worker killed by it would instead make
    the DataLoader raise in the middle of a step, before the save."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    die_with_parent()


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the one that forked it ends (Linux): a training
    process killed by SIGKILL (out of memory) must not leave workers behind. Elsewhere, nothing."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call: nobody would signal us
        os._exit(0)


class _SeededItems(torch.utils.data.Dataset):
    """``dataset[i]`` fetched with the torch, numpy and Python streams seeded by (seed, step, pos)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        step, pos, i = key
        item_seed = int(np.random.SeedSequence([self.seed, step, pos]).generate_state(1, np.uint64)[0] >> 1)
        # the CPU generator only: torch.manual_seed also visits every accelerator's generator, which
        # costs about 0.2 ms, per item; a forked worker cannot use CUDA anyway
        torch.default_generator.manual_seed(item_seed)
        np.random.seed(item_seed % 2**32)
        random.seed(item_seed)
        return self.dataset[i]


class _Items(torch.utils.data.Dataset):
    """``dataset[i]`` for the (step, pos, i) keys of ``_StepBatches``, drawing from the process's streams."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        return self.dataset[key[2]]


def step_loader(dataset, order, start: int, end: int, seed: int, num_workers: int = 0, pin_memory: bool = False,
                collate_fn=None, prefetch_factor: int | None = None, rank: int = 0, world_size: int = 1):
    """A DataLoader over the batches of global steps ``start`` to ``end - 1`` of the seeded ``order``.

    With workers, each item is fetched with the random streams seeded by (seed, step, position
    in the batch): augmentation gives the same batch whichever worker fetches it, and a resume
    at any step is exact. Without workers, items draw from the training process's streams, which
    every checkpoint holds (nothing is fetched ahead, so nothing is drawn out of turn)."""
    workers = num_workers > 0
    return torch.utils.data.DataLoader(
        _SeededItems(dataset, seed) if workers else _Items(dataset),
        batch_sampler=_StepBatches(order, start, end, rank, world_size), collate_fn=collate_fn,
        num_workers=num_workers, pin_memory=pin_memory,
        prefetch_factor=(prefetch_factor or 4) if workers else None,
        worker_init_fn=_worker_ignores_stops if workers else None,
        # the loader draws its workers' base seed from this, not from the training stream: a
        # loader made at each segment's start must not shift what training draws
        generator=torch.Generator().manual_seed(seed),
        multiprocessing_context=("fork" if "fork" in torch.multiprocessing.get_all_start_methods() else None)
        if workers else None)
