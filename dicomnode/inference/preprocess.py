"""The one pixel pipeline shared by serving, training and evaluation.

DICOM (or JPEG/PNG) pixels -> a display-oriented gray image in [0, 1] -> the model's
input array. Training, ``evaluate`` and the serving runner all call these functions,
so a model never sees pixels prepared differently in production than in its evaluation.

Steps for DICOM (:func:`dicom_to_gray`):

1. decode the single frame (pydicom 3 pixel handlers: native, JPEG, JPEG 2000, JPEG-LS, RLE);
2. Modality LUT: *Rescale Slope/Intercept* or a *Modality LUT Sequence*;
3. VOI LUT: a *VOI LUT Sequence*, else the first *Window Center/Width* pair, else a
   robust min-max (0.5 / 99.5 percentiles of the modality values);
4. MONOCHROME1 is inverted, so dense structures (bone) are bright as in MONOCHROME2.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dicomnode.errors import InferenceError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from dicomnode.inference.manifest import Preprocessing

logger = logging.getLogger(__name__)

MIN_SIDE = 32
"""Images with a side shorter than this many pixels are refused."""

_ROBUST_PERCENTILES = (0.5, 99.5)
_PERCENTILE_SAMPLE = 512
"""Robust min-max percentiles are taken on a strided sample at most this many pixels a side."""


def _check_header(ds: Dataset) -> tuple[int, int, str]:
    """Validate what can be checked without decoding; returns (rows, cols, photometric)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InferenceError("the dataset has no Pixel Data")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        rows = int(ds.Rows)
        cols = int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise InferenceError(f"unreadable image pixel module: {exc}") from exc
    if frames != 1:
        raise InferenceError(f"multi-frame images are not supported ({frames} frames)")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InferenceError(
            f"only grayscale images are supported (SamplesPerPixel={samples}, "
            f"PhotometricInterpretation={photometric or 'absent'})"
        )
    if min(rows, cols) < MIN_SIDE:
        raise InferenceError(f"image too small: {rows}x{cols} pixels (minimum side {MIN_SIDE})")
    return rows, cols, photometric


def _decode(ds: Dataset) -> np.ndarray:
    """Stored pixel values of the single frame, (H, W) integer or float array."""
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types (NotImplementedError, ValueError, ...)
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise InferenceError(
            f"cannot decode pixel data (transfer syntax {tsyntax}): {type(exc).__name__}: {exc}"
        ) from exc
    if arr.ndim != 2:
        raise InferenceError(f"expected one grayscale frame, decoded an array of shape {arr.shape}")
    return arr


