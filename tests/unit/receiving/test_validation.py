"""Header-only acceptance rules (classify) and structural checks (check_structure)."""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom.dsutils import decode, encode

from dicomnode.errors import RejectedInstance
from dicomnode.receiving.statuses import Status
from dicomnode.receiving.validation import (
    Accept,
    Skip,
    check_structure,
    classify,
)
from tests.helpers import (
    CR_IMAGE_STORAGE,
    SECONDARY_CAPTURE_STORAGE,
    make_cxr_dataset,
    require_shared_data,
)


def _round_trip(ds: Dataset) -> Dataset:
    """The data set as the SCP sees it: encoded on the wire, decoded lazily."""
    payload = encode(ds, False, True)
    assert payload is not None
    return decode(BytesIO(payload), False, True)


def _skip_reason(ds: Dataset) -> str:
    verdict = classify(ds)
    assert isinstance(verdict, Skip), verdict
    return verdict.reason


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"photometric": "MONOCHROME1"},
        {"bits_stored": 8},
        {"bits_stored": 16, "signed": True},
        {"sop_class_uid": CR_IMAGE_STORAGE},
        {"sop_class_uid": SECONDARY_CAPTURE_STORAGE},
        {"rows": 2500, "cols": 2048},
    ],
)
def test_valid_chest_radiographs_are_accepted(overrides: dict[str, object]) -> None:
    ds = make_cxr_dataset(**overrides)  # type: ignore[arg-type]
    assert classify(ds) == Accept()


@pytest.mark.parametrize(
    "body_part", ["CHEST", "THORAX", "chest", "CHEST PA", "PORT CHEST", "LUNG", " THORAX "]
)
def test_chest_body_parts_are_accepted(body_part: str) -> None:
    assert classify(make_cxr_dataset(BodyPartExamined=body_part)) == Accept()


@pytest.mark.parametrize(
    "body_part", ["EXTREMITY", "ABDOMEN", "CHESTABDPELVIS", "CHEST_TO_PELVIS", "HAND", "PA"]
)
def test_other_body_parts_are_skipped(body_part: str) -> None:
    reason = _skip_reason(make_cxr_dataset(BodyPartExamined=body_part))
    assert "BodyPartExamined" in reason and "not a chest" in reason


def test_missing_body_part_is_accepted() -> None:
    ds = make_cxr_dataset()
    del ds.BodyPartExamined
    assert classify(ds) == Accept()


def test_lateral_view_is_accepted() -> None:
    assert classify(make_cxr_dataset(ViewPosition="LL")) == Accept()


def test_multi_frame_is_skipped() -> None:
    ds = make_cxr_dataset(NumberOfFrames=3)
    assert "multi-frame" in _skip_reason(ds)
    assert classify(make_cxr_dataset(NumberOfFrames=1)) == Accept()


def test_colour_is_skipped() -> None:
    assert "SamplesPerPixel is 3" in _skip_reason(make_cxr_dataset(SamplesPerPixel=3))
    assert "PhotometricInterpretation" in _skip_reason(
        make_cxr_dataset(PhotometricInterpretation="PALETTE COLOR")
    )


def test_missing_pixel_data_is_skipped() -> None:
    ds = make_cxr_dataset()
    del ds.PixelData
    assert _skip_reason(ds) == "no PixelData"


@pytest.mark.parametrize(("rows", "cols"), [(32, 64), (64, 63), (16385, 64), (64, 20000)])
def test_absurd_dimensions_are_skipped(rows: int, cols: int) -> None:
    ds = make_cxr_dataset()
    ds.Rows, ds.Columns = rows, cols
    assert "outside 64..16384" in _skip_reason(ds)


def test_inconsistent_bit_depth_is_skipped() -> None:
    assert "BitsStored 17" in _skip_reason(make_cxr_dataset(BitsStored=17))
    assert "BitsAllocated is 32" in _skip_reason(make_cxr_dataset(BitsAllocated=32, BitsStored=12))
    assert "BitsAllocated is 12" in _skip_reason(make_cxr_dataset(BitsAllocated=12))


def test_non_radiography_modality_is_skipped() -> None:
    reason = _skip_reason(make_cxr_dataset(sop_class_uid=SECONDARY_CAPTURE_STORAGE, Modality="CT"))
    assert reason == "Modality 'CT' is not projection radiography"


def test_reasons_never_carry_patient_data() -> None:
    ds = make_cxr_dataset(BodyPartExamined="HAND", PatientName="Secret^Name", PatientID="SECRET-ID")
    reason = _skip_reason(ds)
    assert "Secret" not in reason and "SECRET" not in reason


def test_classify_survives_unreadable_values() -> None:
    ds = make_cxr_dataset()
    ds["Rows"].value = "not a number"
    assert "Rows missing or not a number" in _skip_reason(ds)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("RG1_UNCR.dcm", Accept()),
        ("RG1_J2KR.dcm", Accept()),
        ("siim_cxr_pa_jpeg_baseline.dcm", Accept()),
        ("nih_cxr14_google_dicom_DX.dcm", Accept()),
        ("highdicom_dx_image.dcm", Accept()),
        ("RG3_UNCR.dcm", Skip("BodyPartExamined 'EXTREMITY' is not a chest")),
    ],
)
def test_real_files(name: str, expected: Accept | Skip) -> None:
    ds = pydicom.dcmread(require_shared_data("dicom", name))
    check_structure(ds, ds.file_meta.TransferSyntaxUID)
    assert classify(ds) == expected


# --- check_structure -------------------------------------------------------------


def test_structure_of_a_valid_dataset_passes() -> None:
    check_structure(_round_trip(make_cxr_dataset()), ExplicitVRLittleEndian)


def test_short_native_pixel_data_is_rejected() -> None:
    ds = make_cxr_dataset()
    ds.PixelData = ds.PixelData[:-100]
    with pytest.raises(RejectedInstance) as info:
        check_structure(_round_trip(ds), ExplicitVRLittleEndian)
    assert info.value.status == Status.PIXEL_LENGTH


def test_long_native_pixel_data_is_rejected() -> None:
    ds = make_cxr_dataset(rows=64, cols=64)
    ds.Rows = 32
    with pytest.raises(RejectedInstance) as info:
        check_structure(_round_trip(ds), ExplicitVRLittleEndian)
    assert info.value.status == Status.PIXEL_LENGTH


def test_encapsulated_pixel_data_is_walked_not_decoded() -> None:
    ds = make_cxr_dataset(bits_stored=8)
    ds.PixelData = encapsulate([b"\xff\xd8not really a jpeg\xff\xd9\x00"])
    ds["PixelData"].VR = "OB"
    check_structure(_round_trip(ds), JPEGBaseline8Bit)  # garbage JPEG: decoded later, in the batch

    ds.PixelData = encapsulate([b"\xff\xd8abcd\xff\xd9"])[:-3]  # truncated last fragment
    with pytest.raises(RejectedInstance) as info:
        check_structure(_round_trip(ds), JPEGBaseline8Bit)
    assert info.value.status == Status.CANNOT_UNDERSTAND


def test_undecodable_element_is_rejected() -> None:
    ds = make_cxr_dataset()
    payload = encode(ds, False, True)
    assert payload is not None
    # An element header claiming far more bytes than follow.
    broken = payload + b"\x09\x00\x10\x00LO\xff\x7f" + b"x" * 10
    parsed = decode(BytesIO(broken), False, True)  # lazily: nothing read yet
    with pytest.raises(RejectedInstance) as info:
        check_structure(parsed, ExplicitVRLittleEndian)
    assert info.value.status == Status.CANNOT_UNDERSTAND


