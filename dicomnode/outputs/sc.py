"""Build the Grad-CAM heatmap Secondary Capture for one processed image.

The SC carries the already-rendered RGB overlay (heatmap blended over the source image,
legend burned in) in a new series of the source's study. It copies patient and study
from the source (highdicom :meth:`SCImage.from_ref_dataset` plus the Patient/Study
modules), references the source in the Source Image Sequence, and says who made it and
how: Manufacturer/Model/Software Versions of the node, a Contributing Equipment item for
the model (name, version, architecture, weights sha256), Derivation Description and
Derivation Code (Grad-CAM). It is labelled non-diagnostic through its Series
Description and Image Comments (the SC IOD has no Content Qualification attribute).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.config import OutputSettings
from dicomnode.domain import ModelIdentity
from dicomnode.outputs import codes
from dicomnode.outputs.charset import with_writable_charset
from dicomnode.outputs.equipment import equipment_arguments
from dicomnode.outputs.iodcache import memoise_iod_lookups
from dicomnode.outputs.uids import derived_uid, stamp_implementation
from dicomnode.outputs.validate import drop_invalid_elements

if TYPE_CHECKING:
    from highdicom.sc import SCImage

__all__ = ["build_heatmap_sc"]

logger = logging.getLogger(__name__)

_REQUIRED_SOURCE = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")
# Placeholder handed to highdicom, which insists on a patient orientation; replaced by the
# source's own value (or an empty Type 2 value) right after construction.
_PLACEHOLDER_ORIENTATION = ("L", "F")


def build_heatmap_sc(
    source: Dataset,
    overlay_rgb: np.ndarray,
    *,
    series_instance_uid: str,
    series_number: int,
    instance_number: int,
    settings: OutputSettings,
    identity: ModelIdentity,
    sop_instance_uid: str | None = None,
) -> SCImage:
    """Wrap a rendered heatmap overlay in a DICOM Secondary Capture of the source's study.

    Args:
        source: header of the processed image (CR, DX or SC; pixel data not needed, so a
            ``dcmread(..., stop_before_pixels=True)`` result is fine). Must carry SOP Class,
            SOP Instance and Study Instance UIDs.
        overlay_rgb: the rendered overlay, ``(H, W, 3)`` ``uint8`` RGB, same orientation as
            the source image, long side at most ``settings.max_heatmap_side`` pixels.
        series_instance_uid: UID of the heatmap series (shared by the study's heatmaps).
        series_number: Series Number of that series, >= 1.
        instance_number: Instance Number within that series, >= 1.
        settings: labelling of result objects (manufacturer, series description, ...).
        identity: the model that produced the heatmap.
        sop_instance_uid: UID of the new instance; default: derived deterministically from
            ``series_instance_uid`` and the source's SOP Instance UID, so rebuilding the
            same result gives the same UID (a PACS then replaces instead of duplicating).

    Returns:
        The SC image (Explicit VR Little Endian, RGB, 8 bits), ready to write.

    Raises:
        TypeError: ``overlay_rgb`` is not a ``uint8`` numpy array.
        ValueError: the overlay has the wrong shape or size, the source lacks a required
            UID, or a value does not fit its DICOM attribute (e.g. a model name longer
            than 64 characters).
    """
    _check_overlay(overlay_rgb, settings.max_heatmap_side)
    source = with_writable_charset(source)
    missing = [keyword for keyword in _REQUIRED_SOURCE if not source.get(keyword)]
    if missing:
        raise ValueError(f"source dataset lacks {', '.join(missing)}")

    from highdicom.sc import ConversionTypeValues, SCImage

    memoise_iod_lookups()

    if sop_instance_uid is None:
        sop_instance_uid = derived_uid(
            "heatmap-sc", series_instance_uid, str(source.SOPInstanceUID)
        )
    sc = SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(overlay_rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        patient_orientation=_PLACEHOLDER_ORIENTATION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=settings.sc_series_description,
        **equipment_arguments(settings, identity, "AI inference and Grad-CAM"),
    )
    _copy_patient_and_study(sc, source)
    _copy_anatomy(sc, source)

    sc.ConversionType = ConversionTypeValues.WSD.value  # made on a workstation, not digitised (highdicom says DI)
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = (
        f"{settings.sc_series_description}. AI heatmap (Grad-CAM) of model {identity.name} "
        f"{identity.version}. Content qualification: {settings.content_qualification}."
    )
    sc.DerivationDescription = (
        f"Grad-CAM heatmap of model {identity.name} {identity.version} "
        f"({identity.architecture}) blended over the source image; "
        f"weights sha256 {identity.weights_sha256}"
    )
    sc.DerivationCodeSequence = [_code_item(codes.GRADCAM)]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [_code_item(codes.SOURCE_IMAGE_FOR_PROCESSING)]
    sc.SourceImageSequence = [reference]
    stamp_implementation(sc)
    logger.debug(
        "built heatmap SC %s for source %s (%dx%d)",
        sop_instance_uid,
        source.SOPInstanceUID,
        overlay_rgb.shape[1],
        overlay_rgb.shape[0],
    )
    return sc


def _check_overlay(overlay: np.ndarray, max_side: int) -> None:
    if not isinstance(overlay, np.ndarray):
        raise TypeError(f"overlay_rgb must be a numpy array, not {type(overlay).__name__}")
    if overlay.dtype != np.uint8:
        raise TypeError(f"overlay_rgb must be uint8, not {overlay.dtype}")
    if overlay.ndim != 3 or overlay.shape[2] != 3:
        raise ValueError(f"overlay_rgb must have shape (H, W, 3), not {overlay.shape}")
    if min(overlay.shape[:2]) < 1 or max(overlay.shape[:2]) > max_side:
        raise ValueError(
            f"overlay_rgb is {overlay.shape[1]}x{overlay.shape[0]}; each side must lie in [1, {max_side}]"
        )


def _code_item(code: object) -> Dataset:
    from highdicom.sr import CodedConcept

    return CodedConcept.from_code(code)  # type: ignore[arg-type]


def _copy_patient_and_study(sc: SCImage, source: Dataset) -> None:
    """Copy the remaining Patient and Study module attributes (issuer of ID, ages, ...).

    The identifying attributes ``from_ref_dataset`` set (IDs, names, dates, accession) are
    kept exactly as received, since a PACS matches on them. The further, optional ones
    copied here are dropped when their value is invalid for their VR (e.g. a Patient's
    Age of ``"62"``), so that a sender's sloppiness does not make our object invalid.
    """
    before = set(sc.keys())
    try:
        sc.copy_patient_and_study_information(source)
    except KeyError:
        # A SOP class highdicom has no IOD table for: the attributes from_ref_dataset
        # copied are all the SC gets.
        logger.debug(
            "no IOD table for SOP class %s; patient/study copy limited", source.SOPClassUID
        )
        return
    drop_invalid_elements(sc, set(sc.keys()) - before)


def _copy_anatomy(sc: SCImage, source: Dataset) -> None:
    """Body part, laterality and orientation as the source states them.

    Laterality (Type 2C, required only for a paired body part) is copied when the
    source says R or L and is otherwise absent: a chest is unpaired, and an empty
    value ("paired but unknown") draws a dciodvfy warning. A source without Body
    Part Examined (the NIH files) leaves the Body Part Examined absent; the SC then
    names its region in the Anatomic Region Sequence (SCT Chest), which is what the
    node's gate took the image for, so that Laterality is not required either.
    """
    body_part = source.get("BodyPartExamined")
    if body_part:
        sc.BodyPartExamined = body_part
    elif "AnatomicRegionSequence" not in sc:
        sc.AnatomicRegionSequence = [_code_item(codes.ANATOMIC_REGION_CHEST)]
    laterality = source.get("Laterality") or source.get("ImageLaterality")
    if laterality in ("R", "L"):
        sc.Laterality = laterality
    elif "Laterality" in sc:
        del sc.Laterality
    orientation = source.get("PatientOrientation")
    if orientation is not None and not isinstance(orientation, str) and len(orientation) == 2:
        sc.PatientOrientation = list(orientation)
    else:
        sc.PatientOrientation = []  # Type 2C: present, empty when the source gives none
