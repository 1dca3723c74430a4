"""segtrain: train in segments that fit time-limited GPU jobs, resuming exactly (see README)."""

from .script import session

__all__ = ["session"]
