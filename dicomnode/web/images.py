"""Pixels to PNG for the page: a stored heatmap SC file, or a rendered overlay array."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def array_to_png(pixels: np.ndarray) -> bytes:
    """Encode ``(H, W)`` or ``(H, W, 3)`` uint8 pixels as PNG (Pillow).

    Raises:
        ValueError: another shape or dtype.
    """
    from PIL import Image

    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"need (H, W) or (H, W, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def sc_file_to_png(path: Path) -> bytes:
    """Read a heatmap Secondary Capture file and return its pixels as PNG.

    RGB frames are encoded as is; grayscale ones are scaled to 0..255 (MONOCHROME1
    inverted), so any single-frame SC shows.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not a single-frame image dicomnode can show.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        ds = dcmread(path)
        pixels = ds.pixel_array
    except InvalidDicomError as exc:
        raise ValueError(f"{path.name} is not a DICOM file") from exc
    except (AttributeError, KeyError, NotImplementedError, RuntimeError) as exc:
        raise ValueError(f"{path.name}: cannot decode its pixels: {exc}") from exc
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if pixels.ndim == 3:
        return array_to_png(np.ascontiguousarray(pixels, dtype=np.uint8))
    values = pixels.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 1.0 - scaled
    return array_to_png(np.round(scaled * 255.0).astype(np.uint8))
