"""Durations and percentages in the units a person types: ``7d``, ``1h30m``, ``20s``, ``2%``."""

from __future__ import annotations

import math
import re

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|d|h|m|s)")


class DurationError(ValueError):
    """A duration or percentage that cannot be read."""


def parse_duration(value, what: str = "duration") -> float:
    """Seconds in ``value``: a number (seconds) or a string such as ``7d``, ``1h30m``, ``0.4s``.

    Raises DurationError naming ``what`` for negative, empty or unreadable values.
    """
    if isinstance(value, bool):
        raise DurationError(f"{what}: expected a duration such as '30m' or '24h', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text.startswith("-"):
            raise DurationError(f"{what}: a duration must be zero or positive, got {value!r}")
        if re.fullmatch(r"\d+(\.\d*)?|\.\d+", text):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise DurationError(
                    f"{what}: cannot read {value!r} as a duration; write it like '20s', '30m', "
                    "'1h30m', '7d' or a number of seconds"
                )
    else:
        raise DurationError(f"{what}: expected a duration such as '30m' or '24h', got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise DurationError(f"{what}: a duration must be zero or positive, got {value!r}")
    return seconds


def parse_percent(value, what: str = "percentage") -> float:
    """Percent in ``value`` (``'2%'``, ``2`` or ``'2'``), strictly between 0 and 100."""
    text = str(value).strip()
    if text.endswith("%"):
        text = text[:-1]
    try:
        pct = float(text)
    except ValueError:
        raise DurationError(f"{what}: cannot read {value!r} as a percentage; write it like '2%'") from None
    if not (0 < pct < 100):
        raise DurationError(f"{what}: must be above 0% and below 100%, got {value!r}")
    return pct


def format_duration(seconds: float) -> str:
    """Short human form: ``1.87 h``, ``30 min``, ``20 s``, ``4.2 ms``."""
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.3g} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    return f"{seconds * 1000:.3g} ms"
