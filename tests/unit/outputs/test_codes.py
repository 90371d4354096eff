"""Coded concepts: finding codes per label, private codes, and the fixed concepts."""

from __future__ import annotations

import pytest
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes as dcm
from pydicom.sr.coding import Code

from dicomnode.domain import NotAssessedReason
from dicomnode.outputs import codes


@pytest.mark.parametrize(
    ("label", "value", "scheme", "meaning"),
    [
        ("pneumonia", "233604007", "SCT", "Pneumonia"),
        ("Pneumonia", "233604007", "SCT", "Pneumonia"),
        ("effusion", "60046008", "SCT", "Pleural effusion"),
        ("Pleural Effusion", "60046008", "SCT", "Pleural effusion"),
        ("pneumothorax", "36118008", "SCT", "Pneumothorax"),
        ("infiltration", "112121", "DCM", "Infiltrate"),
        ("Pleural_Thickening", "PLEURALTHICKEN", "99DCMNODE", "Pleural thickening"),
        ("pleural-thickening", "PLEURALTHICKEN", "99DCMNODE", "Pleural thickening"),
        ("oedema", "19242006", "SCT", "Pulmonary edema"),
        ("Hernia", "84089009", "SCT", "Hiatal hernia"),
    ],
)
def test_label_to_code_known_labels(label: str, value: str, scheme: str, meaning: str) -> None:
    concept = codes.label_to_code(label)
    assert isinstance(concept, CodedConcept)
    assert (concept.value, concept.scheme_designator, concept.meaning) == (value, scheme, meaning)


def test_all_nih_labels_are_coded_and_distinct() -> None:
    concepts = [codes.label_to_code(label) for label in codes.NIH_CHESTXRAY14_LABELS]
    assert len(concepts) == 14
    assert len({(c.value, c.scheme_designator) for c in concepts}) == 14
    private = [
        label for label in codes.NIH_CHESTXRAY14_LABELS if not codes.is_standard_label(label)
    ]
    assert private == ["pleural_thickening"]


def test_codes_that_ps316_lists_match_pydicom_dictionary() -> None:
    """Codes documented as PS3.16 have exactly the value/meaning of pydicom's dictionary."""
    expected = {
        codes.label_to_code("effusion"): dcm.SCT.PleuralEffusion,
        codes.label_to_code("infiltration"): dcm.DCM.Infiltrate,
        codes.label_to_code("mass"): dcm.SCT.Mass,
        codes.label_to_code("nodule"): dcm.SCT.Nodule,
        codes.label_to_code("pneumothorax"): dcm.SCT.Pneumothorax,
        codes.label_to_code("edema"): dcm.SCT.PulmonaryEdema,
        codes.PRESENT: dcm.SCT.Present,
        codes.ABSENT: dcm.SCT.Absent,
        codes.PROBABILITY: dcm.DCM.Probability,
        codes.COMMENT: dcm.DCM.Comment,
        codes.NOT_EVALUATED: dcm.SCT.NotEvaluated,
        codes.POPULATION_UNKNOWN: dcm.SCT.Unknown,
        codes.not_assessed_code(NotAssessedReason.NO_IMAGE_CONTENT): dcm.DCM.UnusableQualityRendersImageUnusable,
        codes.THRESHOLD_VALUE: dcm.DCM.ThresholdValue,
        codes.ALGORITHM_FAMILY_AI: dcm.DCM.ArtificialIntelligence,
        codes.GRADCAM: dcm.DCM.GradientWeightedClassActivation,
        codes.SOURCE_IMAGE_FOR_PROCESSING: dcm.DCM.SourceImageForImageProcessingOperation,
        codes.PROCESSING_EQUIPMENT: dcm.DCM.ProcessingEquipment,
        codes.DEVICE_OBSERVER: dcm.DCM.Device,
        codes.BEST_ILLUSTRATION_OF_FINDING: dcm.DCM.BestIllustrationOfFinding,
        codes.REPORT_TITLE: dcm.DCM.ImagingMeasurementReport,
    }
    for ours, reference in expected.items():
        assert (ours.value, ours.scheme_designator) == (
            reference.value,
            reference.scheme_designator,
        )
        assert ours.meaning.lower() == reference.meaning.lower()


def test_procedure_code_is_the_ps316_chest_imaging_concept() -> None:
    reference = dcm.SCT.ChestImaging
    assert codes.PROCEDURE_CHEST_IMAGING.value == reference.value
    assert reference.meaning.startswith(codes.PROCEDURE_CHEST_IMAGING.meaning)


def test_unknown_label_gets_private_code_within_vr_limits() -> None:
    short = codes.label_to_code("tuberculosis")
    assert (short.value, short.scheme_designator, short.meaning) == (
        "TUBERCULOSIS",
        "99DCMNODE",
        "Tuberculosis",
    )
    assert not codes.is_standard_label("tuberculosis")

    long_a = codes.label_to_code("enlarged_cardiomediastinum_left")
    long_b = codes.label_to_code("enlarged_cardiomediastinum_right")
    for concept in (long_a, long_b):
        assert concept.scheme_designator == "99DCMNODE"
        assert len(concept.value) <= 16  # CodeValue is SH
        assert len(concept.meaning) <= 64  # CodeMeaning is LO
    assert long_a.value != long_b.value
    assert codes.label_to_code("enlarged_cardiomediastinum_left").value == long_a.value  # stable


@pytest.mark.parametrize("label", ["", "  ", "__", "?!"])
def test_label_without_letters_is_rejected(label: str) -> None:
    with pytest.raises(ValueError, match="no letters"):
        codes.label_to_code(label)


def test_normalize_label_and_aliases() -> None:
    assert codes.normalize_label("  Pleural Thickening ") == "pleural_thickening"
    assert codes.normalize_label("PULMONARY-EDEMA") == "edema"
    assert codes.normalize_label("Infiltrate") == "infiltration"


def test_presence_code() -> None:
    assert codes.presence_code(True) == Code("52101004", "SCT", "Present")
    assert codes.presence_code(False) == Code("272519000", "SCT", "Absent")


def test_private_coding_scheme_item() -> None:
    item = codes.private_coding_scheme()
    assert item.CodingSchemeDesignator == "99DCMNODE"
    assert item.CodingSchemeDesignator.startswith("99")


def test_every_not_assessed_reason_has_one_distinct_code() -> None:
    values = [codes.not_assessed_code(reason) for reason in NotAssessedReason]
    assert len({(c.value, c.scheme_designator) for c in values}) == len(NotAssessedReason)
    assert all(len(c.value) <= 16 and len(c.meaning) <= 64 for c in values)
