"""Findings SR (TID 1500): tree content, references, identity, evidence, input checks.

Every test writes the SR to memory and reads it back; the tree is then checked both with
plain pydicom traversal and through highdicom's TID 1500 parser.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from highdicom.sr import ComprehensiveSR
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm
from pydicom.uid import ComprehensiveSRStorage, generate_uid

from dicomnode.config import OutputSettings
from dicomnode.domain import (
    ModelIdentity,
    NotAssessedReason,
    PopulationCheck,
    PopulationStatus,
    Prediction,
)
from dicomnode.outputs import codes
from dicomnode.outputs.sc import build_heatmap_sc
from dicomnode.outputs.sr import ImageFindings, PriorReport, build_findings_sr, device_observer_uid
from dicomnode.uid import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tests.helpers import CR_IMAGE_STORAGE, make_cxr_dataset
from tests.unit.outputs.conftest import header_only, write_and_read

SR_SERIES = "1.2.826.0.1.3680043.8.498.2"


def _sc_for(
    source: Dataset,
    overlay: np.ndarray,
    settings: OutputSettings,
    identity: ModelIdentity,
    number: int,
) -> Dataset:
    return build_heatmap_sc(
        source, overlay, series_instance_uid="1.2.826.0.1.3680043.8.498.3", series_number=9901,
        instance_number=number, settings=settings, identity=identity,
    )  # fmt: skip


def _build(
    sources: list[Dataset],
    predictions: list[Prediction],
    heatmaps: list[Dataset | None],
    settings: OutputSettings,
    identity: ModelIdentity,
    **kw: object,
) -> Dataset:
    """Assessed images; a heatmap illustrates the image's reported (top) finding."""
    images = [
        ImageFindings(source, prediction, {prediction.top_index: heatmap} if heatmap is not None else {})
        for source, prediction, heatmap in zip(sources, predictions, heatmaps, strict=False)
    ]
    if len(sources) != len(predictions):
        raise ValueError("sources and predictions must have the same length")
    return build_findings_sr(
        images, series_instance_uid=SR_SERIES, series_number=9902,
        settings=settings, identity=identity, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def _walk(items: list[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _name(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return code.CodeValue, code.CodingSchemeDesignator


def _groups(sr: Dataset) -> list[Dataset]:
    return [
        item
        for item in _walk(sr.ContentSequence)
        if item.ValueType == "CONTAINER" and _name(item) == ("125007", "DCM")
    ]


def _children(group: Dataset, code: object) -> list[Dataset]:
    key = (code.value, code.scheme_designator)  # type: ignore[attr-defined]
    return [item for item in group.ContentSequence if _name(item) == key]


def _text_values(group: Dataset, code: object) -> list[str]:
    return [str(item.TextValue) for item in _children(group, code)]


def _num(group: Dataset, code: object) -> float:
    (item,) = _children(group, code)
    return float(item.MeasuredValueSequence[0].NumericValue)


def _evaluation(group: Dataset, label: str) -> Dataset:
    """The CODE item "<finding> = Present | Absent" of an image group."""
    code = codes.label_to_code(label)
    (item,) = [i for i in group.ContentSequence if i.ValueType == "CODE" and _name(i) == (code.value, code.scheme_designator)]
    return item


def _value(item: Dataset) -> str:
    return str(item.ConceptCodeSequence[0].CodeValue)


def _refs(group: Dataset, code: object) -> list[str]:
    return [
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in _children(group, code)
    ]


def _evidence(sr: Dataset) -> set[str]:
    return {
        instance.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }


def test_single_image_report(
    cxr_dataset: Dataset,
    overlay: np.ndarray,
    output_settings: OutputSettings,
    identity: ModelIdentity,
) -> None:
    heatmap = _sc_for(cxr_dataset, overlay, output_settings, identity, 1)
    prediction = Prediction(labels=("pneumonia",), probabilities=(0.8125,), thresholds=(0.4375,))
    sr = write_and_read(_build([cxr_dataset], [prediction], [heatmap], output_settings, identity))

    assert sr.SOPClassUID == ComprehensiveSRStorage
    assert sr.Modality == "SR"
    # dicomnode wrote it, not highdicom:
    assert sr.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert sr.file_meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert sr.StudyInstanceUID == cxr_dataset.StudyInstanceUID
    assert sr.SeriesInstanceUID == SR_SERIES
    assert (sr.SeriesNumber, sr.InstanceNumber) == (9902, 1)
    assert sr.PatientID == cxr_dataset.PatientID and sr.PatientName == cxr_dataset.PatientName
    assert sr.AccessionNumber == cxr_dataset.AccessionNumber
    assert sr.ContentQualification == "RESEARCH"
    assert sr.SeriesDescription == output_settings.sr_series_description
    assert "not for diagnostic use" in sr.SeriesDescription
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.Manufacturer == output_settings.manufacturer
    assert _evidence(sr) == {cxr_dataset.SOPInstanceUID, heatmap.SOPInstanceUID}

    (group,) = _groups(sr)
    assert _children(group, dcm.DCM.Finding) == []  # no unqualified "Finding = Pneumonia"
    evaluation = _evaluation(group, "pneumonia")
    assert _value(evaluation) == codes.PRESENT.value
    assert _num(evaluation, codes.PROBABILITY) == pytest.approx(0.8125)
    assert _num(evaluation, codes.THRESHOLD_VALUE) == pytest.approx(0.4375)
    unit = _children(evaluation, codes.PROBABILITY)[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("{probability}", "UCUM")
    assert _refs(group, dcm.DCM.SourceOfMeasurement) == [cxr_dataset.SOPInstanceUID]
    assert _refs(evaluation, codes.BEST_ILLUSTRATION_OF_FINDING) == [heatmap.SOPInstanceUID]
    (conclusions,) = _children(sr, codes.QUALITATIVE_EVALUATIONS)
    (study_level,) = conclusions.ContentSequence
    assert _name(study_level) == ("233604007", "SCT") and _value(study_level) == codes.PRESENT.value
    assert _num(study_level, codes.THRESHOLD_VALUE) == pytest.approx(0.4375)
    assert "PredecessorDocumentsSequence" not in sr

    assert _text_values(group, dcm.DCM.AlgorithmName) == [identity.name]
    assert _text_values(group, dcm.DCM.AlgorithmVersion) == [identity.version]
    parameters = _text_values(group, dcm.DCM.AlgorithmParameters)
    assert f"weights_sha256={identity.weights_sha256}" in parameters
    assert f"architecture={identity.architecture}" in parameters
    assert "thresholds=pneumonia:0.4375" in parameters
    (family,) = _children(group, dcm.DCM.AlgorithmFamily)
    assert family.ConceptCodeSequence[0].CodeValue == codes.ALGORITHM_FAMILY_AI.value


def test_report_parses_with_highdicom(
    cxr_dataset: Dataset,
    overlay: np.ndarray,
    output_settings: OutputSettings,
    identity: ModelIdentity,
) -> None:
    heatmap = _sc_for(cxr_dataset, overlay, output_settings, identity, 1)
    prediction = Prediction(labels=("pneumonia",), probabilities=(0.3,), thresholds=(0.5,))
    sr = ComprehensiveSR.from_dataset(
        write_and_read(_build([cxr_dataset], [prediction], [heatmap], output_settings, identity))
    )

    (observer,) = sr.content.get_observer_contexts()
    attributes = observer.observer_identifying_attributes
    assert attributes.uid == device_observer_uid(identity)
    assert attributes.name == identity.name
    (group,) = sr.content.get_image_measurement_groups()
    assert group.finding_type is None
    (evaluation,) = group.get_qualitative_evaluations(name=codes.label_to_code("pneumonia"))
    assert evaluation.value.value == codes.ABSENT.value
    assert [image.referenced_sop_instance_uid for image in group.source_images] == [
        cxr_dataset.SOPInstanceUID
    ]
    # The document modules are built from the root container alone (speed): everything
    # the tree references must still be in the evidence, and nothing else.
    from highdicom.sr import ValueTypeValues
    from highdicom.sr.utils import find_content_items

    referenced = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in find_content_items(sr, value_type=ValueTypeValues.IMAGE, recursive=True)
    }
    assert referenced == _evidence(sr) == {cxr_dataset.SOPInstanceUID, heatmap.SOPInstanceUID}


def test_multi_image_multi_label_report(
    study_uid: str, overlay: np.ndarray, output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    sources = [
        make_cxr_dataset(study_uid=study_uid),
        header_only(
            make_cxr_dataset(
                study_uid=study_uid, sop_class_uid=CR_IMAGE_STORAGE, photometric="MONOCHROME1"
            )
        ),
    ]
    predictions = [
        Prediction(
            labels=("effusion", "pneumonia", "tuberculosis"),
            probabilities=(0.2, 0.9, 0.6),
            thresholds=(0.5, 0.5, 0.7),
        ),
        Prediction(
            labels=("effusion", "pneumonia", "tuberculosis"),
            probabilities=(0.7, 0.1, 0.05),
            thresholds=(0.5, 0.5, 0.7),
        ),
    ]
    heatmaps: list[Dataset | None] = [
        _sc_for(sources[0], overlay, output_settings, identity, 1),
        None,
    ]
    sr = write_and_read(_build(sources, predictions, heatmaps, output_settings, identity))

    first, second = sources[0].SOPInstanceUID, sources[1].SOPInstanceUID
    groups = {_refs(g, dcm.DCM.SourceOfMeasurement)[0]: g for g in _groups(sr)}
    assert list(groups) == [first, second]  # one group per image
    seen = {
        (uid, label): (
            _value(_evaluation(g, label)),
            _num(_evaluation(g, label), codes.PROBABILITY),
            _num(_evaluation(g, label), codes.THRESHOLD_VALUE),
            _refs(_evaluation(g, label), codes.BEST_ILLUSTRATION_OF_FINDING),
        )
        for uid, g in groups.items()
        for label in ("effusion", "pneumonia", "tuberculosis")
    }
    present, absent = codes.PRESENT.value, codes.ABSENT.value
    assert seen[(first, "pneumonia")] == (present, pytest.approx(0.9), pytest.approx(0.5), [heatmaps[0].SOPInstanceUID])  # type: ignore[union-attr]
    assert seen[(first, "effusion")] == (absent, pytest.approx(0.2), pytest.approx(0.5), [])
    assert seen[(first, "tuberculosis")][:3] == (absent, pytest.approx(0.6), pytest.approx(0.7))  # 0.6 < 0.7
    assert seen[(second, "effusion")] == (present, pytest.approx(0.7), pytest.approx(0.5), [])
    assert _evidence(sr) == {first, second, heatmaps[0].SOPInstanceUID}  # type: ignore[union-attr]
    (conclusions,) = _children(sr, codes.QUALITATIVE_EVALUATIONS)
    study_level = {_name(i)[0]: _value(i) for i in conclusions.ContentSequence}
    assert study_level == {"60046008": present, "233604007": present, codes.label_to_code("tuberculosis").value: absent}

    # the private scheme is declared because "tuberculosis" has no standard code here
    assert [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence] == [
        "99DCMNODE"
    ]
    library = [
        item
        for item in _walk(sr.ContentSequence)
        if item.ValueType == "IMAGE" and _name(item) == ("260753009", "SCT")
    ]
    assert {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in library
    } == _evidence(sr)


def test_standard_labels_declare_no_private_scheme(
    cxr_dataset: Dataset, output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    prediction = Prediction(labels=("pneumonia",), probabilities=(0.5,), thresholds=(0.5,))
    sr = write_and_read(_build([cxr_dataset], [prediction], [None], output_settings, identity))
    assert "CodingSchemeIdentificationSequence" not in sr
    (group,) = _groups(sr)
    evaluation = _evaluation(group, "pneumonia")
    assert _refs(evaluation, codes.BEST_ILLUSTRATION_OF_FINDING) == []
    assert _evidence(sr) == {cxr_dataset.SOPInstanceUID}
    assert _value(evaluation) == codes.PRESENT.value  # probability == threshold


def test_sr_uses_settings(cxr_dataset: Dataset, identity: ModelIdentity) -> None:
    settings = OutputSettings(
        content_qualification="PRODUCT",
        sr_series_description="AI findings (test)",
        institution_name="Example Hospital",
    )
    prediction = Prediction(labels=("pneumonia",), probabilities=(0.5,), thresholds=(0.5,))
    sr = write_and_read(_build([cxr_dataset], [prediction], [None], settings, identity))
    assert sr.ContentQualification == "PRODUCT"
    assert sr.SeriesDescription == "AI findings (test)"
    assert sr.InstitutionName == "Example Hospital"


def test_sr_rejects_content_qualification_dicom_does_not_define(
    cxr_dataset: Dataset, identity: ModelIdentity
) -> None:
    with pytest.raises(ValueError, match="content_qualification"):
        OutputSettings(content_qualification="DEVELOPMENT")  # type: ignore[arg-type]
    # The builder keeps its own guard for settings built without validation.
    settings = OutputSettings.model_construct(content_qualification="DEVELOPMENT")
    prediction = Prediction(labels=("pneumonia",), probabilities=(0.5,), thresholds=(0.5,))
    with pytest.raises(ValueError, match="DEVELOPMENT"):
        _build([cxr_dataset], [prediction], [None], settings, identity)


def test_sr_uid_deterministic(
    cxr_dataset: Dataset, output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    prediction = Prediction(labels=("pneumonia",), probabilities=(0.5,), thresholds=(0.5,))
    first = _build([cxr_dataset], [prediction], [None], output_settings, identity)
    again = _build([cxr_dataset], [prediction], [None], output_settings, identity)
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert (
        _build(
            [cxr_dataset],
            [prediction],
            [None],
            output_settings,
            identity,
            sop_instance_uid="1.2.3.9",
        ).SOPInstanceUID
        == "1.2.3.9"
    )


def test_sr_tolerates_sources_without_type2_patient_attributes(
    output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    source = make_cxr_dataset()
    for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber"):
        delattr(source, keyword)
    prediction = Prediction(labels=("pneumonia",), probabilities=(0.5,), thresholds=(0.5,))
    sr = write_and_read(_build([source], [prediction], [None], output_settings, identity))
    for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber"):
        assert keyword in sr and not sr[keyword].value
    assert "PatientBirthDate" not in source  # caller's dataset untouched


def _one() -> Prediction:
    return Prediction(labels=("pneumonia",), probabilities=(0.5,), thresholds=(0.5,))


def test_sr_rejects_mixed_studies(output_settings: OutputSettings, identity: ModelIdentity) -> None:
    sources = [make_cxr_dataset(), make_cxr_dataset()]
    with pytest.raises(ValueError, match="studies"):
        _build(sources, [_one(), _one()], [None, None], output_settings, identity)


def test_sr_rejects_length_mismatch_and_empty(
    cxr_dataset: Dataset, output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    with pytest.raises(ValueError, match="same length"):
        _build([cxr_dataset], [_one(), _one()], [None], output_settings, identity)
    with pytest.raises(ValueError, match="at least one"):
        _build([], [], [], output_settings, identity)
    with pytest.raises(ValueError, match="at least one"):
        build_findings_sr(
            [ImageFindings(cxr_dataset, not_assessed=NotAssessedReason.UNDECODABLE)],
            series_instance_uid=SR_SERIES, series_number=9902, settings=output_settings, identity=identity,
        )  # fmt: skip


def test_sr_rejects_duplicate_source(
    cxr_dataset: Dataset, output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    with pytest.raises(ValueError, match="twice"):
        _build(
            [cxr_dataset, cxr_dataset], [_one(), _one()], [None, None], output_settings, identity
        )


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan")])
def test_sr_rejects_probability_out_of_range(
    value: float, cxr_dataset: Dataset, output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    prediction = Prediction(labels=("pneumonia",), probabilities=(value,), thresholds=(0.5,))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _build([cxr_dataset], [prediction], [None], output_settings, identity)


def test_sr_rejects_heatmap_of_another_study(
    cxr_dataset: Dataset,
    overlay: np.ndarray,
    output_settings: OutputSettings,
    identity: ModelIdentity,
) -> None:
    stranger = make_cxr_dataset(study_uid=str(generate_uid()))
    heatmap = _sc_for(stranger, overlay, output_settings, identity, 1)
    with pytest.raises(ValueError, match="another study"):
        _build([cxr_dataset], [_one()], [heatmap], output_settings, identity)
    with pytest.raises(ValueError, match="Secondary Capture"):
        _build(
            [cxr_dataset],
            [_one()],
            [make_cxr_dataset(study_uid=cxr_dataset.StudyInstanceUID)],
            output_settings,
            identity,
        )


def test_not_assessed_population_and_predecessor(
    study_uid: str, output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    assessed, adult, gated = (make_cxr_dataset(study_uid=study_uid) for _ in range(3))
    prediction = Prediction(labels=("pneumonia",), probabilities=(0.2,), thresholds=(0.5,))
    outside = PopulationCheck(PopulationStatus.OUTSIDE, "age 45 years outside intended 1-5 years")
    images = [
        ImageFindings(assessed, prediction, population=PopulationCheck(PopulationStatus.WITHIN)),
        ImageFindings(adult, prediction, population=outside),
        ImageFindings(gated, not_assessed=NotAssessedReason.NOT_CHEST_RADIOGRAPH, detail="OOD score 41.2 > 27.9"),
    ]
    prior = PriorReport(sop_instance_uid="1.2.826.0.1.3680043.8.498.77", series_instance_uid=SR_SERIES)
    kw = {"series_instance_uid": SR_SERIES, "series_number": 9902, "settings": output_settings, "identity": identity}
    sr = write_and_read(build_findings_sr(images, predecessor=prior, instance_number=2, **kw))  # type: ignore[arg-type]

    groups = {_refs(g, dcm.DCM.SourceOfMeasurement)[0]: g for g in _groups(sr)}
    (flag,) = _children(groups[adult.SOPInstanceUID], codes.INTENDED_POPULATION)
    assert _value(flag) == codes.POPULATION_OUTSIDE.value
    assert _text_values(flag, codes.COMMENT) == ["age 45 years outside intended 1-5 years"]
    gated_group = groups[gated.SOPInstanceUID]
    assert [i for i in gated_group.ContentSequence if _name(i) == ("233604007", "SCT")] == []
    (reason,) = _children(gated_group, codes.NOT_ASSESSED_REASON)
    assert _value(reason) == codes.not_assessed_code(NotAssessedReason.NOT_CHEST_RADIOGRAPH).value
    assert _text_values(reason, codes.COMMENT) == ["OOD score 41.2 > 27.9"]
    assert gated.SOPInstanceUID in _evidence(sr)
    (conclusions,) = _children(sr, codes.QUALITATIVE_EVALUATIONS)
    (study_level,) = conclusions.ContentSequence
    assert _value(study_level) == codes.ABSENT.value
    assert "1 image(s) not assessed" in _text_values(study_level, codes.COMMENT)[0]
    (pred,) = sr.PredecessorDocumentsSequence
    assert pred.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == prior.sop_instance_uid
    assert sr.InstanceNumber == 2
    assert [i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence] == ["99DCMNODE"]

    # The UID follows the content: another predecessor, decision or settings tag -> another UID.
    base = build_findings_sr(images, predecessor=prior, **kw).SOPInstanceUID  # type: ignore[arg-type]
    assert build_findings_sr(images, predecessor=prior, **kw).SOPInstanceUID == base  # type: ignore[arg-type]
    assert build_findings_sr(images, **kw).SOPInstanceUID != base  # type: ignore[arg-type]
    assert build_findings_sr(images, predecessor=prior, content_tag="explain=positive", **kw).SOPInstanceUID != base  # type: ignore[arg-type]
    flipped = [ImageFindings(assessed, Prediction(("pneumonia",), (0.2,), (0.1,))), *images[1:]]
    assert build_findings_sr(flipped, predecessor=prior, **kw).SOPInstanceUID != base  # type: ignore[arg-type]
