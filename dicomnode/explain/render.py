"""Blend a Grad-CAM heatmap over a radiograph and burn in a legend (pure numpy/cv2/PIL).

The output is the RGB pixel array of the heatmap Secondary Capture: the display
image downscaled so that the whole picture, legend band included, has its long
side at most ``max_side`` pixels (never upscaled), then a dark band below the
image with white text lines.

What the colours mean, and what they must not suggest:

* **No heatmap, no colour.** ``heatmap=None`` (the pipeline passes None for a
  negative decision) renders the grayscale radiograph and the legend only. A
  Grad-CAM map is min-max normalised per image, so even a p = 0.00 image has a
  full-range map; painting it would read as "the disease is here".
* **Only the hot part is painted, and it fades in.** Heat below
  :data:`HEAT_FLOOR` leaves the radiograph untouched (no blue/lavender wash over
  cold areas). Above it the colour weight rises as a smoothstep (zero value and zero
  slope at the floor) to ``alpha`` at heat 1, so the coloured region has no edge.
* **Hot palette.** Colours run yellow -> orange -> red (the hot quarter of jet,
  0.625-0.875): red = the strongest attention, as in the usual CAM figures. The
  colour bar in the legend shows exactly this blend over mid-gray, labelled
  "low" / "high attention".
* **Smooth, no cells.** The CAM is computed on a coarse grid (7x7 for the shipped
  models) and arrives bilinearly upsampled, whose kinks and ReLU zero-cells show as
  rectangles. The map is Gaussian-blurred with sigma = ``smooth`` x its long side
  (default 1/14 = half a cell of a 7x7 grid), rescaled so its peak is unchanged,
  then resized to the picture with bicubic interpolation and clipped to [0, 1].
* **Heat values are used as given** (not renormalised): a caller that wants a weaker
  display, e.g. in proportion to the decision margin, can scale the map down and the
  coloured region shrinks. The shipped pipeline does not (the probability is in the
  legend; the map's reach does not encode it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

HEAT_FLOOR = 0.4
"""Heat (in [0, 1]) below which the radiograph is left uncoloured."""

DEFAULT_SMOOTH = 1.0 / 14.0
"""Gaussian sigma as a fraction of the heatmap's long side: half a cell of a 7x7 CAM."""

_BAND_RGB = (16, 16, 16)
_TEXT_RGB = (255, 255, 255)
_BAR_GRAY = 128.0  # the colour bar shows the blend over this gray level
_HOT_JET_RANGE = (0.625, 0.875)  # yellow -> orange -> red
_NBSP = "\u00a0"  # drawn as a plain space (the default font has no glyph for it)
_BAR_LOW, _BAR_HIGH = "low", "high attention"
_MIN_FONT_PX = 12
_MIN_TEXT_EM = 26  # a narrow image is padded to about this many font heights for the legend


