"""Header acceptance: structure (check_structure), UIDs (read_header), command match
(check_command), deflate limit (check_inflated_size) and chest rules (classify)."""

from __future__ import annotations

import zlib
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
    InstanceHeader,
    Skip,
    check_command,
    check_inflated_size,
    check_structure,
    classify,
    read_header,
)
from tests.helpers import (
    CR_IMAGE_STORAGE,
    DX_PRESENTATION_STORAGE,
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




# --- read_header / check_command / check_inflated_size: what the handler refuses, with which status


def _header(**overrides: object) -> InstanceHeader:
    values: dict[str, object] = {
        "sop_class_uid": DX_PRESENTATION_STORAGE,
        "sop_instance_uid": "1.2.3.4",
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.5",
    }
    values.update(overrides)
    return InstanceHeader(**values)  # type: ignore[arg-type]


def test_read_header_returns_the_identifying_uids() -> None:
    ds = make_cxr_dataset()
    header = read_header(_round_trip(ds), ExplicitVRLittleEndian)
    assert header == InstanceHeader(
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
    )


@pytest.mark.parametrize(
    ("keyword", "value", "status"),
    [
        ("StudyInstanceUID", None, Status.MISSING_UID),
        ("SeriesInstanceUID", "", Status.MISSING_UID),
        ("SOPInstanceUID", "1.2.abc", Status.INVALID_UID),
        ("StudyInstanceUID", "1." + "2" * 70, Status.INVALID_VALUE),  # over the UI length: structure
    ],
)
def test_read_header_refuses_missing_and_invalid_uids(keyword: str, value: str | None, status: Status) -> None:
    ds = make_cxr_dataset()
    if value is None:
        delattr(ds, keyword)
    else:
        ds[keyword].value = value
    with pytest.raises(RejectedInstance) as caught:
        read_header(_round_trip(ds), ExplicitVRLittleEndian)
    assert caught.value.status == status


def test_check_command_accepts_a_matching_request() -> None:
    header = _header()
    check_command(
        header,
        command_sop_class_uid=header.sop_class_uid,
        command_sop_instance_uid=header.sop_instance_uid,
        context_sop_class_uid=header.sop_class_uid,
    )


@pytest.mark.parametrize(
    ("command_class", "command_instance", "context_class", "status"),
    [
        (DX_PRESENTATION_STORAGE, "1.2.3.9", DX_PRESENTATION_STORAGE, Status.MISMATCH),
        (DX_PRESENTATION_STORAGE, None, DX_PRESENTATION_STORAGE, Status.MISMATCH),
        (CR_IMAGE_STORAGE, "1.2.3.4", DX_PRESENTATION_STORAGE, Status.MISMATCH),
        (DX_PRESENTATION_STORAGE, "1.2.3.4", CR_IMAGE_STORAGE, Status.MISMATCH),
    ],
)
def test_check_command_refuses_uids_that_differ_from_the_data_set(
    command_class: str, command_instance: str | None, context_class: str, status: Status
) -> None:
    with pytest.raises(RejectedInstance) as caught:
        check_command(
            _header(),
            command_sop_class_uid=command_class,
            command_sop_instance_uid=command_instance,
            context_sop_class_uid=context_class,
        )
    assert caught.value.status == status


def test_check_command_refuses_a_sop_class_the_node_does_not_take() -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    with pytest.raises(RejectedInstance) as caught:
        check_command(
            _header(sop_class_uid=ct),
            command_sop_class_uid=ct,
            command_sop_instance_uid="1.2.3.4",
            context_sop_class_uid=ct,
        )
    assert caught.value.status == Status.SOP_CLASS_NOT_SUPPORTED


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def test_check_inflated_size_takes_a_deflated_data_set_up_to_the_limit() -> None:
    check_inflated_size(_deflate(b"\0" * 1000), limit=1000)


def test_check_inflated_size_refuses_a_deflate_bomb_without_inflating_it_all() -> None:
    with pytest.raises(RejectedInstance) as caught:
        check_inflated_size(_deflate(b"\0" * (64 << 20)), limit=1 << 20)
    assert caught.value.status == Status.DATASET_TOO_LARGE


def test_check_inflated_size_calls_a_corrupt_stream_cannot_understand() -> None:
    with pytest.raises(RejectedInstance) as caught:
        check_inflated_size(b"\xff\xff\xff garbage", limit=1 << 20)
    assert caught.value.status == Status.CANNOT_UNDERSTAND
