"""Blend a Grad-CAM heatmap over a radiograph and burn in a legend (pure numpy/cv2/PIL).

The output is the RGB pixel array of the heatmap Secondary Capture: the display
image downscaled so that the whole picture, legend band included, has its long
side at most ``max_side`` pixels (never upscaled), the heatmap colour-mapped with a
jet palette and blended with a weight that grows with the heat (cold areas leave
the radiograph untouched), then a dark band below the image with white text
lines and a small colour bar.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

_BAND_RGB = (16, 16, 16)
_TEXT_RGB = (255, 255, 255)
_MIN_FONT_PX = 11
_MIN_TEXT_EM = 26  # a narrow image is padded to about this many font heights for the legend


def render_overlay(
    gray: np.ndarray,
    heatmap: np.ndarray,
    *,
    max_side: int = 1024,
    legend: Sequence[str] = (),
    alpha: float = 0.45,
) -> np.ndarray:
    """Render the heatmap overlay with its burned-in legend.

    Args:
        gray: ``(H, W)`` float32 display image in [0, 1] (0 = black). Values outside
            are clipped.
        heatmap: ``(h, w)`` float32 in [0, 1], any size; it covers the whole image and
            is resized to it (bilinear).
        max_side: long side of the returned picture in pixels (legend band included).
        legend: text lines written in the band below the image, top to bottom; long
            lines wrap. No lines = no band and no colour bar.
        alpha: largest colour weight, reached where the heat is 1; the weight at heat
            ``h`` is ``alpha * sqrt(h)``.

    Returns:
        ``(H', W', 3)`` uint8 RGB, ``max(H', W') <= max_side``; the image part keeps the
        aspect ratio of ``gray``. With a legend, ``H'`` includes the band, and an image
        too narrow for the text is centred on a wider dark canvas.

    Raises:
        ValueError: arrays of the wrong dimensionality, empty, or not finite;
            ``max_side`` too small; ``alpha`` outside [0, 1].
    """
    gray = _check_plane(gray, "gray")
    heatmap = _check_plane(heatmap, "heatmap")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if max_side < 64:
        raise ValueError(f"max_side must be at least 64 px, got {max_side}")
    lines = [str(line) for line in legend]

    height, width = gray.shape
    scale = min(1.0, max_side / max(height, width))
    font_px = _font_size(round(max(height, width) * scale))
    font = ImageFont.load_default(size=font_px)
    band_px = 0
    canvas_w = max(1, round(width * scale))
    if lines:
        # The band's height depends on the wrapping width, which depends on the
        # scale; two passes settle it.
        for _ in range(2):
            canvas_w = _canvas_width(round(width * scale), font_px, max_side)
            band_px = _band_height(lines, font, canvas_w, font_px)
            scale = min(scale, (max_side - band_px) / height)
        if scale * height < 1:
            raise ValueError(f"max_side {max_side} leaves no room for the image under the legend")
    out_w = max(1, round(width * scale))
    out_h = max(1, round(height * scale))

    base = _resize(gray, out_w, out_h)
    heat = cv2.resize(heatmap, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    np.clip(heat, 0.0, 1.0, out=heat)
    rgb = _blend(base, heat, alpha)
    if not lines:
        return rgb
    return _add_legend(rgb, lines, font, font_px, band_px, _canvas_width(out_w, font_px, max_side))


def jet(values: np.ndarray) -> np.ndarray:
    """Jet colour map (blue -> cyan -> yellow -> red) of values in [0, 1].

    Args:
        values: float array of any shape, in [0, 1].

    Returns:
        uint8 array of shape ``values.shape + (3,)``, RGB.
    """
    index = np.clip(np.rint(np.asarray(values, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    flat = index.reshape(-1, 1)
    bgr = cv2.applyColorMap(flat, cv2.COLORMAP_JET).reshape(*index.shape, 3)
    return np.ascontiguousarray(bgr[..., ::-1])


def _check_plane(array: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(array)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {values.shape}")
    values = values.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return values


def _resize(plane: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Resize a float32 plane; area averaging when shrinking (no aliasing)."""
    if (out_h, out_w) == plane.shape:
        return plane
    shrink = out_w < plane.shape[1]
    method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    resized: np.ndarray = cv2.resize(plane, (out_w, out_h), interpolation=method)
    return resized


