"""Counts of repeated SOP Instance UIDs, kept in the data folder (no database table).

Every receiver process on a data folder adds to one small JSON file,
``<data_dir>/duplicates.json``, under an ``flock`` on it, so ``dicomnode status``
shows the totals of all of them since the folder was created::

    {"identical": 3, "last_identical_at": "2026-12-04T18:02:11",
     "conflicting": 1, "last_conflicting_at": "2026-12-04T18:05:40"}

Times are naive UTC like the database's. The file holds counts and times only,
no UIDs and no patient data. Receivers on different hosts sharing a data folder
over a network file system rely on its ``flock`` semantics.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

__all__ = ["DUPLICATES_FILE", "DuplicateCounts", "count_duplicate", "read_duplicates"]

#: File name of the counts, in the data folder.
DUPLICATES_FILE: Final = "duplicates.json"


@dataclass(frozen=True)
class DuplicateCounts:
    """Repeats of already stored SOP Instance UIDs (the first copy is always kept).

    Attributes:
        identical: repeats with the same data set bytes.
        last_identical_at: ISO time (naive UTC, seconds) of the latest, or None.
        conflicting: repeats whose data set bytes differ from the stored copy.
        last_conflicting_at: ISO time of the latest conflicting repeat, or None.
    """

    identical: int = 0
    last_identical_at: str | None = None
    conflicting: int = 0
    last_conflicting_at: str | None = None


def count_duplicate(data_dir: Path, *, conflicting: bool, now: datetime) -> DuplicateCounts:
    """Add one duplicate to the data folder's counts; returns the new totals.

    Raises:
        OSError: the file cannot be opened, locked or written.
    """
    fd = os.open(data_dir / DUPLICATES_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(os.dup(fd), "r+", encoding="utf-8") as handle:
            counts = _parse(handle.read())
            when = now.isoformat(timespec="seconds")
            if conflicting:
                counts = DuplicateCounts(
                    counts.identical, counts.last_identical_at, counts.conflicting + 1, when
                )
            else:
                counts = DuplicateCounts(
                    counts.identical + 1, when, counts.conflicting, counts.last_conflicting_at
                )
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(asdict(counts)))
            handle.flush()
        return counts
    finally:
        os.close(fd)  # releases the flock


def read_duplicates(data_dir: Path) -> DuplicateCounts:
    """The data folder's counts (zeros when none was ever counted or the file is unreadable)."""
    try:
        return _parse((data_dir / DUPLICATES_FILE).read_text(encoding="utf-8"))
    except OSError:
        return DuplicateCounts()


def _parse(text: str) -> DuplicateCounts:
    try:
        raw = json.loads(text) if text.strip() else {}
        return DuplicateCounts(
            identical=int(raw.get("identical", 0)),
            last_identical_at=raw.get("last_identical_at"),
            conflicting=int(raw.get("conflicting", 0)),
            last_conflicting_at=raw.get("last_conflicting_at"),
        )
    except (ValueError, TypeError, AttributeError):
        return DuplicateCounts()  # a damaged file starts again from zero
