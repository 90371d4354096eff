"""Build the per-study findings report: a Comprehensive SR with a TID 1500 Measurement Report.

Content tree (one document per study)::

    CONTAINER "Imaging Measurement Report" (TID 1500)
      HAS CONCEPT MOD  Language of Content Item and Descendants = English
      HAS OBS CONTEXT  Observer Type = Device; Device Observer UID / Name / Manufacturer /
                       Model Name (TID 1002/1004: the model, UID derived from its weights)
      HAS CONCEPT MOD  Procedure Reported = Chest imaging
      CONTAINS CONTAINER "Image Library" (TID 1600): every source image and heatmap SC
      CONTAINS CONTAINER "Imaging Measurements"
        CONTAINS CONTAINER "Measurement Group" (TID 1501)   -- one per (image, label)
          Tracking Identifier "<label> image <n>" + Tracking Unique Identifier
          Finding = <finding code>                          (codes.label_to_code)
          Algorithm Name / Version / Parameters (TID 4019):
              architecture=..., weights_sha256=..., threshold=...
          Algorithm Family = Artificial Intelligence
          NUM Certainty of Finding = <probability> {probability}
          NUM Threshold Value      = <threshold>   {probability}
          CODE <finding code> = Present | Absent        (probability >= threshold)
          IMAGE Source of Measurement -> the source image
          IMAGE Best illustration of finding -> heatmap SC (group of the explained label)

Document attributes: Content Qualification from settings (RESEARCH by default), Series
Description from settings ("... not for diagnostic use"), Completion Flag COMPLETE,
Verification Flag UNVERIFIED, Preliminary Flag PRELIMINARY; evidence = the sources and
the heatmap SCs (Current Requested Procedure Evidence: all are in the study).

Comprehensive SR (not Comprehensive 3D SR): the tree has no 3D coordinates, so the
older, more widely supported SOP class is enough (dciodvfy validates it cleanly, and
Orthanc/OHIF and the common PACS viewers render it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import SecondaryCaptureImageStorage

from dicomnode import __version__
from dicomnode.config import OutputSettings
from dicomnode.domain import ModelIdentity, Prediction
from dicomnode.outputs import codes
from dicomnode.outputs.charset import with_writable_charset
from dicomnode.outputs.uids import derived_uid
from dicomnode.outputs.validate import drop_invalid_elements

if TYPE_CHECKING:
    from highdicom.sr import ComprehensiveSR, ContentItem, MeasurementsAndQualitativeEvaluations

__all__ = ["build_findings_sr", "device_observer_uid"]

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


def device_observer_uid(identity: ModelIdentity) -> str:
    """The Device Observer UID of a model: stable for the same name, version and weights."""
    return derived_uid("device-observer", identity.name, identity.version, identity.weights_sha256)


def build_findings_sr(
    sources: Sequence[Dataset],
    predictions: Sequence[Prediction],
    heatmaps: Sequence[Dataset | None],
    *,
    series_instance_uid: str,
    series_number: int,
    settings: OutputSettings,
    identity: ModelIdentity,
    instance_number: int = 1,
    sop_instance_uid: str | None = None,
) -> ComprehensiveSR:
    """One TID 1500 findings report for the processed images of one study.

    Args:
        sources: headers of the processed images (pixel data not needed), all of one
            study, each with SOP Class/Instance, Study and Series Instance UIDs.
        predictions: the model's output for each source, same order. Multi-label
            predictions give one measurement group per label.
        heatmaps: the heatmap SC built for each source, or None where none was made
            (e.g. ``explain="positive"`` and a negative image). A heatmap is referenced
            from the group of the label it explains (:attr:`Prediction.top_index`).
        series_instance_uid: UID of the SR series.
        series_number: Series Number of the SR series, >= 1.
        settings: labelling of result objects.
        identity: the model that produced the predictions.
        instance_number: Instance Number in the SR series, >= 1.
        sop_instance_uid: UID of the new document; default: derived deterministically
            from ``series_instance_uid`` and the source SOP Instance UIDs.

    Returns:
        The SR document (Explicit VR Little Endian), ready to write.

    Raises:
        ValueError: empty input, lengths that differ, sources from more than one study, a
            source without a required UID, a heatmap that is not an SC of the same study,
            a probability or threshold outside [0, 1], a content qualification DICOM does
            not define, or a value that does not fit its attribute.
    """
    sources = [with_writable_charset(source) for source in sources]
    _check_inputs(sources, predictions, heatmaps)
    qualification = _content_qualification(settings.content_qualification)

    import highdicom as hd
    from highdicom.sr import ComprehensiveSR

    study_uid = str(sources[0].StudyInstanceUID)
    if sop_instance_uid is None:
        sop_instance_uid = derived_uid(
            "findings-sr", series_instance_uid, *sorted(str(s.SOPInstanceUID) for s in sources)
        )

    groups = []
    for index, (source, prediction, heatmap) in enumerate(
        zip(sources, predictions, heatmaps), start=1
    ):
        for label_index in range(len(prediction.labels)):
            explained = heatmap if label_index == prediction.top_index else None
            groups.append(
                _measurement_group(
                    source, index, prediction, label_index, explained, identity, settings
                )
            )

    images = [*sources, *(h for h in heatmaps if h is not None)]
    report = _measurement_report(groups, images, identity, settings)
    uses_private = any(
        not codes.is_standard_label(label)
        for prediction in predictions
        for label in prediction.labels
    )

    evidence = [_evidence_header(sources[0], first=True)] + [
        _evidence_header(d) for d in images[1:]
    ]
    sr = ComprehensiveSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=settings.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=settings.institution_name,
        content_qualification=qualification,
        series_description=settings.sr_series_description,
        manufacturer_model_name="dicomnode",
        software_versions=[f"dicomnode {__version__}", f"{identity.name} {identity.version}"],
        coding_schemes=[codes.private_coding_scheme()] if uses_private else None,
        contributing_equipment=[
            hd.ContributingEquipment(
                manufacturer=settings.manufacturer,
                purpose_of_reference=codes.PROCESSING_EQUIPMENT,
                manufacturer_model_name=identity.name,
                software_versions=identity.version,
                institution_name=settings.institution_name,
                contribution_description=(
                    f"AI inference: model {identity.name} {identity.version}, architecture "
                    f"{identity.architecture}, weights sha256 {identity.weights_sha256}"
                ),
            )
        ],
    )
    _tidy_copied_attributes(sr)
    logger.debug(
        "built findings SR %s for study %s: %d image(s), %d group(s)",
        sop_instance_uid,
        study_uid,
        len(sources),
        len(groups),
    )
    return sr


def _check_inputs(
    sources: Sequence[Dataset],
    predictions: Sequence[Prediction],
    heatmaps: Sequence[Dataset | None],
) -> None:
    if not sources:
        raise ValueError("no source images: an SR needs at least one")
    if not len(sources) == len(predictions) == len(heatmaps):
        raise ValueError(
            f"sources ({len(sources)}), predictions ({len(predictions)}) and heatmaps "
            f"({len(heatmaps)}) must have the same length"
        )
    for index, source in enumerate(sources):
        missing = [keyword for keyword in _REQUIRED_SOURCE if not source.get(keyword)]
        if missing:
            raise ValueError(f"source {index} lacks {', '.join(missing)}")
    studies = {str(source.StudyInstanceUID) for source in sources}
    if len(studies) != 1:
        raise ValueError(f"sources belong to {len(studies)} studies; one SR covers one study")
    study = studies.pop()
    uids = [str(source.SOPInstanceUID) for source in sources]
    if len(set(uids)) != len(uids):
        raise ValueError("the same source image is given twice")
    for index, heatmap in enumerate(heatmaps):
        if heatmap is None:
            continue
        if heatmap.get("SOPClassUID") != SecondaryCaptureImageStorage:
            raise ValueError(f"heatmap {index} is not a Secondary Capture image")
        if str(heatmap.get("StudyInstanceUID")) != study:
            raise ValueError(f"heatmap {index} belongs to another study than its source")
        if not heatmap.get("SOPInstanceUID") or not heatmap.get("SeriesInstanceUID"):
            raise ValueError(f"heatmap {index} lacks its SOP or Series Instance UID")
    for index, prediction in enumerate(predictions):
        if not prediction.labels:
            raise ValueError(f"prediction {index} has no labels")
        for value in (*prediction.probabilities, *prediction.thresholds):
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(
                    f"prediction {index}: probability/threshold {value!r} is not in [0, 1]"
                )


def _content_qualification(value: str) -> str:
    """DICOM Content Qualification (PS3.3 C.8.13.2: PRODUCT, RESEARCH or SERVICE)."""
    if value not in ("PRODUCT", "RESEARCH", "SERVICE"):
        raise ValueError(
            f"content qualification {value!r} is not a DICOM defined term (PRODUCT, RESEARCH, SERVICE)"
        )
    return value


def _measurement_group(
    source: Dataset,
    image_number: int,
    prediction: Prediction,
    label_index: int,
    heatmap: Dataset | None,
    identity: ModelIdentity,
    settings: OutputSettings,
) -> MeasurementsAndQualitativeEvaluations:
    from highdicom.sr import (
        AlgorithmIdentification,
        ImageContentItem,
        Measurement,
        MeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
        RelationshipTypeValues,
        SourceImageForMeasurementGroup,
        TrackingIdentifier,
    )

    label = prediction.labels[label_index]
    probability = float(prediction.probabilities[label_index])
    threshold = float(prediction.thresholds[label_index])
    finding = codes.label_to_code(label)
    algorithm = AlgorithmIdentification(
        name=identity.name,
        version=identity.version,
        parameters=[
            f"architecture={identity.architecture}",
            f"weights_sha256={identity.weights_sha256}",
            f"label={label}",
            f"threshold={threshold:.6g}",
        ],
        family=codes.ALGORITHM_FAMILY_AI,
        manufacturer=settings.manufacturer,
    )
    tracking = TrackingIdentifier(
        uid=derived_uid("tracking", str(source.SOPInstanceUID), label, identity.weights_sha256),
        identifier=f"{label} image {image_number}"[:64],
    )
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=finding,
        algorithm_id=algorithm,
        measurements=[
            Measurement(
                name=codes.CERTAINTY_OF_FINDING, value=probability, unit=codes.PROBABILITY_UNIT
            ),
            Measurement(name=codes.THRESHOLD_VALUE, value=threshold, unit=codes.PROBABILITY_UNIT),
        ],
        qualitative_evaluations=[
            QualitativeEvaluation(
                name=finding, value=codes.presence_code(prediction.is_positive(label_index))
            )
        ],
        source_images=[
            SourceImageForMeasurementGroup(
                referenced_sop_class_uid=str(source.SOPClassUID),
                referenced_sop_instance_uid=str(source.SOPInstanceUID),
            )
        ],
    )
    if heatmap is not None:
        group[0].ContentSequence.append(
            ImageContentItem(
                name=codes.BEST_ILLUSTRATION_OF_FINDING,
                referenced_sop_class_uid=str(heatmap.SOPClassUID),
                referenced_sop_instance_uid=str(heatmap.SOPInstanceUID),
                relationship_type=RelationshipTypeValues.CONTAINS,
            )
        )
    return group


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
