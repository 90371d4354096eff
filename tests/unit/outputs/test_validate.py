"""The output gate: valid results pass, each kind of defect is reported (all at once)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicomnode.config import OutputSettings
from dicomnode.domain import ModelIdentity, Prediction
from dicomnode.errors import OutputBuildError
from dicomnode.outputs.sc import build_heatmap_sc
from dicomnode.outputs.sr import ImageFindings, build_findings_sr
from dicomnode.outputs.validate import drop_invalid_elements, validate_result
from tests.helpers import make_cxr_dataset


@pytest.fixture
def heatmap(
    cxr_dataset: Dataset,
    overlay: np.ndarray,
    output_settings: OutputSettings,
    identity: ModelIdentity,
) -> Dataset:
    return build_heatmap_sc(
        cxr_dataset, overlay, series_instance_uid="1.2.3.1", series_number=9901, instance_number=1,
        settings=output_settings, identity=identity,
    )  # fmt: skip


@pytest.fixture
def report(
    cxr_dataset: Dataset, heatmap: Dataset, output_settings: OutputSettings, identity: ModelIdentity
) -> Dataset:
    prediction = Prediction(
        labels=("pneumonia", "effusion"), probabilities=(0.7, 0.2), thresholds=(0.5, 0.5)
    )
    return build_findings_sr(
        [ImageFindings(cxr_dataset, prediction, {0: heatmap})], series_instance_uid="1.2.3.2", series_number=9902,
        settings=output_settings, identity=identity,
    )  # fmt: skip


def test_valid_results_pass(heatmap: Dataset, report: Dataset) -> None:
    validate_result(heatmap)
    validate_result(report)


def test_validation_returns_the_checked_part10_bytes(heatmap: Dataset, report: Dataset) -> None:
    from io import BytesIO

    from pydicom import dcmread

    for ds in (heatmap, report):
        encoded = validate_result(ds)
        assert encoded[128:132] == b"DICM"
        back = dcmread(BytesIO(encoded))
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert back.SOPClassUID == ds.SOPClassUID


def test_missing_attributes_are_all_listed(heatmap: Dataset) -> None:
    broken = copy.deepcopy(heatmap)
    del broken.PatientID
    del broken.Modality
    broken.SOPInstanceUID = "1.2.3.4"  # no longer equals MediaStorageSOPInstanceUID
    with pytest.raises(OutputBuildError) as caught:
        validate_result(broken)
    message = str(caught.value)
    assert "PatientID (Type 2) is missing" in message
    assert "Modality (Type 1) is missing" in message
    assert "MediaStorageSOPInstanceUID differs" in message


def test_sc_pixel_module_consistency(heatmap: Dataset) -> None:
    short = copy.deepcopy(heatmap)
    short.PixelData = short.PixelData[:-6]
    with pytest.raises(OutputBuildError, match="PixelData has"):
        validate_result(short)

    gray = copy.deepcopy(heatmap)
    gray.PhotometricInterpretation = "MONOCHROME2"
    with pytest.raises(OutputBuildError, match="needs SamplesPerPixel 1"):
        validate_result(gray)

    bits = copy.deepcopy(heatmap)
    bits.HighBit = 3
    with pytest.raises(OutputBuildError, match="bits inconsistent"):
        validate_result(bits)


def test_sr_document_checks(report: Dataset) -> None:
    flags = copy.deepcopy(report)
    flags.CompletionFlag = "DONE"
    del flags.VerificationFlag
    with pytest.raises(OutputBuildError) as caught:
        validate_result(flags)
    assert "CompletionFlag 'DONE'" in str(caught.value)
    assert "VerificationFlag (Type 1) is missing" in str(caught.value)

    no_content = copy.deepcopy(report)
    del no_content.ContentSequence
    with pytest.raises(OutputBuildError, match="ContentSequence"):
        validate_result(no_content)


def test_sr_reference_missing_from_evidence(report: Dataset, heatmap: Dataset) -> None:
    broken = copy.deepcopy(report)
    evidence = broken.CurrentRequestedProcedureEvidenceSequence[0]
    evidence.ReferencedSeriesSequence = [
        series for series in evidence.ReferencedSeriesSequence
        if series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID != heatmap.SOPInstanceUID
    ]  # fmt: skip
    with pytest.raises(OutputBuildError, match=f"content references {heatmap.SOPInstanceUID}"):
        validate_result(broken)

    none = copy.deepcopy(report)
    del none.CurrentRequestedProcedureEvidenceSequence
    with pytest.raises(OutputBuildError, match="no evidence"):
        validate_result(none)


def _measurement_groups(report: Dataset) -> list[Dataset]:
    (measurements,) = [
        item
        for item in report.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "126010"
    ]
    return list(measurements.ContentSequence)


def test_sr_tid1500_skeleton(report: Dataset) -> None:
    not_a_group = copy.deepcopy(report)
    group = _measurement_groups(not_a_group)[0]
    group.ValueType = "TEXT"  # a measurement group that is no longer a container
    group.TextValue = "oops"
    with pytest.raises(OutputBuildError, match="item 0 is not a Measurement Group container"):
        validate_result(not_a_group)

    untracked = copy.deepcopy(report)
    group = _measurement_groups(untracked)[0]
    group.ContentSequence = [
        item
        for item in group.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue != "112040"
    ]
    with pytest.raises(OutputBuildError, match="Measurement Group 0 lacks its Tracking"):
        validate_result(untracked)

    no_observer = copy.deepcopy(report)
    no_observer.ContentSequence = [
        item
        for item in no_observer.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue != "121005"
    ]
    with pytest.raises(OutputBuildError, match="no Observer Type"):
        validate_result(no_observer)


def test_sr_content_item_rules(report: Dataset) -> None:
    broken = copy.deepcopy(report)
    group = _measurement_groups(broken)[0]
    texts = [item for item in group.ContentSequence if item.ValueType == "TEXT"]
    del texts[0].TextValue
    nums = [
        child for item in group.ContentSequence for child in item.get("ContentSequence", []) if child.ValueType == "NUM"
    ]  # the probability hangs under its finding's CODE item
    del nums[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence
    codes_ = [item for item in group.ContentSequence if item.ValueType == "CODE"]
    codes_[0].RelationshipType = "IS ABOUT"
    with pytest.raises(OutputBuildError) as caught:
        validate_result(broken)
    message = str(caught.value)
    assert "TEXT item has no TextValue" in message
    assert "NUM item lacks its numeric value or unit" in message
    assert "RelationshipType 'IS ABOUT' is not valid" in message


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS", "ignore:The value length")
def test_invalid_values_are_reported_without_the_value(heatmap: Dataset) -> None:
    broken = copy.deepcopy(heatmap)
    broken.add_new(0x00101010, "AS", "62")  # Patient's Age
    broken.add_new(0x00081030, "LO", "x" * 70)  # Study Description too long
    with pytest.raises(OutputBuildError) as caught:
        validate_result(broken)
    message = str(caught.value)
    assert "PatientAge: invalid AS value" in message
    assert "StudyDescription: invalid LO value" in message
    assert "x" * 70 not in message


def test_foreign_sop_class_is_rejected() -> None:
    source = make_cxr_dataset()
    with pytest.raises(OutputBuildError, match="not one dicomnode produces"):
        validate_result(source)


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")
def test_drop_invalid_elements_only_drops_invalid_ones() -> None:
    ds = Dataset()
    ds.add_new(0x00101010, "AS", "62")
    ds.add_new(0x00081030, "LO", "CHEST PA")
    ds.add_new(0x00200011, "IS", "12")
    dropped = drop_invalid_elements(ds, [element.tag for element in ds])
    assert dropped == ["PatientAge"]
    assert "PatientAge" not in ds
    assert ds.StudyDescription == "CHEST PA"
    assert ds.SeriesNumber == 12


def test_uid_with_a_trailing_newline_is_refused(heatmap: Dataset) -> None:
    """``re.match`` with ``^...$`` accepts "1.2.3\\n" (issue 15); the gate uses the package's
    one validator, ``dicomnode.uid.is_valid_uid``. pydicom's ``UID`` strips whitespace
    when a value is set, so the raw value is planted behind the element here, as a
    builder bypassing pydicom's conversion would leave it."""
    broken = copy.deepcopy(heatmap)
    broken["SeriesInstanceUID"]._value = "1.2.3\n"
    with pytest.raises(OutputBuildError, match="SeriesInstanceUID .* is not a valid UID"):
        validate_result(broken)
