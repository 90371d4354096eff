"""Build the per-study findings report: a Comprehensive SR with a TID 1500 Measurement Report.

Content tree (one document per study, covering every image of the study)::

    CONTAINER "Imaging Measurement Report" (TID 1500)
      HAS CONCEPT MOD  Language of Content Item and Descendants = English
      HAS OBS CONTEXT  Observer Type = Device; Device Observer UID / Name / Manufacturer /
                       Model Name (TID 1002/1004: the model, UID derived from its weights)
      HAS CONCEPT MOD  Procedure Reported = Chest imaging
      CONTAINS CONTAINER "Image Library" (TID 1600): every image and heatmap SC
      CONTAINS CONTAINER "Imaging Measurements"
        CONTAINS CONTAINER "Measurement Group" (TID 1501)   -- one per image, no "Finding" row
          Tracking Identifier "image <n> (<modality> <view>)" + Tracking Unique Identifier
          Algorithm Name / Version / Parameters / Family (TID 4019)
          IMAGE Source of Measurement -> the image
          assessed image, per label:
            CODE <finding> = Present | Absent              (probability >= threshold)
              HAS PROPERTIES NUM Probability = p {probability}      (codes.PROBABILITY)
              HAS PROPERTIES NUM Threshold Value = t {probability}
              HAS PROPERTIES IMAGE Best illustration of finding -> heatmap SC (if made)
            CODE Intended population = Within | Outside | Unknown (+ TEXT Comment why)
          image not assessed (no finding, neither present nor absent):
            CODE Image not assessed, reason = <codes.not_assessed_code(reason)>
              HAS PROPERTIES TEXT Comment = <detail>
      CONTAINS CONTAINER "Qualitative Evaluations"      -- the study-level conclusion
        CODE <finding> = Present (any assessed image positive) | Absent (all assessed
                         negative) ; HAS PROPERTIES NUM Threshold Value, TEXT Comment

An SR needs at least one assessed image: a study with none gets no SR (the job is
SKIPPED with the reason, see ``pipeline``). A report that supersedes an earlier one
(an image arrived after results were produced) covers every image of the study and
names the earlier document in the Predecessor Documents Sequence.

Document attributes: Content Qualification from settings (RESEARCH by default), Series
Description from settings ("... not for diagnostic use"), Completion Flag COMPLETE,
Verification Flag UNVERIFIED, Preliminary Flag PRELIMINARY; evidence = the images and
the heatmap SCs (Current Requested Procedure Evidence: all are in the study).
The SOP Instance UID is derived from everything the document says (images, decisions,
probabilities, thresholds, heatmaps, not-assessed reasons, population, predecessor,
model, settings tag): different content never shares a UID, re-running the same job
gives the same UID.

Comprehensive SR (not Comprehensive 3D SR): the tree has no 3D coordinates, so the
older, more widely supported SOP class is enough (dciodvfy validates it cleanly, and
Orthanc/OHIF and the common PACS viewers render it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from dicomnode.config import OutputSettings
from dicomnode.domain import (
    ModelIdentity,
    NotAssessedReason,
    PopulationCheck,
    PopulationStatus,
    Prediction,
)
from dicomnode.outputs import codes
from dicomnode.outputs.charset import with_writable_charset
from dicomnode.outputs.equipment import content_qualification, equipment_arguments
from dicomnode.outputs.uids import derived_uid, stamp_implementation
from dicomnode.outputs.validate import drop_invalid_elements

if TYPE_CHECKING:
    from highdicom.sr import ComprehensiveSR, ContentItem, MeasurementsAndQualitativeEvaluations

__all__ = ["ImageFindings", "PriorReport", "build_findings_sr", "device_observer_uid", "reference_dataset"]

logger = logging.getLogger(__name__)

_REQUIRED_SOURCE = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# Type 2 attributes highdicom reads from the first evidence dataset without a default.
_TYPE2_FROM_EVIDENCE = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)
_DICOM_MODALITY_MEANINGS = {
    "CR": "Computed Radiography",
    "DX": "Digital Radiography",
    "RG": "Radiographic imaging",
    "OT": "Other",
}


@dataclass(frozen=True)
class ImageFindings:
    """One image of the study as the report shows it.

    Exactly one of ``prediction`` (assessed) and ``not_assessed`` (no finding) is set.

    Attributes:
        source: the image's header (pixel data not needed), or a
            :func:`reference_dataset` when only its UIDs are known.
        prediction: the model's output for an assessed image.
        heatmaps: heatmap SC per label index (assessed images only).
        not_assessed: why the image got no finding.
        detail: one line (no PHI) explaining ``not_assessed``, e.g. ``"OOD score 41 > 28"``.
        population: the image compared with the model's intended population; None when
            the model declares no population.
    """

    source: Dataset
    prediction: Prediction | None = None
    heatmaps: Mapping[int, Dataset] = field(default_factory=dict)
    not_assessed: NotAssessedReason | None = None
    detail: str = ""
    population: PopulationCheck | None = None


@dataclass(frozen=True)
class PriorReport:
    """The findings SR a new report supersedes (Predecessor Documents Sequence).

    Attributes:
        sop_instance_uid: SOP Instance UID of the earlier SR.
        series_instance_uid: its Series Instance UID.
        sop_class_uid: its SOP Class UID.
    """

    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str = ComprehensiveSRStorage


def reference_dataset(
    *, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str, sop_class_uid: str
) -> Dataset:
    """A header holding only the four UIDs: for an image whose file cannot be read."""
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid
    return ds


def device_observer_uid(identity: ModelIdentity) -> str:
    """The Device Observer UID of a model: stable for the same name, version and weights."""
    return derived_uid("device-observer", identity.name, identity.version, identity.weights_sha256)


def build_findings_sr(
    images: Sequence[ImageFindings],
    *,
    series_instance_uid: str,
    series_number: int,
    settings: OutputSettings,
    identity: ModelIdentity,
    predecessor: PriorReport | None = None,
    content_tag: str = "",
    instance_number: int = 1,
    sop_instance_uid: str | None = None,
) -> ComprehensiveSR:
    """One TID 1500 findings report covering every image of one study.

    Args:
        images: every image of the study, in the order to report them (image 1, 2, ...),
            assessed or not; at least one must be assessed.
        series_instance_uid: UID of the SR series.
        series_number: Series Number of the SR series, >= 1.
        settings: labelling of result objects.
        identity: the model that produced the predictions.
        predecessor: the earlier report of the study this one supersedes, if any.
        content_tag: what else shaped the content (e.g. ``"explain=positive"``); part of
            the derived SOP Instance UID.
        instance_number: Instance Number in the SR series, >= 1.
        sop_instance_uid: UID of the new document; default: derived from the content.

    Returns:
        The SR document (Explicit VR Little Endian), ready to write.

    Raises:
        ValueError: no assessed image, images from more than one study, a source without
            a required UID, an image given twice, an image both assessed and not (or
            neither), predictions with different labels, a heatmap that is not an SC of
            the same study, a probability or threshold outside [0, 1], a content
            qualification DICOM does not define, or a value that does not fit its attribute.
    """
    images = [
        ImageFindings(with_writable_charset(i.source), i.prediction, i.heatmaps, i.not_assessed, i.detail, i.population)
        for i in images
    ]
    labels = _check_inputs(images)
    qualification = content_qualification(settings.content_qualification)

    from highdicom.sr import ComprehensiveSR

    study_uid = str(images[0].source.StudyInstanceUID)
    if sop_instance_uid is None:
        sop_instance_uid = derived_uid(
            "findings-sr", series_instance_uid, identity.weights_sha256, content_tag or "-",
            predecessor.sop_instance_uid if predecessor else "-", *_content_parts(images),
        )  # fmt: skip

    groups = [_image_group(image, number, identity, settings) for number, image in enumerate(images, start=1)]
    heatmaps = [h for image in images for _, h in sorted(image.heatmaps.items())]
    library = [*(i.source for i in images), *heatmaps]
    report = _measurement_report(groups, library, identity, settings)
    report.ContentSequence.append(_study_conclusions(images, labels))
    uses_private = any(
        (image.prediction is not None and not all(codes.is_standard_label(l) for l in image.prediction.labels))
        or image.population is not None  # the population concept is private
        or image.not_assessed is not None  # so is the "not assessed, reason" concept
        for image in images
    )

    first = next(i.source for i in images if i.prediction is not None)
    evidence = [_evidence_header(first, first=True)] + [
        _evidence_header(d) for d in library if d is not first
    ]
    previous = None
    if predecessor is not None:
        previous = [
            reference_dataset(
                study_instance_uid=study_uid,
                series_instance_uid=predecessor.series_instance_uid,
                sop_instance_uid=predecessor.sop_instance_uid,
                sop_class_uid=predecessor.sop_class_uid,
            )
        ]
    # highdicom deep-copies the content tree and searches it for references (70 % of
    # the build time for a one-image study). It gets the root container alone, from
    # which it builds the document modules and the evidence (every image and heatmap,
    # which are exactly what the tree references); the children are attached after.
    # The tests parse every document back with highdicom's SR reader.
    shell = Dataset()
    for element in report:
        if element.keyword != "ContentSequence":
            shell.add(element)
    shell.ContentSequence = []
    sr = ComprehensiveSR(
        evidence=evidence,
        content=shell,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        is_complete=True,
        is_final=False,
        is_verified=False,
        content_qualification=qualification,
        series_description=settings.sr_series_description,
        coding_schemes=[codes.private_coding_scheme()] if uses_private else None,
        previous_versions=previous,
        **equipment_arguments(settings, identity, "AI inference"),
    )
    sr.ContentSequence = report.ContentSequence
    _tidy_copied_attributes(sr)
    stamp_implementation(sr)
    logger.debug(
        "built findings SR %s for study %s: %d image(s), %d assessed, predecessor %s",
        sop_instance_uid,
        study_uid,
        len(images),
        sum(i.prediction is not None for i in images),
        predecessor.sop_instance_uid if predecessor else None,
    )
    return sr


def _content_parts(images: Sequence[ImageFindings]) -> list[str]:
    """Everything an image contributes to the document, as strings (for the derived UID)."""
    parts: list[str] = []
    for image in images:
        population = image.population
        parts.append(
            f"{image.source.SOPInstanceUID}|{image.not_assessed or 'assessed'}|{image.detail}|"
            f"{population.status if population else '-'}|{population.detail if population else ''}"
        )
        if image.prediction is not None:
            p = image.prediction
            for k, label in enumerate(p.labels):
                heatmap = image.heatmaps.get(k)
                parts.append(
                    f"{label}:{p.probabilities[k]!r}:{p.thresholds[k]!r}:"
                    f"{heatmap.SOPInstanceUID if heatmap is not None else '-'}"
                )
    return parts


def _check_inputs(images: Sequence[ImageFindings]) -> tuple[str, ...]:
    """Validate the images; returns the labels of the assessed images' predictions."""
    assessed = [i for i in images if i.prediction is not None]
    if not assessed:
        raise ValueError("no assessed image: an SR needs at least one image with findings")
    for index, image in enumerate(images):
        missing = [keyword for keyword in _REQUIRED_SOURCE if not image.source.get(keyword)]
        if missing:
            raise ValueError(f"image {index} lacks {', '.join(missing)}")
        if (image.prediction is None) == (image.not_assessed is None):
            raise ValueError(f"image {index} must be either assessed (prediction) or not assessed (reason)")
        if image.not_assessed is not None and image.heatmaps:
            raise ValueError(f"image {index} is not assessed but has heatmaps")
    studies = {str(image.source.StudyInstanceUID) for image in images}
    if len(studies) != 1:
        raise ValueError(f"images belong to {len(studies)} studies; one SR covers one study")
    study = studies.pop()
    uids = [str(image.source.SOPInstanceUID) for image in images]
    if len(set(uids)) != len(uids):
        raise ValueError("the same image is given twice")
    labels = assessed[0].prediction.labels  # type: ignore[union-attr]
    for index, image in enumerate(images):
        prediction = image.prediction
        if prediction is None:
            continue
        if prediction.labels != labels:
            raise ValueError(f"image {index}: labels {prediction.labels} differ from {labels}")
        for value in (*prediction.probabilities, *prediction.thresholds):
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"image {index}: probability/threshold {value!r} is not in [0, 1]")
        for label_index, heatmap in image.heatmaps.items():
            if not 0 <= label_index < len(labels):
                raise ValueError(f"image {index}: heatmap for label index {label_index} out of range")
            if heatmap.get("SOPClassUID") != SecondaryCaptureImageStorage:
                raise ValueError(f"image {index}: heatmap is not a Secondary Capture image")
            if str(heatmap.get("StudyInstanceUID")) != study:
                raise ValueError(f"image {index}: heatmap belongs to another study than its source")
            if not heatmap.get("SOPInstanceUID") or not heatmap.get("SeriesInstanceUID"):
                raise ValueError(f"image {index}: heatmap lacks its SOP or Series Instance UID")
    return labels


