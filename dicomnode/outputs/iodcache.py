"""Memoise highdicom's "does this SOP class have pixel data" lookup.

Every SC and SR highdicom builds asks ``ContributingEquipment.for_image_acquisition``
about its source image, which answers by scanning the standard's module tables for
Pixel Data in the source's IOD: about 3.5 ms a call, two calls a study, the same answer
every time (the tables ship with highdicom and the question depends on the SOP Class
UID alone). :func:`memoise_iod_lookups` wraps that one function in a cache where
``highdicom.base_content`` looks it up. It changes no answer; when a highdicom release
moves the function, it does nothing and the builders are merely slower.
"""

from __future__ import annotations

import functools
import logging

__all__ = ["memoise_iod_lookups"]

logger = logging.getLogger(__name__)


def memoise_iod_lookups() -> None:
    """Install the cache (idempotent; call before building SCs or SRs)."""
    try:
        from highdicom import base_content
    except ImportError:  # pragma: no cover - highdicom is a dependency
        return
    lookup = getattr(base_content, "does_iod_have_pixel_data", None)
    if lookup is None or hasattr(lookup, "cache_info"):
        if lookup is None:
            logger.debug("highdicom.base_content has no does_iod_have_pixel_data; nothing to memoise")
        return
    base_content.does_iod_have_pixel_data = functools.lru_cache(maxsize=256)(lookup)  # type: ignore[attr-defined]
