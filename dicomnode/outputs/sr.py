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

Construction: highdicom builds the document (patient, study, series, evidence, SR
document modules) around the root container; the tree below the root is encoded by
:class:`~dicomnode.outputs.content.ContentWriter` (45 ms -> 2 ms a study), item for item
what highdicom's TID 1500 classes write. The tests read every document back through
pydicom and highdicom's TID 1500 parser and run dciodvfy and dsrdump on it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes as dcm
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
from dicomnode.outputs.content import ContentWriter, content_sequence_element
from dicomnode.outputs.equipment import content_qualification, equipment_arguments
from dicomnode.outputs.iodcache import memoise_iod_lookups
from dicomnode.outputs.uids import derived_uid, stamp_implementation
from dicomnode.outputs.validate import drop_invalid_elements

if TYPE_CHECKING:
    from highdicom.sr import ComprehensiveSR

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
# Relationship types (PS3.3 C.17.3.2.4).
CONTAINS = "CONTAINS"
HAS_PROPERTIES = "HAS PROPERTIES"
HAS_CONCEPT_MOD = "HAS CONCEPT MOD"
HAS_OBS_CONTEXT = "HAS OBS CONTEXT"
HAS_ACQ_CONTEXT = "HAS ACQ CONTEXT"
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
        The SR document (Explicit VR Little Endian), ready to write. Its content tree
        below the root is one encoded element (:mod:`dicomnode.outputs.content`), which
        pydicom parses on first access; ``validate_result(sr, encoded_content=True)``
        checks the document without parsing it.

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

    from highdicom.sr import ComprehensiveSR, ContainerContentItem

    memoise_iod_lookups()

    study_uid = str(images[0].source.StudyInstanceUID)
    if sop_instance_uid is None:
        sop_instance_uid = derived_uid(
            "findings-sr", series_instance_uid, identity.weights_sha256, content_tag or "-",
            predecessor.sop_instance_uid if predecessor else "-", *_content_parts(images),
        )  # fmt: skip

    heatmaps = [h for image in images for _, h in sorted(image.heatmaps.items())]
    library = [*(i.source for i in images), *heatmaps]
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
    # highdicom builds the document modules (patient, study, series, evidence, SR
    # document general) around the TID 1500 root container; the tree below the root is
    # encoded by ContentWriter in the document's character set and attached after (see
    # dicomnode.outputs.content for why).
    root = ContainerContentItem(name=codes.REPORT_TITLE, template_id="1500")
    root.ContentSequence = DicomSequence()  # highdicom searches the tree for references: there is none yet
    sr = ComprehensiveSR(
        evidence=evidence,
        content=root,
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
    _tidy_copied_attributes(sr)
    stamp_implementation(sr)
    writer = ContentWriter(sr.get("SpecificCharacterSet"))
    tree = [
        *_report_context(writer, identity, settings),
        _image_library(writer, library),
        writer.container(
            CONTAINS,
            dcm.DCM.ImagingMeasurements,
            [_image_group(writer, image, number, identity, settings) for number, image in enumerate(images, start=1)],
        ),
        _study_conclusions(writer, images, labels),
    ]
    unlisted = set(writer.referenced) - {str(d.SOPInstanceUID) for d in library}
    if unlisted:  # the evidence lists the library; the tree must reference nothing else
        raise ValueError(f"the report references {len(unlisted)} instance(s) its evidence does not list")
    # Say the document is already in the encoding it is written in, as dcmread does (with
    # the same private property), so that pydicom writes the raw tree as is.
    sr.set_original_encoding(False, True, sr._character_set)
    content = content_sequence_element(tree)
    sr[content.tag] = content
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


def _comment(writer: ContentWriter, text: str) -> bytes:
    return writer.text(HAS_PROPERTIES, codes.COMMENT, text[:1024])


def _report_context(writer: ContentWriter, identity: ModelIdentity, settings: OutputSettings) -> list[bytes]:
    """TID 1500 rows 2-4: language (TID 1204), the model as device observer (TID 1002/1004),
    procedure reported."""
    return [
        writer.code(HAS_CONCEPT_MOD, dcm.DCM.LanguageOfContentItemAndDescendants, codes.LANGUAGE_EN_US),
        writer.code(HAS_OBS_CONTEXT, dcm.DCM.ObserverType, codes.DEVICE_OBSERVER),
        writer.uidref(HAS_OBS_CONTEXT, dcm.DCM.DeviceObserverUID, device_observer_uid(identity)),
        writer.text(HAS_OBS_CONTEXT, dcm.DCM.DeviceObserverName, identity.name),
        writer.text(HAS_OBS_CONTEXT, dcm.DCM.DeviceObserverManufacturer, settings.manufacturer),
        writer.text(HAS_OBS_CONTEXT, dcm.DCM.DeviceObserverModelName, f"{identity.architecture} {identity.version}"[:64]),
        writer.code(HAS_CONCEPT_MOD, dcm.DCM.ProcedureReported, codes.PROCEDURE_CHEST_IMAGING),
    ]


def _image_group(
    writer: ContentWriter, image: ImageFindings, number: int, identity: ModelIdentity, settings: OutputSettings
) -> bytes:
    """TID 1501 Measurement Group of one image: tracking, algorithm (TID 4019), source,
    then its findings or why it was not assessed."""
    source = image.source
    parameters = [f"architecture={identity.architecture}", f"weights_sha256={identity.weights_sha256}"]
    evaluations: list[bytes] = []
    if image.prediction is not None:
        prediction = image.prediction
        parameters.append(
            "thresholds=" + ",".join(f"{l}:{t:.6g}" for l, t in zip(prediction.labels, prediction.thresholds))
        )
        for k, label in enumerate(prediction.labels):
            children = [
                writer.num(HAS_PROPERTIES, codes.PROBABILITY, float(prediction.probabilities[k]), codes.PROBABILITY_UNIT),
                writer.num(HAS_PROPERTIES, codes.THRESHOLD_VALUE, float(prediction.thresholds[k]), codes.PROBABILITY_UNIT),
            ]
            heatmap = image.heatmaps.get(k)
            if heatmap is not None:
                children.append(
                    writer.image(
                        HAS_PROPERTIES, codes.BEST_ILLUSTRATION_OF_FINDING,
                        str(heatmap.SOPClassUID), str(heatmap.SOPInstanceUID),
                    )
                )  # fmt: skip
            evaluations.append(
                writer.code(CONTAINS, codes.label_to_code(label), codes.presence_code(prediction.is_positive(k)), children)
            )
        if image.population is not None:
            evaluations.append(_population_item(writer, image.population))
    else:
        reason = image.not_assessed
        if reason is None:  # _check_inputs guarantees one of the two
            raise ValueError("image has neither a prediction nor a reason")
        evaluations.append(
            writer.code(
                CONTAINS, codes.NOT_ASSESSED_REASON, codes.not_assessed_code(reason),
                [_comment(writer, image.detail)] if image.detail else [],
            )
        )  # fmt: skip
    items = [
        writer.text(HAS_OBS_CONTEXT, dcm.DCM.TrackingIdentifier, _image_title(source, number)),
        writer.uidref(
            HAS_OBS_CONTEXT, dcm.DCM.TrackingUniqueIdentifier,
            derived_uid("tracking", str(source.SOPInstanceUID), identity.weights_sha256),
        ),
        writer.text(HAS_CONCEPT_MOD, dcm.DCM.AlgorithmName, identity.name),
        writer.text(HAS_CONCEPT_MOD, dcm.DCM.AlgorithmVersion, identity.version),
        writer.text(HAS_CONCEPT_MOD, dcm.DCM.AlgorithmManufacturer, settings.manufacturer),
        *(writer.text(HAS_CONCEPT_MOD, dcm.DCM.AlgorithmParameters, parameter) for parameter in parameters),
        writer.code(HAS_CONCEPT_MOD, dcm.DCM.AlgorithmFamily, codes.ALGORITHM_FAMILY_AI),
        writer.image(CONTAINS, dcm.DCM.SourceOfMeasurement, str(source.SOPClassUID), str(source.SOPInstanceUID)),
        *evaluations,
    ]  # fmt: skip
    return writer.container(CONTAINS, dcm.DCM.MeasurementGroup, items, template="1501")


def _population_item(writer: ContentWriter, check: PopulationCheck) -> bytes:
    detail = check.detail
    if check.status == PopulationStatus.UNKNOWN and detail:
        detail = f"{detail}: cannot tell whether the image is within the intended population"
    return writer.code(
        CONTAINS, codes.INTENDED_POPULATION, codes.population_code(check.status),
        [_comment(writer, detail)] if detail else [],
    )  # fmt: skip


def _study_conclusions(writer: ContentWriter, images: Sequence[ImageFindings], labels: Sequence[str]) -> bytes:
    """TID 1500 "Qualitative Evaluations": per finding, the study-level conclusion."""
    numbered = [(n, i.prediction) for n, i in enumerate(images, start=1) if i.prediction is not None]
    not_assessed = len(images) - len(numbered)
    items = []
    for k, label in enumerate(labels):
        positives = [n for n, p in numbered if p.is_positive(k)]
        best_n, best = max(numbered, key=lambda item: item[1].probabilities[k])
        threshold = best.thresholds[k]
        text = (
            f"{'present' if positives else 'absent'}: positive in {len(positives)} of {len(numbered)} "
            f"assessed image(s)"
            + (f" (image {', '.join(map(str, positives))})" if positives else "")
            + f"; highest probability {best.probabilities[k]:.2f} (image {best_n}), threshold {threshold:.2f}"
            + (f"; {not_assessed} image(s) not assessed" if not_assessed else "")
        )
        items.append(
            writer.code(
                CONTAINS, codes.label_to_code(label), codes.presence_code(bool(positives)),
                [
                    writer.num(HAS_PROPERTIES, codes.THRESHOLD_VALUE, float(threshold), codes.PROBABILITY_UNIT),
                    _comment(writer, text),
                ],
            )
        )  # fmt: skip
    return writer.container(CONTAINS, codes.QUALITATIVE_EVALUATIONS, items)


def _image_library(writer: ContentWriter, images: Sequence[Dataset]) -> bytes:
    """TID 1600 Image Library: one group holding an entry (TID 1601/1602) per image.

    highdicom's own Image Library reads Patient Orientation and Imager Pixel Spacing of
    every CR/DX image unconditionally; many real images lack them. Each entry here has
    the descriptors its image actually has.
    """
    entries = []
    for image in images:
        modality = str(image.get("Modality") or "OT")
        descriptors = [
            writer.code(
                HAS_ACQ_CONTEXT, dcm.DCM.Modality,
                Code(modality, "DCM", _DICOM_MODALITY_MEANINGS.get(modality, modality)),
            )
        ]  # fmt: skip
        for keyword, concept in (("Rows", dcm.DCM.PixelDataRows), ("Columns", dcm.DCM.PixelDataColumns)):
            if image.get(keyword):
                descriptors.append(writer.num(HAS_ACQ_CONTEXT, concept, int(image[keyword].value), codes.PIXELS_UNIT))
        orientation = image.get("PatientOrientation")
        if orientation is not None and not isinstance(orientation, str) and len(orientation) == 2:
            for value, concept in zip(orientation, (dcm.DCM.PatientOrientationRow, dcm.DCM.PatientOrientationColumn)):
                if value:
                    descriptors.append(writer.text(HAS_ACQ_CONTEXT, concept, str(value)))
        spacing = image.get("ImagerPixelSpacing") or image.get("PixelSpacing")
        if spacing is not None and len(spacing) == 2:
            for value, concept in zip(
                (spacing[1], spacing[0]), (dcm.DCM.HorizontalPixelSpacing, dcm.DCM.VerticalPixelSpacing)
            ):
                descriptors.append(writer.num(HAS_ACQ_CONTEXT, concept, float(value), dcm.UCUM.Millimeter))
        entries.append(
            writer.image(CONTAINS, codes.IMAGE_LIBRARY_SOURCE, str(image.SOPClassUID), str(image.SOPInstanceUID), descriptors)
        )
    group = writer.container(CONTAINS, dcm.DCM.ImageLibraryGroup, entries)
    return writer.container(CONTAINS, dcm.DCM.ImageLibrary, [group])


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