def _image_title(source: Dataset, number: int) -> str:
    described = " ".join(
        str(source.get(k) or "").strip() for k in ("Modality", "ViewPosition") if str(source.get(k) or "").strip()
    )
    return (f"image {number} ({described})" if described else f"image {number}")[:64]


def _with_properties(item: ContentItem, children: Sequence[ContentItem]) -> ContentItem:
    from highdicom.sr import ContentSequence

    if children:
        item.ContentSequence = ContentSequence(list(children))
    return item


def _comment(text: str) -> ContentItem:
    from highdicom.sr import RelationshipTypeValues, TextContentItem

    return TextContentItem(
        name=codes.COMMENT, value=text[:1024], relationship_type=RelationshipTypeValues.HAS_PROPERTIES
    )


def _image_group(
    image: ImageFindings, number: int, identity: ModelIdentity, settings: OutputSettings
) -> MeasurementsAndQualitativeEvaluations:
    from highdicom.sr import (
        AlgorithmIdentification,
        CodeContentItem,
        ImageContentItem,
        MeasurementsAndQualitativeEvaluations,
        NumContentItem,
        RelationshipTypeValues,
        SourceImageForMeasurementGroup,
        TrackingIdentifier,
    )

    source = image.source
    props = RelationshipTypeValues.HAS_PROPERTIES
    parameters = [f"architecture={identity.architecture}", f"weights_sha256={identity.weights_sha256}"]
    evaluations: list[ContentItem] = []
    if image.prediction is not None:
        prediction = image.prediction
        parameters.append(
            "thresholds=" + ",".join(f"{l}:{t:.6g}" for l, t in zip(prediction.labels, prediction.thresholds))
        )
        for k, label in enumerate(prediction.labels):
            children: list[ContentItem] = [
                NumContentItem(
                    name=codes.PROBABILITY, value=float(prediction.probabilities[k]),
                    unit=codes.PROBABILITY_UNIT, relationship_type=props,
                ),
                NumContentItem(
                    name=codes.THRESHOLD_VALUE, value=float(prediction.thresholds[k]),
                    unit=codes.PROBABILITY_UNIT, relationship_type=props,
                ),
            ]  # fmt: skip
            heatmap = image.heatmaps.get(k)
            if heatmap is not None:
                children.append(
                    ImageContentItem(
                        name=codes.BEST_ILLUSTRATION_OF_FINDING,
                        referenced_sop_class_uid=str(heatmap.SOPClassUID),
                        referenced_sop_instance_uid=str(heatmap.SOPInstanceUID),
                        relationship_type=props,
                    )
                )
            evaluations.append(
                _with_properties(
                    CodeContentItem(
                        name=codes.label_to_code(label),
                        value=codes.presence_code(prediction.is_positive(k)),
                        relationship_type=RelationshipTypeValues.CONTAINS,
                    ),
                    children,
                )
            )
        if image.population is not None:
            evaluations.append(_population_item(image.population))
    else:
        reason = image.not_assessed
        if reason is None:  # _check_inputs guarantees one of the two
            raise ValueError("image has neither a prediction nor a reason")
        evaluations.append(
            _with_properties(
                CodeContentItem(
                    name=codes.NOT_ASSESSED_REASON,
                    value=codes.not_assessed_code(reason),
                    relationship_type=RelationshipTypeValues.CONTAINS,
                ),
                [_comment(image.detail)] if image.detail else [],
            )
        )
    algorithm = AlgorithmIdentification(
        name=identity.name,
        version=identity.version,
        parameters=parameters,
        family=codes.ALGORITHM_FAMILY_AI,
        manufacturer=settings.manufacturer,
    )
    tracking = TrackingIdentifier(
        uid=derived_uid("tracking", str(source.SOPInstanceUID), identity.weights_sha256),
        identifier=_image_title(source, number),
    )
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        algorithm_id=algorithm,
        source_images=[
            SourceImageForMeasurementGroup(
                referenced_sop_class_uid=str(source.SOPClassUID),
                referenced_sop_instance_uid=str(source.SOPInstanceUID),
            )
        ],
    )
    group[0].ContentSequence.extend(evaluations)
    return group


