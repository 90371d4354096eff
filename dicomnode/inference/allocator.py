"""glibc malloc settings for a process that runs a PyTorch model on the CPU.

PyTorch's CPU tensors come from ``malloc``. glibc serves a block of 128 KiB or more
with ``mmap`` until blocks of that size have been freed a few times, and hands freed
memory above the heap's top back to the system: every forward pass then maps fresh
pages for its activations (8 x 32 x 112 x 112 floats is 12 MiB) and pays a page fault
and the kernel's zeroing for each 4 KiB of them. Measured on the 2-core development VM
with the shipped model, batch 8: 39-40 img/s for forward + Grad-CAM with glibc's
defaults, 51-52 img/s with blocks up to 64 MiB kept on the heap and up to 128 MiB of
free heap kept (32 MiB changes nothing: a batch's largest buffers are bigger).

:func:`keep_tensor_memory` sets those two thresholds with ``mallopt`` (glibc only; on
other C libraries it does nothing). It bounds what the process keeps: at most
:data:`TRIM_THRESHOLD` bytes of free heap beyond what is in use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_tensor_memory"]

logger = logging.getLogger(__name__)

MMAP_THRESHOLD = 64 * 2**20
"""Blocks smaller than this (bytes) come from the heap, not from a fresh mapping."""
TRIM_THRESHOLD = 128 * 2**20
"""Free memory (bytes) at the heap's top that is kept rather than returned."""

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_THRESHOLD = -3


def keep_tensor_memory() -> bool:
    """Set glibc's mmap and trim thresholds for tensor-sized blocks (idempotent, cheap).

    Returns:
        True when the thresholds are set, False when the C library is not glibc or
        refused them.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        logger.debug("mallopt refused the mmap/trim thresholds; keeping the C library's defaults")
        return False
    return True