def render_overlay(
    gray: np.ndarray,
    heatmap: np.ndarray | None,
    *,
    max_side: int = 1024,
    legend: Sequence[str] = (),
    alpha: float = 0.6,
    smooth: float = DEFAULT_SMOOTH,
) -> np.ndarray:
    """Render the radiograph, the heatmap overlay (if any) and the burned-in legend.

    Args:
        gray: ``(H, W)`` display image, 0 = black: float in [0, 1] (values outside
            are clipped) or uint8 gray levels 0-255.
        heatmap: ``(h, w)`` float32 heat in [0, 1], any size, covering the whole
            image; or None for no colour at all (radiograph and legend only). Values
            are used as given (not renormalised).
        max_side: long side of the returned picture in pixels (legend band included).
        legend: text lines written in the band below the image, top to bottom; long
            lines wrap. No lines = no band. With a heatmap the band also carries a
            colour bar labelled "low" / "high attention".
        alpha: largest colour weight, reached where the heat is 1. The weight is
            ``alpha * smoothstep((heat - HEAT_FLOOR) / (1 - HEAT_FLOOR))``, 0 below
            :data:`HEAT_FLOOR`.
        smooth: Gaussian sigma applied to the heatmap, as a fraction of its long side
            (0 = no blur).

    Returns:
        ``(H', W', 3)`` uint8 RGB, ``max(H', W') <= max_side``; the image part keeps the
        aspect ratio of ``gray``. With a legend, ``H'`` includes the band, and an image
        too narrow for the text is centred on a wider dark canvas. Without a heatmap
        the image part is gray (R = G = B).

    Raises:
        ValueError: arrays of the wrong dimensionality, empty, or not finite;
            ``max_side`` too small; ``alpha`` outside [0, 1]; ``smooth`` negative.
    """
    levels = np.asarray(gray).dtype == np.uint8  # already 0-255
    gray = _check_plane(gray, "gray")
    heat_in = None if heatmap is None else _check_plane(heatmap, "heatmap")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if not smooth >= 0.0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    if max_side < 64:
        raise ValueError(f"max_side must be at least 64 px, got {max_side}")
    lines = [str(line) for line in legend]
    with_bar = heat_in is not None

    height, width = gray.shape
    scale = min(1.0, max_side / max(height, width))
    font_px = _font_size(round(max(height, width) * scale))
    font = _font(font_px)
    band_px = 0
    if lines:
        # The band's height depends on the wrapping width, which depends on the
        # scale; two passes settle it.
        for _ in range(2):
            canvas_w = _canvas_width(round(width * scale), font_px, max_side)
            band_px = _band_height(lines, font, canvas_w, font_px, with_bar)
            scale = min(scale, (max_side - band_px) / height)
        if scale * height < 1:
            raise ValueError(f"max_side {max_side} leaves no room for the image under the legend")
    out_w = max(1, round(width * scale))
    out_h = max(1, round(height * scale))

    base = _resize(gray, out_w, out_h) * np.float32(1.0 if levels else 255.0)  # a new array: clipped in place
    np.clip(base, 0.0, 255.0, out=base)
    rgb = cv2.cvtColor(cv2.convertScaleAbs(base), cv2.COLOR_GRAY2RGB)
    if heat_in is not None:
        _paint_hot_region(rgb, base, smooth_heat(heat_in, out_w, out_h, smooth), alpha)
    if not lines:
        return rgb
    return _add_legend(
        rgb,
        lines,
        font,
        font_px,
        band_px,
        _canvas_width(out_w, font_px, max_side),
        alpha if with_bar else None,
    )