def _population_item(check: PopulationCheck) -> ContentItem:
    from highdicom.sr import CodeContentItem, RelationshipTypeValues

    detail = check.detail
    if check.status == PopulationStatus.UNKNOWN and detail:
        detail = f"{detail}: cannot tell whether the image is within the intended population"
    return _with_properties(
        CodeContentItem(
            name=codes.INTENDED_POPULATION,
            value=codes.population_code(check.status),
            relationship_type=RelationshipTypeValues.CONTAINS,
        ),
        [_comment(detail)] if detail else [],
    )


def _study_conclusions(images: Sequence[ImageFindings], labels: Sequence[str]) -> ContentItem:
    """TID 1500 "Qualitative Evaluations": per finding, the study-level conclusion."""
    from highdicom.sr import (
        CodeContentItem,
        ContainerContentItem,
        ContentSequence,
        NumContentItem,
        RelationshipTypeValues,
    )

    numbered = [(n, i.prediction) for n, i in enumerate(images, start=1) if i.prediction is not None]
    not_assessed = len(images) - len(numbered)
    items = []
    for k, label in enumerate(labels):
        positives = [n for n, p in numbered if p.is_positive(k)]
        best_n, best = max(numbered, key=lambda item: item[1].probabilities[k])
        threshold = best.thresholds[k]
        value: Code = codes.presence_code(bool(positives))
        text = (
            f"{'present' if positives else 'absent'}: positive in {len(positives)} of {len(numbered)} "
            f"assessed image(s)"
            + (f" (image {', '.join(map(str, positives))})" if positives else "")
            + f"; highest probability {best.probabilities[k]:.2f} (image {best_n}), threshold {threshold:.2f}"
            + (f"; {not_assessed} image(s) not assessed" if not_assessed else "")
        )
        items.append(
            _with_properties(
                CodeContentItem(
                    name=codes.label_to_code(label),
                    value=value,
                    relationship_type=RelationshipTypeValues.CONTAINS,
                ),
                [
                    NumContentItem(
                        name=codes.THRESHOLD_VALUE, value=float(threshold), unit=codes.PROBABILITY_UNIT,
                        relationship_type=RelationshipTypeValues.HAS_PROPERTIES,
                    ),
                    _comment(text),
                ],
            )
        )
    container = ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = ContentSequence(items)
    return container