def _modality(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the Modality LUT; returns float32 modality values (H, W)."""
    if ds.get("ModalityLUTSequence"):
        from pydicom.pixels.processing import apply_modality_lut

        try:
            return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        except Exception as exc:
            raise InferenceError(f"invalid Modality LUT: {exc}") from exc
    out = arr.astype(np.float32)
    try:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError) as exc:
        raise InferenceError(f"invalid Rescale Slope/Intercept: {exc}") from exc
    if slope != 1.0:
        out *= slope
    if intercept != 0.0:
        out += intercept
    return out


def _first(value: object) -> float:
    """First value of a possibly multi-valued DS element."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = next(iter(value))  # type: ignore[call-overload]
    return float(value)  # type: ignore[arg-type]


def _robust_minmax(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] between the 0.5 and 99.5 percentiles (taken on a strided sample)."""
    step = max(1, max(values.shape) // _PERCENTILE_SAMPLE)
    sample = values[::step, ::step]
    low, high = np.percentile(sample, _ROBUST_PERCENTILES)
    if high <= low:
        low, high = float(sample.min()), float(sample.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    out = (values - np.float32(low)) / np.float32(high - low)
    return np.clip(out, 0.0, 1.0, out=out)


def _voi(values: np.ndarray, raw: np.ndarray, ds: Dataset) -> np.ndarray:
    """VOI LUT / window / robust min-max; returns float32 in [0, 1] (H, W)."""
    if ds.get("VOILUTSequence"):
        from pydicom.pixels.processing import apply_voi

        try:
            item = ds.VOILUTSequence[0]
            depth = int(item.LUTDescriptor[2])
            lut_input = raw if not ds.get("ModalityLUTSequence") and _is_identity_rescale(ds) else (
                np.round(values).astype(np.int64)
            )
            mapped = apply_voi(lut_input, ds, 0).astype(np.float32)
        except Exception as exc:
            raise InferenceError(f"invalid VOI LUT Sequence: {exc}") from exc
        mapped /= np.float32(2**depth - 1)
        return np.clip(mapped, 0.0, 1.0, out=mapped)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            center = _first(ds.WindowCenter)
            width = _first(ds.WindowWidth)
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        except (TypeError, ValueError, IndexError) as exc:
            raise InferenceError(f"invalid Window Center/Width: {exc}") from exc
        if width > 0:
            if function == "SIGMOID":
                out = values - np.float32(center)
                out *= np.float32(-4.0 / width)
                np.exp(out, out=out)
                out += 1.0
                return np.reciprocal(out, out=out)
            if function == "LINEAR_EXACT":
                low, span = center - width / 2.0, width
            else:  # LINEAR (PS3.3 C.11.2.1.2.1)
                if width < 1:
                    width = 1.0
                low, span = (center - 0.5) - (width - 1.0) / 2.0, max(width - 1.0, 1e-6)
            out = (values - np.float32(low)) / np.float32(span)
            return np.clip(out, 0.0, 1.0, out=out)
        logger.debug("ignoring a non-positive Window Width %s", width)
    return _robust_minmax(values)


def _is_identity_rescale(ds: Dataset) -> bool:
    try:
        return float(ds.get("RescaleSlope", 1) or 1) == 1.0 and float(
            ds.get("RescaleIntercept", 0) or 0
        ) == 0.0
    except (TypeError, ValueError):
        return False


def dicom_to_gray(ds: Dataset) -> np.ndarray:
    """Decode a single-frame grayscale radiograph into a display-oriented gray image.

    Args:
        ds: a pydicom dataset with an Image Pixel module (CR, DX, Secondary Capture, ...).

    Returns:
        (H, W) float32 array in [0, 1] at the stored resolution; bright = dense
        (MONOCHROME1 images are inverted).

    Raises:
        InferenceError: no Pixel Data, multi-frame, colour (SamplesPerPixel != 1),
            pixel data that cannot be decoded, an invalid LUT, or a side < 32 pixels.
    """
    _rows, _cols, photometric = _check_header(ds)
    raw = _decode(ds)
    if min(raw.shape) < MIN_SIDE:
        raise InferenceError(f"image too small: {raw.shape[0]}x{raw.shape[1]} pixels")
    values = _modality(raw, ds)
    gray = _voi(values, raw, ds)
    if photometric == "MONOCHROME1":
        gray = np.subtract(np.float32(1.0), gray, out=gray)
    return np.ascontiguousarray(gray, dtype=np.float32)


def image_file_to_gray(path: Path) -> np.ndarray:
    """Read a JPEG/PNG (or any PIL-readable image) as a gray image.

    Args:
        path: image file; colour images are converted with PIL ``convert("L")``.

    Returns:
        (H, W) float32 array in [0, 1].

    Raises:
        InferenceError: the file cannot be read or is smaller than 32 pixels a side.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(image, dtype=np.float32)
                top = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
                gray = arr / np.float32(top)
            else:
                gray = np.asarray(image.convert("L"), dtype=np.float32) / np.float32(255.0)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InferenceError(f"cannot read image {path}: {exc}") from exc
    if min(gray.shape) < MIN_SIDE:
        raise InferenceError(f"image too small: {gray.shape[0]}x{gray.shape[1]} pixels")
    return np.asarray(np.clip(gray, 0.0, 1.0), dtype=np.float32)


def resize_gray(gray: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """Resize a gray image to ``size`` x ``size`` (antialiased when shrinking).

    Args:
        gray: (H, W) float32 in [0, 1].
        size: output side in pixels.
        mode: ``"squash"`` (ignore the aspect ratio) or ``"pad"`` (letterbox, black bars).

    Returns:
        (size, size) float32.
    """
    import cv2

    src: np.ndarray = np.ascontiguousarray(gray, dtype=np.float32)
    h, w = src.shape
    if mode == "pad":
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    else:
        nh, nw = size, size
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if nh < h or nw < w else cv2.INTER_LINEAR
        src = cv2.resize(src, (nw, nh), interpolation=interp)
    if mode == "pad" and (nh, nw) != (size, size):
        canvas = np.zeros((size, size), dtype=np.float32)
        top, left = (size - nh) // 2, (size - nw) // 2
        canvas[top : top + nh, left : left + nw] = src
        src = canvas
    return src


def unpad_heatmap(heatmap: np.ndarray, image_shape: tuple[int, ...], resize: str) -> np.ndarray:
    """The part of a model-input-sized map that covers the image: undoes :func:`resize_gray`'s letterbox.

    With ``resize="pad"`` the image was centred with its long side = S and black bars
    around it; the bars are cropped off. ``"squash"`` maps cover the whole image as is.

    Args:
        heatmap: (S, S) map on the model input grid (e.g. a Grad-CAM).
        image_shape: (H, W, ...) of the image the input was made from (any scale).
        resize: the preprocessing's resize mode, ``"squash"`` or ``"pad"``.

    Returns:
        (h, W') view of ``heatmap`` with the image's aspect ratio (``heatmap`` itself for
        ``"squash"``).
    """
    if resize != "pad":
        return heatmap
    size = heatmap.shape[0]
    height, width = image_shape[:2]
    scale = size / max(height, width)
    nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (size - nh) // 2, (size - nw) // 2
    return heatmap[top : top + nh, left : left + nw]


def gray_to_input(gray: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Turn a gray image into the model's input array.

    Args:
        gray: (H, W) float32 in [0, 1], bright = dense.
        pre: the model's preprocessing (size, channels, mean/std, resize mode).

    Returns:
        (C, S, S) float32, C = ``pre.in_chans``, S = ``pre.input_size``, normalised
        per channel as ``(x - mean) / std``.
    """
    small = resize_gray(gray, pre.input_size, pre.resize)
    out = np.empty((pre.in_chans, pre.input_size, pre.input_size), dtype=np.float32)
    for c in range(pre.in_chans):
        np.subtract(small, np.float32(pre.mean[c]), out=out[c])
        out[c] *= np.float32(1.0 / pre.std[c])
    return out


def dicom_to_input(ds: Dataset, pre: Preprocessing) -> np.ndarray:
    """:func:`dicom_to_gray` then :func:`gray_to_input`; (C, S, S) float32."""
    return gray_to_input(dicom_to_gray(ds), pre)