def smooth_heat(
    heatmap: np.ndarray, out_w: int, out_h: int, smooth: float = DEFAULT_SMOOTH
) -> np.ndarray:
    """Blur a coarse (or coarsely upsampled) CAM and resize it smoothly to the picture.

    Args:
        heatmap: ``(h, w)`` float32 heat in [0, 1].
        out_w: width of the result in pixels.
        out_h: height of the result in pixels.
        smooth: Gaussian sigma as a fraction of the heatmap's long side (0 = no blur).

    Returns:
        ``(out_h, out_w)`` float32 in [0, 1], with the same maximum as ``heatmap``
        (up to interpolation).
    """
    heat: np.ndarray = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    peak = float(heat.max())
    sigma = smooth * max(heat.shape)
    if sigma > 0.0 and peak > 0.0:
        heat = cv2.GaussianBlur(heat, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
        heat = heat * np.float32(peak / max(float(heat.max()), 1e-12))
    if (out_h, out_w) != heat.shape:
        shrink = out_w < heat.shape[1] and out_h < heat.shape[0]
        method = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
        heat = cv2.resize(heat, (out_w, out_h), interpolation=method)
    result: np.ndarray = np.clip(heat, 0.0, 1.0)
    return result


def colour_weight(heat: np.ndarray, alpha: float) -> np.ndarray:
    """Colour weight per pixel: 0 below :data:`HEAT_FLOOR`, smoothstep up to ``alpha`` at 1.

    Args:
        heat: float array in [0, 1], any shape.
        alpha: weight at heat 1, in [0, 1].

    Returns:
        float32 array of the same shape, in [0, alpha].
    """
    t = np.clip((np.asarray(heat, dtype=np.float32) - HEAT_FLOOR) / (1.0 - HEAT_FLOOR), 0.0, 1.0)
    weight: np.ndarray = (alpha * t * t * (3.0 - 2.0 * t)).astype(np.float32)
    return weight


def attention_colours(heat: np.ndarray) -> np.ndarray:
    """Hot palette of the overlay: yellow at :data:`HEAT_FLOOR`, orange, red at 1.

    Args:
        heat: float array in [0, 1], any shape (values below the floor get yellow).

    Returns:
        uint8 array of shape ``heat.shape + (3,)``, RGB.
    """
    t = np.clip((np.asarray(heat, dtype=np.float32) - HEAT_FLOOR) / (1.0 - HEAT_FLOOR), 0.0, 1.0)
    low, high = _HOT_JET_RANGE
    return jet(low + (high - low) * t)


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


def _paint_hot_region(rgb: np.ndarray, gray: np.ndarray, heat: np.ndarray, alpha: float) -> None:
    """Blend the overlay into ``rgb`` in place where the heat is above the floor.

    Only the bounding box of the hot pixels is computed (elsewhere the weight is 0 and
    ``rgb`` already holds the gray levels): the same values as blending the whole picture.

    Args:
        rgb: ``(h, w, 3)`` uint8, the rounded gray levels of ``gray``; modified.
        gray: ``(h, w)`` float32 gray levels in [0, 255].
        heat: ``(h, w)`` float32 heat in [0, 1].
        alpha: largest colour weight.
    """
    if alpha <= 0.0:
        return
    hot = heat > HEAT_FLOOR
    rows = np.flatnonzero(hot.any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero(hot.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    rgb[box] = _blend(gray[box], heat[box], alpha)


@functools.lru_cache(maxsize=8)
def _blend_tables(alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per heat level 0..255 (floor to 1): ``1 - weight`` ``(256,)`` and
    ``colour * weight`` ``(1, 256, 3)``, float32, as cv2.LUT tables."""
    heat = HEAT_FLOOR + (1.0 - HEAT_FLOOR) * np.linspace(0.0, 1.0, 256, dtype=np.float32)
    weight = colour_weight(heat, alpha)
    weighted = attention_colours(heat).astype(np.float32) * weight[:, None]
    return (1.0 - weight).astype(np.float32), weighted.astype(np.float32)[None]


def _blend(gray: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    """``(h, w)`` gray levels in [0, 255] and heat in [0, 1] -> ``(h, w, 3)`` uint8 RGB.

    ``gray * (1 - weight) + colour * weight``, with weight and colour looked up per
    heat level: 256 steps from the floor to 1 (weight error < 0.002), 0 below the floor.
    """
    keep, weighted = _blend_tables(float(alpha))
    span = 255.0 / (1.0 - HEAT_FLOOR)
    level = cv2.convertScaleAbs(np.maximum(np.asarray(heat, dtype=np.float32) - HEAT_FLOOR, 0.0), alpha=span)
    out: np.ndarray = np.asarray(cv2.LUT(cv2.merge([level, level, level]), weighted), dtype=np.float32)
    out += (np.asarray(gray, dtype=np.float32) * cv2.LUT(level, keep))[..., None]
    blended: np.ndarray = cv2.convertScaleAbs(out)
    return blended


@functools.lru_cache(maxsize=16)
def _font(font_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's default font at ``font_px`` pixels (loaded once per size: ~5 ms a load)."""
    return ImageFont.load_default(size=font_px)


def _font_size(long_side_px: int) -> int:
    """Font height in pixels: ~2.2% of the picture's long side (22 px at 1024)."""
    return max(_MIN_FONT_PX, round(long_side_px * 0.022))


def _canvas_width(image_w: int, font_px: int, max_side: int) -> int:
    """Width of the output: the image's, widened for narrow images so the legend fits."""
    return max(1, image_w, min(max_side, _MIN_TEXT_EM * font_px))


def _wrap(
    line: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_px: float
) -> list[str]:
    """Greedy word wrap of one line to ``max_px`` pixels (a too-long word stays whole).

    Breaks at plain spaces only: a no-break space (U+00A0) keeps its neighbours together.
    """
    words = [word.replace(_NBSP, " ") for word in line.split(" ") if word]
    if not words:
        return [""]
    if font.getlength(" ".join(words)) <= max_px:  # the usual case: one measurement, not one a word
        return [" ".join(words)]
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
    with_bar: bool,
) -> tuple[list[str], int, int, int, bool]:
    """Wrapped rows, margin, line height, colour-bar width and bar placement.

    The bar sits right of the text when the band is wide enough, else on its own
    rows below the text (the last returned value is True then).
    """
    margin = max(4, font_px // 2)
    labels_w = round(font.getlength(f"{_BAR_LOW} {_BAR_HIGH}")) + font_px
    bar_w = max(labels_w, width // 5) if with_bar else 0
    below = False
    if bar_w and width - 3 * margin - bar_w < 16 * font_px:
        below = True  # too narrow beside the text: full-width bar under it
        bar_w = width - 2 * margin
    beside = bar_w > 0 and not below
    text_w = max(1, width - (3 if beside else 2) * margin - (bar_w if beside else 0))
    rows = [row for line in lines for row in _wrap(line, font, text_w)]
    return rows, margin, round(font_px * 1.3), bar_w, below


def _band_height(
    lines: Sequence[str],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    width: int,
    font_px: int,
    with_bar: bool,
) -> int:
    rows, margin, line_h, bar_w, below = _layout(lines, font, width, font_px, with_bar)
    bar_block = 2 * line_h if bar_w else 0  # colour bar and its "low"/"high attention" labels
    if below:
        return 2 * margin + len(rows) * line_h + bar_block
    return 2 * margin + max(len(rows) * line_h, bar_block)


def _add_legend(
    rgb: np.ndarray,
    lines: Sequence[str],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    font_px: int,
    band_px: int,
    width: int,
    bar_alpha: float | None,
) -> np.ndarray:
    """Put ``rgb`` (centred) above a dark band with the text and, if ``bar_alpha`` is
    given, a colour bar showing the overlay's blend over mid-gray for heat 0 -> 1."""
    height, image_w, _ = rgb.shape
    rows, margin, line_h, bar_w, below = _layout(lines, font, width, font_px, bar_alpha is not None)
    canvas = np.empty((height + band_px, width, 3), dtype=np.uint8)
    left = (width - image_w) // 2
    canvas[height:] = _BAND_RGB
    canvas[:height, :left] = _BAND_RGB
    canvas[:height, left + image_w :] = _BAND_RGB
    canvas[:height, left : left + image_w] = rgb
    bar_h = max(6, font_px // 2)
    if below:
        bar_x = margin
        bar_y = height + margin + len(rows) * line_h + (line_h - bar_h) // 2
    else:
        bar_x = width - margin - bar_w
        bar_y = height + margin + (line_h - bar_h) // 2
    if bar_alpha is not None and bar_w > 0:
        heat = np.linspace(0.0, 1.0, bar_w, dtype=np.float32)
        ramp = _blend(np.full((1, bar_w), _BAR_GRAY, np.float32), heat[None, :], bar_alpha)
        canvas[bar_y : bar_y + bar_h, bar_x : bar_x + bar_w] = ramp

    # Text is drawn on the band only (PIL copies what it draws on).
    band = Image.fromarray(canvas[height:])
    draw = ImageDraw.Draw(band)
    y = margin
    for row in rows:
        draw.text((margin, y), row, fill=_TEXT_RGB, font=font)
        y += line_h
    if bar_alpha is not None and bar_w > 0:
        label_y = bar_y - height + bar_h + max(2, font_px // 6)
        draw.text((bar_x, label_y), _BAR_LOW, fill=_TEXT_RGB, font=font)
        high_x = bar_x + bar_w - font.getlength(_BAR_HIGH)
        draw.text((high_x, label_y), _BAR_HIGH, fill=_TEXT_RGB, font=font)
    canvas[height:] = np.asarray(band, dtype=np.uint8)
    return canvas