def _measurement_report(
    groups: list[MeasurementsAndQualitativeEvaluations],
    images: Sequence[Dataset],
    identity: ModelIdentity,
    settings: OutputSettings,
) -> Dataset:
    from highdicom.sr import (
        DeviceObserverIdentifyingAttributes,
        MeasurementReport,
        ObservationContext,
        ObserverContext,
    )

    observer = ObserverContext(
        observer_type=codes.DEVICE_OBSERVER,  # type: ignore[arg-type]
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid(identity),
            name=identity.name,
            manufacturer_name=settings.manufacturer,
            model_name=f"{identity.architecture} {identity.version}"[:64],
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PROCEDURE_CHEST_IMAGING,
        imaging_measurements=groups,
        title=codes.REPORT_TITLE,
    )
    # highdicom's own Image Library reads Patient Orientation and Imager Pixel Spacing of
    # every CR/DX image unconditionally; many real images lack them. Build it here with
    # the descriptors each image actually has, in its TID 1500 place (before the
    # Imaging Measurements container).
    root = report[0]
    root.ContentSequence.insert(len(root.ContentSequence) - 1, _image_library(images))
    return root


def _image_library(images: Sequence[Dataset]) -> ContentItem:
    """TID 1600 Image Library: one group holding an entry (TID 1601/1602) per image."""
    from highdicom.sr import (
        CodeContentItem,
        ContainerContentItem,
        ContentSequence,
        ImageContentItem,
        NumContentItem,
        RelationshipTypeValues,
        TextContentItem,
    )
    from pydicom.sr.codedict import codes as dcm

    acquisition = RelationshipTypeValues.HAS_ACQ_CONTEXT
    pixels = Code("{pixels}", "UCUM", "Pixels")
    entries = ContentSequence()
    for image in images:
        descriptors = ContentSequence()
        modality = str(image.get("Modality") or "OT")
        descriptors.append(
            CodeContentItem(
                name=dcm.DCM.Modality,
                value=Code(modality, "DCM", _DICOM_MODALITY_MEANINGS.get(modality, modality)),
                relationship_type=acquisition,
            )
        )
        for keyword, concept in (
            ("Rows", dcm.DCM.PixelDataRows),
            ("Columns", dcm.DCM.PixelDataColumns),
        ):
            if image.get(keyword):
                descriptors.append(
                    NumContentItem(
                        name=concept,
                        value=int(image[keyword].value),
                        unit=pixels,
                        relationship_type=acquisition,
                    )
                )
        orientation = image.get("PatientOrientation")
        if orientation is not None and not isinstance(orientation, str) and len(orientation) == 2:
            for value, concept in zip(
                orientation, (dcm.DCM.PatientOrientationRow, dcm.DCM.PatientOrientationColumn)
            ):
                if value:
                    descriptors.append(
                        TextContentItem(
                            name=concept, value=str(value), relationship_type=acquisition
                        )
                    )
        spacing = image.get("ImagerPixelSpacing") or image.get("PixelSpacing")
        if spacing is not None and len(spacing) == 2:
            for value, concept in zip(
                (spacing[1], spacing[0]),
                (dcm.DCM.HorizontalPixelSpacing, dcm.DCM.VerticalPixelSpacing),
            ):
                descriptors.append(
                    NumContentItem(
                        name=concept,
                        value=float(value),
                        unit=dcm.UCUM.Millimeter,
                        relationship_type=acquisition,
                    )
                )
        entry = ImageContentItem(
            name=Code("260753009", "SCT", "Source"),
            referenced_sop_class_uid=str(image.SOPClassUID),
            referenced_sop_instance_uid=str(image.SOPInstanceUID),
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
        entry.ContentSequence = descriptors
        entries.append(entry)
    group = ContainerContentItem(
        name=dcm.DCM.ImageLibraryGroup, relationship_type=RelationshipTypeValues.CONTAINS
    )
    group.ContentSequence = entries
    library = ContainerContentItem(
        name=dcm.DCM.ImageLibrary, relationship_type=RelationshipTypeValues.CONTAINS
    )
    library.ContentSequence = ContentSequence([group])
    return library


def _evidence_header(dataset: Dataset, *, first: bool = False) -> Dataset:
    """A shallow copy with what highdicom reads from evidence; never touches the caller's dataset.

    The first evidence item is where highdicom takes patient and study from; it reads
    the Type 2 attributes without a default, so absent ones are added empty.
    """
    header = Dataset()
    for element in dataset:
        if element.tag.group == 0x7FE0 or element.tag > 0x7FE00000:  # no pixel data
            break
        header.add(element)
    if first:
        for keyword in _TYPE2_FROM_EVIDENCE:
            if keyword not in header:
                setattr(header, keyword, None)
    return header


def _tidy_copied_attributes(sr: ComprehensiveSR) -> None:
    """Drop optional patient/study attributes copied from a source whose value is invalid."""
    ours = {
        "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
        "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
        "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    }  # fmt: skip
    candidates = [
        element.tag for element in sr if element.VR != "SQ" and element.keyword not in ours
    ]
    drop_invalid_elements(sr, candidates)
