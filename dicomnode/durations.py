"""Durations as operators write them: ``30d``, ``12h``, ``15m``, ``90s``, ``0s``.

One parser for every command and setting that takes one (``dicomnode results
--since``, ``dicomnode purge --older-than``, ``store.retention``).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

__all__ = ["parse_duration"]

_UNITS: Final[dict[str, str]] = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PATTERN: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """Parse ``<number><unit>`` (unit s, m, h, d or w; e.g. ``30d``, ``12h``, ``0s``).

    Args:
        text: the duration; surrounding spaces are ignored, the unit is case-insensitive.

    Returns:
        the duration (zero or positive).

    Raises:
        ValueError: ``text`` is not such a duration; the one-line message names it.
    """
    match = _PATTERN.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: write a number and a unit s, m, h, d or w (e.g. 30d, 12h, 0s)"
        )
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
