"""The overhead formula of the DSRI checkpointing page, its inverse, and Young's and Daly's
intervals: for a training of TT seconds with one checkpoint every z seconds that takes y seconds
to save, NCP = TT / z, TTSC = NCP * y and overhead = TTSC / TT * 100 %, which is 100 * y / z."""

from __future__ import annotations

import math
from dataclasses import dataclass


class PlanError(ValueError):
    """The requested plan cannot be made; the message says which setting to change."""


@dataclass(frozen=True)
class Overhead:
    """The DSRI formula evaluated for one training time, save time and interval (all seconds)."""

    train_seconds: float
    save_seconds: float
    interval_seconds: float
    checkpoints: float  # NCP
    checkpoint_seconds: float  # TTSC
    percent: float


def overhead(train_seconds: float, save_seconds: float, interval_seconds: float) -> Overhead:
    """NCP = TT/z, TTSC = NCP*y, overhead = TTSC/TT*100 (the DSRI checkpointing page)."""
    if interval_seconds <= 0:
        raise PlanError("the checkpoint interval must be positive")
    ncp = train_seconds / interval_seconds
    ttsc = ncp * save_seconds
    pct = 100.0 * ttsc / train_seconds if train_seconds > 0 else 100.0 * save_seconds / interval_seconds
    return Overhead(train_seconds, save_seconds, interval_seconds, ncp, ttsc, pct)


def interval_for_overhead(save_seconds: float, max_percent: float) -> float:
    """The shortest interval z whose overhead stays at or below ``max_percent``: z = 100*y/p."""
    if not 0 < max_percent < 100:
        raise PlanError(f"max_overhead must be between 0 and 100 %, got {max_percent}")
    return 100.0 * save_seconds / max_percent


def young_interval(save_seconds: float, mtbf_seconds: float) -> float:
    """Young (1974): sqrt(2 C M) for checkpoint cost C and mean time between failures M."""
    return math.sqrt(2.0 * save_seconds * mtbf_seconds)


def daly_interval(save_seconds: float, mtbf_seconds: float) -> float:
    """Daly (2006) higher-order estimate; falls back to M when C >= 2M."""
    c, m = save_seconds, mtbf_seconds
    if c >= 2 * m:
        return m
    r = c / (2 * m)
    return math.sqrt(2 * c * m) * (1 + math.sqrt(r) / 3 + r / 9) - c
