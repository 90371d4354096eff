"""Heatmap overlay: size limits, aspect ratio, blending by heat, burned-in legend."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.explain.render import jet, render_overlay

LEGEND = ["PNEUMONIA 0.87 (threshold 0.50) POSITIVE", "default v1.0.0", "NOT FOR DIAGNOSTIC USE"]


def ramp(height: int, width: int) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))


def test_downscales_to_max_side_keeping_aspect() -> None:
    out = render_overlay(ramp(2500, 2048), np.zeros((224, 224), np.float32), max_side=1024)
    assert out.dtype == np.uint8 and out.shape == (1024, 839, 3)
    assert out.flags.writeable


def test_never_upscales() -> None:
    out = render_overlay(ramp(300, 200), np.zeros((224, 224), np.float32), max_side=1024)
    assert out.shape == (300, 200, 3)


def test_zero_heat_leaves_the_radiograph_untouched() -> None:
    gray = ramp(64, 80)
    out = render_overlay(gray, np.zeros((7, 7), np.float32))
    expected = np.rint(gray * 255).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], expected)


def test_weight_grows_with_heat() -> None:
    gray = np.full((100, 100), 0.5, np.float32)
    heat = np.zeros((100, 100), np.float32)
    heat[:, 50:] = 1.0
    heat[:, 25:50] = 0.25
    out = render_overlay(gray, heat, alpha=0.5).astype(int)
    cold, warm, hot = out[50, 10], out[50, 37], out[50, 90]
    assert (cold == 128).all()  # gray untouched
    # at heat 1 the colour is jet's dark red: red channel above blue
    assert hot[0] > hot[2] + 40
    distance = [np.abs(p - cold).sum() for p in (warm, hot)]
    assert 0 < distance[0] < distance[1]
    # alpha 0 = no colour at all
    plain = render_overlay(gray, heat, alpha=0.0)
    assert (plain == 128).all()


def test_heatmap_is_resized_to_the_image() -> None:
    gray = np.full((200, 400), 0.5, np.float32)
    heat = np.zeros((10, 10), np.float32)
    heat[:, 5:] = 1.0  # right half hot
    out = render_overlay(gray, heat).astype(int)
    assert out.shape == (200, 400, 3)
    left, right = out[100, 50], out[100, 350]
    assert (left == 128).all() and np.abs(right - 128).sum() > 50


def test_legend_band_below_the_image() -> None:
    gray = np.full((1000, 800), 0.8, np.float32)
    out = render_overlay(gray, np.zeros((8, 8), np.float32), legend=LEGEND, max_side=1024)
    height, width, _ = out.shape
    assert max(height, width) <= 1024
    assert height > 1000 or width < 800  # band added, or image shrunk to make room
    band_top = height - 1
    while band_top > 0 and out[band_top - 1, 5].max() < 40:
        band_top -= 1
    band = out[band_top:]
    assert 50 <= band.shape[0] <= 160  # three lines at ~22 px
    assert (band[..., 0] > 200).mean() > 0.01  # white text is drawn
    # the text region changes with the text
    other = render_overlay(gray, np.zeros((8, 8), np.float32), legend=["NEGATIVE"], max_side=1024)
    assert other.shape != out.shape or not np.array_equal(other[band_top:], band)
    # image part scaled by the same factor in both axes
    image_h = band_top
    assert abs(image_h / out.shape[1] - 1000 / 800) < 0.01


def test_legend_respects_max_side_for_large_input() -> None:
    out = render_overlay(
        ramp(3000, 3000), np.ones((224, 224), np.float32), legend=LEGEND, max_side=1024
    )
    assert max(out.shape[:2]) == 1024
    assert out.shape[0] == 1024 and out.shape[1] < 1024


def test_narrow_image_gets_a_wider_canvas_for_the_legend() -> None:
    out = render_overlay(ramp(2000, 100), np.zeros((8, 8), np.float32), legend=LEGEND, max_side=512)
    assert max(out.shape[:2]) <= 512
    assert out.shape[1] > 512 * 100 / 2000 * 1.5  # padded beyond the scaled image width


def test_colour_bar_is_present() -> None:
    out = render_overlay(
        np.zeros((600, 600), np.float32), np.zeros((8, 8), np.float32), legend=LEGEND
    )
    band = out[600:]
    saturated = (band.max(axis=2).astype(int) - band.min(axis=2).astype(int)) > 150
    assert saturated.sum() > 100  # the jet ramp


def test_jet_endpoints() -> None:
    colours = jet(np.array([0.0, 0.5, 1.0], np.float32))
    assert colours.shape == (3, 3) and colours.dtype == np.uint8
    assert colours[0, 2] > 100 and colours[0, 0] < 10  # blue at 0
    assert colours[2, 0] > 100 and colours[2, 2] < 10  # red at 1
    assert colours[1, 1] > 200  # greenish/yellow in the middle


@pytest.mark.parametrize(
    ("gray", "heat", "kwargs"),
    [
        (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.float32), {}),
        (np.zeros((0, 4), np.float32), np.zeros((4, 4), np.float32), {}),
        (np.zeros((4, 4), np.float32), np.full((4, 4), np.nan, np.float32), {}),
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32), {"alpha": 1.5}),
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32), {"max_side": 10}),
    ],
)
def test_bad_input(gray: np.ndarray, heat: np.ndarray, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        render_overlay(gray, heat, **kwargs)  # type: ignore[arg-type]


def test_input_not_modified() -> None:
    gray = ramp(50, 60)
    heat = np.linspace(0, 1, 49, dtype=np.float32).reshape(7, 7)
    copies = gray.copy(), heat.copy()
    render_overlay(gray, heat, legend=LEGEND)
    np.testing.assert_array_equal(gray, copies[0])
    np.testing.assert_array_equal(heat, copies[1])
