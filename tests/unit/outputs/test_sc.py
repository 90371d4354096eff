"""Heatmap Secondary Capture: content, references, identity, input checks; every test round-trips."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicomnode.config import OutputSettings
from dicomnode.domain import ModelIdentity
from dicomnode.outputs import codes
from dicomnode.outputs.sc import build_heatmap_sc
from dicomnode.uid import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tests.helpers import CR_IMAGE_STORAGE, SECONDARY_CAPTURE_STORAGE, make_cxr_dataset
from tests.unit.outputs.conftest import header_only, write_and_read


def _build(
    source: Dataset,
    overlay: np.ndarray,
    settings: OutputSettings,
    identity: ModelIdentity,
    **kw: object,
) -> Dataset:
    args: dict[str, object] = {
        "series_instance_uid": "1.2.826.0.1.3680043.8.498.1",
        "series_number": 9901,
        "instance_number": 3,
    }
    args.update(kw)
    return build_heatmap_sc(source, overlay, settings=settings, identity=identity, **args)  # type: ignore[arg-type]


def test_sc_round_trip_uids_patient_study_and_pixels(
    cxr_dataset: Dataset,
    overlay: np.ndarray,
    output_settings: OutputSettings,
    identity: ModelIdentity,
) -> None:
    sc = write_and_read(_build(cxr_dataset, overlay, output_settings, identity))

    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.file_meta.MediaStorageSOPInstanceUID == sc.SOPInstanceUID
    assert sc.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    # dicomnode wrote it, not highdicom:
    assert sc.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert sc.file_meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert sc.StudyInstanceUID == cxr_dataset.StudyInstanceUID
    assert sc.SeriesInstanceUID == "1.2.826.0.1.3680043.8.498.1"
    assert sc.SeriesInstanceUID != cxr_dataset.SeriesInstanceUID
    assert sc.SOPInstanceUID != cxr_dataset.SOPInstanceUID
    assert (sc.SeriesNumber, sc.InstanceNumber) == (9901, 3)
    assert sc.Modality == "OT"
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
    ):
        assert sc[keyword].value == cxr_dataset[keyword].value, keyword

    assert sc.PhotometricInterpretation == "RGB"
    assert (sc.SamplesPerPixel, sc.BitsAllocated, sc.PlanarConfiguration) == (3, 8, 0)
    assert (sc.Rows, sc.Columns) == overlay.shape[:2]
    np.testing.assert_array_equal(sc.pixel_array, overlay)


def test_sc_labels_identity_and_references(
    cxr_dataset: Dataset,
    overlay: np.ndarray,
    output_settings: OutputSettings,
    identity: ModelIdentity,
) -> None:
    sc = write_and_read(_build(cxr_dataset, overlay, output_settings, identity))

    assert sc.SeriesDescription == output_settings.sc_series_description
    assert "not for diagnostic use" in sc.SeriesDescription
    assert "not for diagnostic use" in sc.ImageComments
    assert "RESEARCH" in sc.ImageComments
    assert sc.Manufacturer == output_settings.manufacturer
    assert f"{identity.name} {identity.version}" in list(sc.SoftwareVersions)
    assert sc.BurnedInAnnotation == "YES"
    assert sc.ImageType[:2] == ["DERIVED", "SECONDARY"]
    assert sc.ConversionType == "WSD"

    model = [
        item
        for item in sc.ContributingEquipmentSequence
        if item.get("ManufacturerModelName") == identity.name
    ]
    assert len(model) == 1
    assert model[0].SoftwareVersions == identity.version
    assert identity.weights_sha256 in model[0].ContributionDescription
    assert identity.architecture in model[0].ContributionDescription
    assert model[0].PurposeOfReferenceCodeSequence[0].CodeValue == codes.PROCESSING_EQUIPMENT.value
    assert identity.weights_sha256 in sc.DerivationDescription
    assert sc.DerivationCodeSequence[0].CodeValue == codes.GRADCAM.value

    (reference,) = sc.SourceImageSequence
    assert reference.ReferencedSOPInstanceUID == cxr_dataset.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == cxr_dataset.SOPClassUID
    assert (
        reference.PurposeOfReferenceCodeSequence[0].CodeValue
        == codes.SOURCE_IMAGE_FOR_PROCESSING.value
    )


def test_sc_copies_anatomy_from_source(
    overlay: np.ndarray, output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    source = make_cxr_dataset(
        BodyPartExamined="CHEST", Laterality="R", PatientOrientation=["P", "F"]
    )
    sc = write_and_read(_build(source, overlay, output_settings, identity))
    assert sc.BodyPartExamined == "CHEST"
    assert sc.Laterality == "R"
    assert list(sc.PatientOrientation) == ["P", "F"]


def test_sc_without_body_part_has_no_laterality(
    overlay: np.ndarray, output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    source = make_cxr_dataset()
    del source.BodyPartExamined
    del source.PatientOrientation
    sc = write_and_read(_build(source, overlay, output_settings, identity))
    assert "BodyPartExamined" not in sc
    assert "Laterality" not in sc  # unknown: absent, not empty (dciodvfy, issue 15)
    region = sc.AnatomicRegionSequence[0]
    assert (region.CodeValue, region.CodingSchemeDesignator) == ("51185008", "SCT")
    assert "PatientOrientation" in sc and not sc.PatientOrientation


def test_sc_unpaired_body_part_has_no_laterality(
    cxr_dataset: Dataset,
    overlay: np.ndarray,
    output_settings: OutputSettings,
    identity: ModelIdentity,
) -> None:
    sc = write_and_read(
        _build(cxr_dataset, overlay, output_settings, identity)
    )  # CHEST, ImageLaterality U
    assert sc.BodyPartExamined == "CHEST"
    assert "Laterality" not in sc


@pytest.mark.parametrize(
    ("sop_class", "photometric", "bits"),
    [
        (CR_IMAGE_STORAGE, "MONOCHROME1", 12),
        (SECONDARY_CAPTURE_STORAGE, "MONOCHROME2", 8),
    ],
)
def test_sc_from_header_only_sources(
    sop_class: str,
    photometric: str,
    bits: int,
    overlay: np.ndarray,
    output_settings: OutputSettings,
    identity: ModelIdentity,
) -> None:
    source = header_only(
        make_cxr_dataset(sop_class_uid=sop_class, photometric=photometric, bits_stored=bits)
    )
    assert "PixelData" not in source
    sc = write_and_read(_build(source, overlay, output_settings, identity))
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPClassUID == sop_class
    assert sc.PhotometricInterpretation == "RGB"


def test_sc_uid_is_deterministic_per_series_and_source(
    cxr_dataset: Dataset,
    overlay: np.ndarray,
    output_settings: OutputSettings,
    identity: ModelIdentity,
) -> None:
    first = _build(cxr_dataset, overlay, output_settings, identity)
    again = _build(cxr_dataset, overlay, output_settings, identity)
    other_series = _build(
        cxr_dataset, overlay, output_settings, identity, series_instance_uid=str(generate_uid())
    )
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SOPInstanceUID != other_series.SOPInstanceUID
    chosen = _build(cxr_dataset, overlay, output_settings, identity, sop_instance_uid="1.2.3.4")
    assert chosen.SOPInstanceUID == "1.2.3.4"


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")
def test_sc_drops_invalid_optional_copied_attributes(
    overlay: np.ndarray, output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    source = make_cxr_dataset()
    source.add_new(0x00101010, "AS", "62")  # Patient's Age must look like "062Y"
    source.StudyDescription = "CHEST PA"
    sc = write_and_read(_build(source, overlay, output_settings, identity))
    assert "PatientAge" not in sc
    assert sc.StudyDescription == "CHEST PA"
    assert source.PatientAge == "62"  # the caller's dataset is left alone


def test_sc_does_not_modify_source(
    cxr_dataset: Dataset,
    overlay: np.ndarray,
    output_settings: OutputSettings,
    identity: ModelIdentity,
) -> None:
    before = {element.tag: element.value for element in cxr_dataset}
    _build(cxr_dataset, overlay, output_settings, identity)
    assert {element.tag: element.value for element in cxr_dataset} == before


def test_sc_uses_settings(
    cxr_dataset: Dataset, overlay: np.ndarray, identity: ModelIdentity
) -> None:
    settings = OutputSettings(
        manufacturer="Example Hospital AI",
        institution_name="Example Hospital",
        sc_series_description="Heatmap - research only",
    )
    sc = write_and_read(_build(cxr_dataset, overlay, settings, identity))
    assert sc.Manufacturer == "Example Hospital AI"
    assert sc.InstitutionName == "Example Hospital"
    assert sc.SeriesDescription == "Heatmap - research only"


@pytest.mark.parametrize(
    ("array", "error"),
    [
        (np.zeros((32, 32, 3), dtype=np.float32), TypeError),
        (np.zeros((32, 32), dtype=np.uint8), ValueError),
        (np.zeros((32, 32, 4), dtype=np.uint8), ValueError),
        (np.zeros((1025, 16, 3), dtype=np.uint8), ValueError),
        (np.zeros((0, 16, 3), dtype=np.uint8), ValueError),
    ],
)
def test_sc_rejects_bad_overlays(
    array: np.ndarray,
    error: type[Exception],
    cxr_dataset: Dataset,
    output_settings: OutputSettings,
    identity: ModelIdentity,
) -> None:
    with pytest.raises(error):
        _build(cxr_dataset, array, output_settings, identity)


def test_sc_rejects_list_overlay(
    cxr_dataset: Dataset, output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    with pytest.raises(TypeError):
        _build(cxr_dataset, [[[0, 0, 0]]], output_settings, identity)  # type: ignore[arg-type]


def test_sc_rejects_source_without_study(
    overlay: np.ndarray, output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    source = make_cxr_dataset()
    del source.StudyInstanceUID
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        _build(source, overlay, output_settings, identity)


def test_sc_accepts_full_size_overlay(
    cxr_dataset: Dataset, output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    big = np.full((1024, 820, 3), 200, dtype=np.uint8)
    sc = write_and_read(_build(cxr_dataset, big, output_settings, identity))
    assert (sc.Rows, sc.Columns) == (1024, 820)