def _blend(base: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    """``(h, w)`` gray and heat in [0, 1] -> ``(h, w, 3)`` uint8 RGB."""
    gray = np.clip(base, 0.0, 1.0) * 255.0
    weight = (alpha * np.sqrt(heat))[..., None]
    colour = jet(heat).astype(np.float32)
    out: np.ndarray = gray[..., None] * (1.0 - weight) + colour * weight
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _font_size(long_side_px: int) -> int:
    """Font height in pixels: ~2.2% of the picture's long side (22 px at 1024)."""
    return max(_MIN_FONT_PX, round(long_side_px * 0.022))


def _canvas_width(image_w: int, font_px: int, max_side: int) -> int:
    """Width of the output: the image's, widened for narrow images so the legend fits."""
    return max(1, image_w, min(max_side, _MIN_TEXT_EM * font_px))


def _wrap(
    line: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_px: float
) -> list[str]:
    """Greedy word wrap of one line to ``max_px`` pixels (a too-long word stays whole)."""
    words = line.split()
    if not words:
        return [""]
    rows: list[str] = []
    current = words[0]
    for word in words[1:]:
        trial = f"{current} {word}"
        if font.getlength(trial) <= max_px:
            current = trial
        else:
            rows.append(current)
            current = word
    rows.append(current)
    return rows


def _layout(
    lines: Sequence[str],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    width: int,
    font_px: int,
) -> tuple[list[str], int, int, int]:
    """Wrapped rows, margin, line height and colour-bar width for a band of ``width`` px."""
    margin = max(4, font_px // 2)
    bar_w = min(max(4 * font_px, width // 6), width // 3)
    if width - 3 * margin - bar_w < 12 * font_px:
        bar_w = 0  # too narrow for a colour bar beside the text
    text_w = max(1, width - (3 if bar_w else 2) * margin - bar_w)
    rows = [row for line in lines for row in _wrap(line, font, text_w)]
    return rows, margin, round(font_px * 1.3), bar_w


def _band_height(
    lines: Sequence[str],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    width: int,
    font_px: int,
) -> int:
    rows, margin, line_h, bar_w = _layout(lines, font, width, font_px)
    bar_block = 2 * line_h if bar_w else 0  # colour bar and its "low"/"high" labels
    return 2 * margin + max(len(rows) * line_h, bar_block)


def _add_legend(
    rgb: np.ndarray,
    lines: Sequence[str],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    font_px: int,
    band_px: int,
    width: int,
) -> np.ndarray:
    """Put ``rgb`` (centred) above a dark band with the text and a horizontal colour bar."""
    height, image_w, _ = rgb.shape
    rows, margin, line_h, bar_w = _layout(lines, font, width, font_px)
    canvas = np.empty((height + band_px, width, 3), dtype=np.uint8)
    canvas[...] = _BAND_RGB
    left = (width - image_w) // 2
    canvas[:height, left : left + image_w] = rgb
    bar_x = width - margin - bar_w
    bar_h = max(6, font_px // 2)
    bar_y = height + margin + (line_h - bar_h) // 2
    with_bar = bar_w > 0
    if with_bar:
        ramp = jet(np.linspace(0.0, 1.0, bar_w, dtype=np.float32))
        canvas[bar_y : bar_y + bar_h, bar_x : bar_x + bar_w] = ramp[None, :, :]

    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    y = height + margin
    for row in rows:
        draw.text((margin, y), row, fill=_TEXT_RGB, font=font)
        y += line_h
    if with_bar:
        label_y = bar_y + bar_h + max(2, font_px // 6)
        draw.text((bar_x, label_y), "low", fill=_TEXT_RGB, font=font)
        draw.text(
            (bar_x + bar_w - font.getlength("high"), label_y), "high", fill=_TEXT_RGB, font=font
        )
    return np.array(image, dtype=np.uint8)
