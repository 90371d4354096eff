"""Heatmap SCs of real radiographs through the pipeline with the shipped model.

A clear normal must carry no saturated red (a negative decision gets no colour at
all) and a clear pneumonia must. "Saturated red" = pixels with R > 200 and
R - max(G, B) > 100, counted in the image part of the SC (the legend's colour bar,
whose hot end also qualifies, is excluded where it exists).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from dicomnode.config import OutputSettings
from dicomnode.inference.registry import resolve_manifest
from dicomnode.inference.runner import ModelRunner
from dicomnode.pipeline import PipelineOptions, analyse_files
from tests.helpers import REPO_ROOT, make_cxr_dataset, require_shared_data

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]

KERMANY_PNEUMONIA = ("kermany_224", "train", "PNEUMONIA", "person1000_bacteria_2931.jpeg")


def saturated_red(rgb: np.ndarray) -> int:
    """Number of saturated red pixels: R > 200 and R - max(G, B) > 100."""
    wide = rgb.astype(int)
    red, rest = wide[..., 0], np.maximum(wide[..., 1], wide[..., 2])
    return int(((red > 200) & (red - rest > 100)).sum())


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    if not (REPO_ROOT / "models" / "default" / "model.safetensors").is_file():
        pytest.skip("models/default is not here")
    return ModelRunner.from_loaded(resolve_manifest("default"), device="cpu")


def _heatmap_sc(runner: ModelRunner, source: Path, out: Path) -> np.ndarray:
    options = PipelineOptions(outputs=OutputSettings(), explain="all")
    written = analyse_files([source], runner, options, out)
    scs = [dcmread(p) for paths in written.written.values() for p in paths if "PixelData" in dcmread(p)]
    assert len(scs) == 1
    pixels: np.ndarray = scs[0].pixel_array
    assert pixels.ndim == 3 and pixels.shape[2] == 3
    return pixels


@pytest.mark.parametrize("name", ["nih_cxr14_google_dicom_DX.dcm", "siim_cxr_pa_jpeg_baseline.dcm"])
def test_clear_normal_has_no_saturated_red(runner: ModelRunner, tmp_path: Path, name: str) -> None:
    source = require_shared_data("dicom", name)
    sc = _heatmap_sc(runner, source, tmp_path)
    # negative: no colour anywhere, legend band included (it has no colour bar)
    assert saturated_red(sc) == 0
    spread = sc.astype(int).max(axis=2) - sc.astype(int).min(axis=2)
    assert spread.max() <= 2


def test_clear_pneumonia_has_saturated_red(runner: ModelRunner, tmp_path: Path) -> None:
    jpeg = require_shared_data(*KERMANY_PNEUMONIA)
    pixels = np.asarray(Image.open(jpeg).convert("L"), dtype=np.uint8)
    ds = make_cxr_dataset(rows=pixels.shape[0], cols=pixels.shape[1], bits_stored=8)
    ds.PixelData = pixels.tobytes()
    ds.WindowCenter, ds.WindowWidth = 128, 256
    source = tmp_path / "pneumonia.dcm"
    ds.save_as(source, enforce_file_format=True)
    sc = _heatmap_sc(runner, source, tmp_path / "out")
    # 224 px source, never upscaled: the image part is the top 224 rows
    image_part = sc[: pixels.shape[0]]
    assert saturated_red(image_part) > 0.01 * pixels.size
