"""The shared pixel pipeline: DICOM/image -> gray [0, 1] -> normalised model input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEGBaseline8Bit

from dicomnode.errors import InferenceError
from dicomnode.inference.manifest import Preprocessing
from dicomnode.inference.preprocess import (
    dicom_to_gray,
    dicom_to_input,
    gray_to_input,
    image_file_to_gray,
    resize_gray,
    unpad_heatmap,
)
from tests.helpers import make_cxr_dataset, require_shared_data

PRE3 = Preprocessing(input_size=32, in_chans=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
PRE1 = Preprocessing(input_size=48, in_chans=1, mean=(0.5,), std=(0.25,), resize="pad")


def _reference() -> np.ndarray:
    return dicom_to_gray(make_cxr_dataset(photometric="MONOCHROME2", bits_stored=12))


def test_gray_is_float32_in_unit_range() -> None:
    gray = _reference()
    assert gray.shape == (64, 64)
    assert gray.dtype == np.float32
    assert 0.0 <= gray.min() and gray.max() <= 1.0
    # the synthetic lungs (dark) are darker than the body between them
    assert gray[32, 19] < gray[32, 32] - 0.2


def test_monochrome1_displays_like_monochrome2() -> None:
    mono1 = dicom_to_gray(make_cxr_dataset(photometric="MONOCHROME1", bits_stored=12))
    np.testing.assert_allclose(mono1, _reference(), atol=2e-3)


@pytest.mark.parametrize(("bits", "signed"), [(8, False), (12, False), (16, False), (12, True), (16, True)])
def test_bit_depths_and_signed_pixels_give_the_same_image(bits: int, signed: bool) -> None:
    gray = dicom_to_gray(make_cxr_dataset(bits_stored=bits, signed=signed))
    np.testing.assert_allclose(gray, _reference(), atol=5e-3)


def test_rescale_slope_and_intercept_are_applied_before_the_window() -> None:
    ds = make_cxr_dataset(bits_stored=12)
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1000
    ds.WindowCenter = 2 * 2048 - 1000
    ds.WindowWidth = 2 * 4096
    np.testing.assert_allclose(dicom_to_gray(ds), _reference(), atol=2e-3)


def test_first_window_is_used_when_there_are_several() -> None:
    ds = make_cxr_dataset(bits_stored=12)
    ds.WindowCenter = [2048, 100]
    ds.WindowWidth = [4096, 10]
    np.testing.assert_allclose(dicom_to_gray(ds), _reference(), atol=2e-3)


def test_narrow_window_clips() -> None:
    ds = make_cxr_dataset(bits_stored=12)
    ds.WindowCenter = 2048
    ds.WindowWidth = 200
    gray = dicom_to_gray(ds)
    assert (gray == 0).mean() > 0.05 and (gray == 1).mean() > 0.5
    assert ((gray > 0) & (gray < 1)).mean() < 0.2


def test_no_window_uses_robust_min_max() -> None:
    ds = make_cxr_dataset(bits_stored=12)
    del ds.WindowCenter
    del ds.WindowWidth
    gray = dicom_to_gray(ds)
    assert gray.min() == 0.0 and gray.max() == 1.0
    # the image content is stretched over the full range, unlike the full-depth window
    assert gray.std() > _reference().std()
    assert np.corrcoef(gray.ravel(), _reference().ravel())[0, 1] > 0.99


def test_voi_lut_sequence_is_applied() -> None:
    ds = make_cxr_dataset(bits_stored=8)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = list(range(255, -1, -1))  # inverting LUT
    ds.VOILUTSequence = Sequence([item])
    del ds.WindowCenter
    del ds.WindowWidth
    gray = dicom_to_gray(ds)
    np.testing.assert_allclose(gray, 1.0 - _reference(), atol=5e-3)


def test_no_pixel_data_is_refused() -> None:
    ds = make_cxr_dataset()
    del ds.PixelData
    with pytest.raises(InferenceError, match="no Pixel Data"):
        dicom_to_gray(ds)


def test_multi_frame_is_refused() -> None:
    ds = make_cxr_dataset()
    ds.NumberOfFrames = 2
    with pytest.raises(InferenceError, match="multi-frame"):
        dicom_to_gray(ds)


def test_colour_is_refused() -> None:
    ds = make_cxr_dataset(bits_stored=8)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    with pytest.raises(InferenceError, match="grayscale"):
        dicom_to_gray(ds)


def test_tiny_image_is_refused() -> None:
    with pytest.raises(InferenceError, match="too small"):
        dicom_to_gray(make_cxr_dataset(rows=16, cols=64))


def test_undecodable_compressed_data_is_refused() -> None:
    ds = make_cxr_dataset(bits_stored=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg at all \xff\xd9"])
    with pytest.raises(InferenceError, match="cannot decode"):
        dicom_to_gray(ds)


def test_gray_to_input_shape_and_normalisation() -> None:
    gray = np.full((100, 60), 0.5, dtype=np.float32)
    x = gray_to_input(gray, PRE3)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    for c in range(3):
        np.testing.assert_allclose(x[c], (0.5 - PRE3.mean[c]) / PRE3.std[c], rtol=1e-5)


def test_pad_mode_letterboxes_and_keeps_aspect() -> None:
    gray = np.ones((100, 50), dtype=np.float32)
    small = resize_gray(gray, 48, "pad")
    assert small.shape == (48, 48)
    assert small[:, :10].max() == 0.0 and small[:, -10:].max() == 0.0  # black side bars
    assert small[:, 14:34].min() > 0.99
    x = gray_to_input(gray, PRE1)
    assert x.shape == (1, 48, 48)
    assert x[0, 24, 0] == pytest.approx(-2.0)  # (0 - 0.5) / 0.25


@pytest.mark.parametrize("shape", [(100, 200), (200, 100), (37, 101), (64, 64)])
def test_unpad_heatmap_crops_exactly_the_letterbox(shape: tuple[int, int]) -> None:
    """A map on the padded input grid, cropped back, covers the image and none of the bars."""
    padded = resize_gray(np.ones(shape, dtype=np.float32), 64, "pad")
    cropped = unpad_heatmap(padded, shape, "pad")
    assert float(cropped.min()) > 0.99
    assert cropped.size == int(np.count_nonzero(padded > 0.5))
    assert cropped.shape[1] / cropped.shape[0] == pytest.approx(shape[1] / shape[0], rel=0.05)
    assert unpad_heatmap(padded, shape, "squash") is padded


def test_big_16_bit_image_is_held_in_few_copies() -> None:
    """A 3000x3000 16-bit image never needs more than a few full-size float copies."""
    import tracemalloc

    ds = make_cxr_dataset(rows=3000, cols=3000, bits_stored=16)
    pre = Preprocessing(input_size=224, in_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    one_float_copy = 3000 * 3000 * 4
    tracemalloc.start()
    try:
        x = dicom_to_input(ds, pre)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert x.shape == (3, 224, 224)
    assert peak < 3 * one_float_copy, f"peak {peak / one_float_copy:.1f} float32 copies"


def test_image_file_to_gray(tmp_path: Path) -> None:
    rgb = np.zeros((40, 50, 3), dtype=np.uint8)
    rgb[:, 25:] = 255
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    gray = image_file_to_gray(path)
    assert gray.shape == (40, 50) and gray.dtype == np.float32
    assert gray[:, :25].max() == 0.0 and gray[:, 25:].min() == 1.0


def test_unreadable_image_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpeg"
    path.write_bytes(b"nope")
    with pytest.raises(InferenceError, match="cannot read image"):
        image_file_to_gray(path)


# --- real DICOM files ---------------------------------------------------------------


def _real(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(require_shared_data("dicom", name))


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("name", ["RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG1_JLSN.dcm"])
def test_rg1_transfer_syntaxes_decode_to_nearly_the_same_image(name: str) -> None:
    reference = resize_gray(dicom_to_gray(_real("RG1_UNCR.dcm")), 256)
    other = resize_gray(dicom_to_gray(_real(name)), 256)
    assert np.abs(other - reference).mean() < 0.01


@pytest.mark.shared_data
def test_rg1_monochrome1_displays_bright_bones() -> None:
    ds = _real("RG1_UNCR.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    gray = resize_gray(dicom_to_gray(ds), 256)
    rows = slice(int(256 * 0.3), int(256 * 0.6))
    spine = gray[rows, 118:138].mean()
    lungs = (gray[rows, 50:80].mean() + gray[rows, 176:206].mean()) / 2
    assert spine > lungs + 0.05, (spine, lungs)


@pytest.mark.shared_data
def test_monochrome2_jpeg_chest_displays_bright_bones() -> None:
    gray = resize_gray(dicom_to_gray(_real("siim_cxr_pa_jpeg_baseline.dcm")), 256)
    rows = slice(int(256 * 0.3), int(256 * 0.6))
    assert gray[rows, 118:138].mean() > (gray[rows, 50:80].mean() + gray[rows, 176:206].mean()) / 2 + 0.05


@pytest.mark.shared_data
def test_tiny_dx_thorax_works() -> None:
    ds = _real("highdicom_dx_image.dcm")
    gray = dicom_to_gray(ds)
    assert gray.shape == (int(ds.Rows), int(ds.Columns))
    x = dicom_to_input(ds, PRE3)
    assert x.shape == (3, 32, 32) and np.isfinite(x).all()
