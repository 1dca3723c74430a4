"""segtrain: train in segments that fit time-limited GPU jobs, resuming exactly (see README)."""

from .session import session

__all__ = ["session"]
