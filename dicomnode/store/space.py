"""Free disk space of the data folder against ``store.min_free_bytes``.

One check for the three places that act on it: the C-STORE handler (answers
``0xA700`` below the floor), ``/healthz`` (503) and ``dicomnode status``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["free_bytes", "human_bytes", "low_disk"]


def free_bytes(data_dir: Path) -> int:
    """Bytes available to this user in the file system of ``data_dir``.

    Raises:
        OSError: the folder cannot be examined.
    """
    return shutil.disk_usage(data_dir).free


def low_disk(data_dir: Path, min_free_bytes: int) -> str | None:
    """Why the node refuses new instances for lack of space, or None when there is enough.

    Args:
        data_dir: the node's data folder.
        min_free_bytes: the floor (``store.min_free_bytes``); 0 turns the check off.

    Returns:
        one line naming the free space and the floor, or None (also when the folder
        cannot be examined: then the write itself fails and says why).
    """
    if min_free_bytes <= 0:
        return None
    try:
        free = free_bytes(data_dir)
    except OSError:
        return None
    if free >= min_free_bytes:
        return None
    return (f"{human_bytes(free)} free in the data folder {data_dir}, below store.min_free_bytes = "
            f"{human_bytes(min_free_bytes)}: new instances are refused (0xA700)")


def human_bytes(n: int) -> str:
    """``n`` bytes for people: ``512 MiB``, ``1.0 GiB``, ``931 TiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit in ("B", "KiB", "MiB") else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns
