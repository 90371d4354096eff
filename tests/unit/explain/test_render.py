"""Heatmap overlay: size limits, aspect ratio, no colour without a heatmap, smooth blending
above the heat floor, burned-in legend."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.explain.render import (
    HEAT_FLOOR,
    attention_colours,
    colour_weight,
    jet,
    render_overlay,
    smooth_heat,
)

LEGEND = ["PNEUMONIA 0.87 (threshold 0.50) POSITIVE", "default v1.0.0", "NOT FOR DIAGNOSTIC USE"]


def coloured(rgb: np.ndarray, spread: int = 20) -> np.ndarray:
    """Pixels that are not gray: channel spread above ``spread`` levels."""
    wide = rgb.astype(int)
    mask: np.ndarray = (wide.max(axis=2) - wide.min(axis=2)) > spread
    return mask


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


def test_weight_grows_with_heat_above_the_floor() -> None:
    gray = np.full((100, 100), 0.5, np.float32)
    heat = np.zeros((100, 100), np.float32)
    heat[:, 50:] = 1.0
    heat[:, 25:50] = 0.7
    heat[:, 10:25] = HEAT_FLOOR - 0.05  # below the floor: no colour
    out = render_overlay(gray, heat, alpha=0.6, smooth=0.0).astype(int)
    cold, low, warm, hot = out[50, 5], out[50, 17], out[50, 37], out[50, 90]
    assert (cold == 128).all() and (low == 128).all()  # gray untouched
    # at heat 1 the colour is red at weight alpha: 0.4 * 128 + 0.6 * (255, 0, 0)
    np.testing.assert_allclose(hot, [204, 51, 51], atol=1)
    distance = [np.abs(p - cold).sum() for p in (warm, hot)]
    assert 0 < distance[0] < distance[1]
    # alpha 0 = no colour at all
    plain = render_overlay(gray, heat, alpha=0.0)
    assert (plain == 128).all()


def test_colour_weight_fades_in_without_a_step() -> None:
    heat = np.linspace(0.0, 1.0, 10001, dtype=np.float32)
    weight = colour_weight(heat, 0.6)
    assert (weight[heat <= HEAT_FLOOR] == 0).all()
    assert weight[-1] == pytest.approx(0.6)
    assert (np.diff(weight) >= 0).all()
    # smoothstep: slope 0 at the floor and at 1, at most 1.5 * alpha / (1 - floor) between
    slope = np.diff(weight) / np.diff(heat)
    assert slope.max() <= 1.5 * 0.6 / (1 - HEAT_FLOOR) + 1e-3
    just_above = (heat > HEAT_FLOOR) & (heat < HEAT_FLOOR + 0.01)
    assert weight[just_above].max() < 0.001


def test_palette_is_hot_yellow_to_red() -> None:
    colours = attention_colours(np.array([HEAT_FLOOR, 1.0], np.float32)).astype(int)
    yellow, red = colours
    assert yellow[0] > 240 and yellow[1] > 240 and yellow[2] < 20
    assert red[0] > 240 and red[1] < 20 and red[2] < 20


def test_no_heatmap_means_no_colour() -> None:
    gray = ramp(300, 400)
    out = render_overlay(gray, None, legend=LEGEND)
    image = out[:300]
    expected = np.rint(gray * 255).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], expected)
    assert not coloured(out).any()  # no colour bar in the band either
    assert out.shape[0] > 300  # the legend is there
    bare = render_overlay(gray, None)
    assert bare.shape == (300, 400, 3) and not coloured(bare).any()


def test_same_geometry_with_and_without_heatmap() -> None:
    gray = ramp(800, 600)
    heat = np.zeros((7, 7), np.float32)
    heat[3, 3] = 1.0
    shown = render_overlay(gray, heat, legend=LEGEND, max_side=512)
    hidden = render_overlay(gray, None, legend=LEGEND, max_side=512)
    assert max(shown.shape[:2]) <= 512 and max(hidden.shape[:2]) <= 512
    assert shown.shape[0] == 512 and hidden.shape[0] == 512  # the bar takes rows from the image
    assert coloured(shown).any() and not coloured(hidden).any()


def _cam_grid(seed: int) -> np.ndarray:
    """A 7x7 ReLU'd, min-max normalised CAM like the shipped models' (zeros included)."""
    rng = np.random.default_rng(seed)
    grid = np.maximum(rng.normal(0.0, 1.0, (7, 7)), 0.0).astype(np.float32)
    grid[3, 4] = grid.max() + 1.0
    return grid / grid.max()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("upsampling", ["nearest", "bilinear"])
def test_overlay_has_no_block_edges(seed: int, upsampling: str) -> None:
    """A coarse CAM (blocks, or bilinear kinks as Grad-CAM delivers it) renders smoothly.

    On a 448 px picture a 7x7 cell is 64 px. Between neighbouring pixels the colour
    weight changes by less than 5 % of its maximum (a block edge: up to 100 %); on
    uniform gray the rendered red channel, R = 128 + weight * 127 (the hot palette's
    red is 255 throughout), changes by at most 5 levels. The same blocky map without
    smoothing shows its edges to both measures.
    """
    import cv2

    method = cv2.INTER_NEAREST if upsampling == "nearest" else cv2.INTER_LINEAR
    heat = cv2.resize(_cam_grid(seed), (224, 224), interpolation=method)

    def max_step(field: np.ndarray) -> float:
        return float(
            max(np.abs(np.diff(field, axis=0)).max(), np.abs(np.diff(field, axis=1)).max())
        )

    weight = colour_weight(smooth_heat(heat, 448, 448), 1.0)
    assert weight.max() > 0.5  # something is painted
    assert max_step(weight) < 0.05
    gray = np.full((448, 448), 0.5, np.float32)
    red = render_overlay(gray, heat)[..., 0].astype(np.float32)
    assert max_step(red) <= 5
    if upsampling == "nearest":
        raw = colour_weight(smooth_heat(heat, 448, 448, smooth=0.0), 1.0)
        assert max_step(raw) > 0.5  # the measure sees block edges when they are there
        raw_red = render_overlay(gray, heat, smooth=0.0)[..., 0].astype(np.float32)
        assert max_step(raw_red) > 30


def test_cold_areas_stay_untouched_after_smoothing() -> None:
    heat = np.zeros((7, 7), np.float32)
    heat[1, 1] = 1.0  # one hot cell in the top left corner
    out = render_overlay(np.full((448, 448), 0.5, np.float32), heat)
    assert coloured(out[:128, :128]).any()
    assert not coloured(out[256:, :]).any() and not coloured(out[:, 256:]).any()


def test_smooth_heat_keeps_the_peak_and_range() -> None:
    heat = _cam_grid(3) * 0.8  # a caller may scale the map down: it stays scaled
    out = smooth_heat(heat, 300, 200)
    assert out.shape == (200, 300) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() == pytest.approx(0.8, abs=0.02)


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


def test_colour_bar_only_with_a_heatmap() -> None:
    gray = np.zeros((600, 600), np.float32)
    out = render_overlay(gray, np.zeros((8, 8), np.float32), legend=LEGEND)
    band = out[600:]
    reddish = band[..., 0].astype(int) - band[..., 2].astype(int) > 60
    assert reddish.sum() > 100  # the hot end of the bar
    assert not coloured(render_overlay(gray, None, legend=LEGEND)[600:]).any()


def test_no_break_space_keeps_words_together() -> None:
    gray = np.zeros((200, 150), np.float32)
    line = "PNEUMONIA: negative, probability\u00a00.17 < threshold\u00a00.74"
    out = render_overlay(gray, None, legend=[line], max_side=300)
    plain = render_overlay(gray, None, legend=[line.replace("\u00a0", " ")], max_side=300)
    assert out.shape[1] == plain.shape[1]
    # drawn as plain spaces (no missing-glyph box), possibly wrapped differently
    assert (out[200:] > 200).any()


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
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32), {"smooth": -0.1}),
        (np.zeros((4, 4), np.float32), np.zeros((4, 4, 1), np.float32), {}),
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


def test_uint8_gray_levels_render_as_the_same_levels_in_float() -> None:
    """The pipeline hands the overlay 8-bit display images; they render as their float twin
    (to one gray level: the resize rounds differently)."""
    rng = np.random.default_rng(3)
    levels = rng.integers(0, 256, size=(300, 240), dtype=np.uint8)
    heat = rng.random((14, 14), dtype=np.float32)
    for heatmap in (None, heat):
        as_levels = render_overlay(levels, heatmap, max_side=256, legend=["Pneumonia: 0.91"])
        as_float = render_overlay(levels.astype(np.float32) / 255.0, heatmap, max_side=256, legend=["Pneumonia: 0.91"])
        assert np.abs(as_levels.astype(int) - as_float.astype(int)).max() <= 1
