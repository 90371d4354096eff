"""The output gate: every result object is checked in-process before it may be sent.

:func:`validate_result` collects *all* problems it finds and raises one
:class:`~dicomnode.errors.OutputBuildError` that lists them, so that the job's
``last_error`` says everything that is wrong at once. Checks:

* SOP Common / file meta: SOP Class and Instance UIDs present, valid, and equal to the
  Media Storage UIDs; a transfer syntax.
* Patient, General Study, General Series, General Equipment: the Type 1 attributes have
  a value, the Type 2 ones are present (possibly empty).
* Every element value is valid for its VR (recursively, into sequences).
* Secondary Capture: Image Pixel module consistent (samples vs photometric
  interpretation, bits, pixel data length for native transfer syntaxes).
* SR: document root (CONTAINER with a concept name and content), Completion and
  Verification flags, evidence sequences, every IMAGE/COMPOSITE reference in the
  content tree listed as evidence, every content item well formed for its value type
  (PS3.3 C.17.3), and for TID 1500 documents the skeleton (observer context, one
  Imaging Measurements container holding Measurement Groups, each with its Tracking
  Identifier and Tracking UID).
* Round trip: written as a Part-10 file to memory and read back with the same UIDs.

It does not replace dciodvfy (the tests run that too); it is the cheap check that runs
on every object in production.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    SecondaryCaptureImageStorage,
)
from pydicom.valuerep import validate_value

from dicomnode.errors import OutputBuildError
from dicomnode.uid import is_valid_uid

__all__ = ["drop_invalid_elements", "validate_result"]

logger = logging.getLogger(__name__)

_CONTENT_SEQUENCE: int = Tag("ContentSequence")
_SR_CLASSES = frozenset({ComprehensiveSRStorage, Comprehensive3DSRStorage, EnhancedSRStorage})
_STRING_VRS = frozenset(
    {
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "ST",
        "TM",
        "UC",
        "UI",
        "UR",
        "UT",
    }
)

_RELATIONSHIPS = frozenset(
    {"CONTAINS", "HAS PROPERTIES", "HAS OBS CONTEXT", "HAS ACQ CONTEXT", "INFERRED FROM",
     "SELECTED FROM", "HAS CONCEPT MOD"}
)  # fmt: skip
# Attributes each value type needs (PS3.3 C.17.3.2); NUM may have an empty Measured Value.
_VALUE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "CONTAINER": ("ContinuityOfContent",),
    "TEXT": ("TextValue",),
    "CODE": ("ConceptCodeSequence",),
    "NUM": (),
    "UIDREF": ("UID",),
    "IMAGE": ("ReferencedSOPSequence",),
    "COMPOSITE": ("ReferencedSOPSequence",),
    "DATE": ("Date",),
    "TIME": ("Time",),
    "DATETIME": ("DateTime",),
    "PNAME": ("PersonName",),
    "SCOORD": ("GraphicData", "GraphicType"),
    "SCOORD3D": ("GraphicData", "GraphicType", "ReferencedFrameOfReferenceUID"),
    "TCOORD": ("TemporalRangeType",),
    "WAVEFORM": ("ReferencedSOPSequence",),
}
_OBSERVER_TYPE = ("121005", "DCM")
_IMAGING_MEASUREMENTS = ("126010", "DCM")
_MEASUREMENT_GROUP = ("125007", "DCM")
_TRACKING_IDENTIFIER = ("112039", "DCM")
_TRACKING_UID = ("112040", "DCM")

# (keyword, type): "1" must have a value, "2" must be present.
_COMMON: tuple[tuple[str, str], ...] = (
    ("SOPClassUID", "1"),
    ("SOPInstanceUID", "1"),
    ("StudyInstanceUID", "1"),
    ("SeriesInstanceUID", "1"),
    ("Modality", "1"),
    ("PatientName", "2"),
    ("PatientID", "2"),
    ("PatientBirthDate", "2"),
    ("PatientSex", "2"),
    ("StudyDate", "2"),
    ("StudyTime", "2"),
    ("ReferringPhysicianName", "2"),
    ("StudyID", "2"),
    ("AccessionNumber", "2"),
    ("SeriesNumber", "2"),
    ("InstanceNumber", "2"),
    ("Manufacturer", "2"),
)
_SC_PIXEL: tuple[tuple[str, str], ...] = (
    ("SamplesPerPixel", "1"),
    ("PhotometricInterpretation", "1"),
    ("Rows", "1"),
    ("Columns", "1"),
    ("BitsAllocated", "1"),
    ("BitsStored", "1"),
    ("HighBit", "1"),
    ("PixelRepresentation", "1"),
    ("PixelData", "1"),
    ("ConversionType", "1"),
)
_SR_DOCUMENT: tuple[tuple[str, str], ...] = (
    ("ValueType", "1"),
    ("ConceptNameCodeSequence", "1"),
    ("ContentSequence", "1"),
    ("ContinuityOfContent", "1"),
    ("CompletionFlag", "1"),
    ("VerificationFlag", "1"),
    ("ContentDate", "1"),
    ("ContentTime", "1"),
    ("PerformedProcedureCodeSequence", "2"),
)


def validate_result(ds: Dataset, *, encoded_content: bool = False) -> bytes:
    """Check one produced object (heatmap SC or findings SR) before it is stored or sent.

    Args:
        ds: the object as built (a highdicom SOP instance or any pydicom Dataset with
            ``file_meta``).
        encoded_content: the SR's content tree is the one ``build_findings_sr`` encoded
            with :class:`~dicomnode.outputs.content.ContentWriter`, which validates every
            value as it writes it, gives every item its required attributes by
            construction and whose references the builder checked against the evidence.
            The tree is then not parsed back here (10 ms a document); the document
            level is checked as usual. The tests check such trees in full.

    Returns:
        the object encoded as a Part-10 file: the bytes that were read back and checked,
        ready to be written (so the object is serialised once).

    Raises:
        OutputBuildError: one or more problems; the message lists each on its own line.
    """
    problems: list[str] = []
    problems += _check_file_meta(ds)
    problems += _check_present(ds, _COMMON)
    sop_class = UID(str(ds.get("SOPClassUID", "")))
    if sop_class == SecondaryCaptureImageStorage:
        problems += _check_present(ds, _SC_PIXEL)
        if not problems:
            problems += _check_pixel_module(ds)
    elif sop_class in _SR_CLASSES:
        problems += _check_sr(ds, walk_content=not encoded_content)
    else:
        problems.append(f"SOP class {sop_class or '(none)'} is not one dicomnode produces")
    skip = {_CONTENT_SEQUENCE} if encoded_content else set()
    problems += [f"{where}: {message}" for where, message in _invalid_values(ds, skip=skip)]
    encoded = b""
    if not problems:
        encoded, round_trip_problems = _round_trip(ds)
        problems += round_trip_problems
    if problems:
        uid = ds.get("SOPInstanceUID", "(no SOP Instance UID)")
        raise OutputBuildError(f"result {uid} failed validation:\n  " + "\n  ".join(problems))
    logger.debug("result %s (%s) passed validation", ds.SOPInstanceUID, sop_class.name)
    return encoded


def drop_invalid_elements(ds: Dataset, tags: Iterable[BaseTag]) -> list[str]:
    """Delete those of ``tags`` whose value is invalid for its VR (top level only).

    Used for optional attributes copied from a received dataset, whose values we do not
    control.

    Returns:
        Keywords (or tags) of the deleted elements, for logging (no values: they may be PHI).
    """
    dropped: list[str] = []
    for tag in sorted(tags):
        if tag not in ds:
            continue
        element = ds[tag]
        if _element_problem(element) is not None:
            dropped.append(element.keyword or str(element.tag))
            del ds[tag]
    if dropped:
        logger.debug("dropped copied attributes with invalid values: %s", ", ".join(dropped))
    return dropped


def _check_file_meta(ds: Dataset) -> list[str]:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return ["no file meta information"]
    problems = []
    if not meta.get("TransferSyntaxUID"):
        problems.append("file meta has no TransferSyntaxUID")
    if meta.get("MediaStorageSOPClassUID") != ds.get("SOPClassUID"):
        problems.append("MediaStorageSOPClassUID differs from SOPClassUID")
    if meta.get("MediaStorageSOPInstanceUID") != ds.get("SOPInstanceUID"):
        problems.append("MediaStorageSOPInstanceUID differs from SOPInstanceUID")
    return problems


def _check_present(ds: Dataset | DataElement, required: Iterable[tuple[str, str]]) -> list[str]:
    problems = []
    for keyword, kind in required:
        if keyword not in ds:  # type: ignore[operator]
            problems.append(f"{keyword} (Type {kind}) is missing")
        elif kind == "1" and _is_empty(ds[keyword].value):  # type: ignore[index]
            problems.append(f"{keyword} (Type 1) is empty")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = ds.get(keyword)  # type: ignore[union-attr]
        if value and not is_valid_uid(value):
            problems.append(f"{keyword} {value!r} is not a valid UID")
    return problems


def _is_empty(value: object) -> bool:
    return (
        value is None
        or value == ""
        or (isinstance(value, (list, DicomSequence, MultiValue)) and len(value) == 0)
    )


def _check_pixel_module(ds: Dataset) -> list[str]:
    problems = []
    samples = int(ds.SamplesPerPixel)
    photometric = str(ds.PhotometricInterpretation)
    if photometric in ("MONOCHROME1", "MONOCHROME2") and samples != 1:
        problems.append(f"{photometric} needs SamplesPerPixel 1, not {samples}")
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") and samples != 3:
        problems.append(f"{photometric} needs SamplesPerPixel 3, not {samples}")
    if samples > 1 and "PlanarConfiguration" not in ds:
        problems.append("PlanarConfiguration is missing (Type 1C for SamplesPerPixel > 1)")
    allocated, stored, high = int(ds.BitsAllocated), int(ds.BitsStored), int(ds.HighBit)
    if not 1 <= stored <= allocated or high != stored - 1:
        problems.append(
            f"bits inconsistent: allocated {allocated}, stored {stored}, high bit {high}"
        )
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if syntax and not syntax.is_compressed:
        expected = int(ds.Rows) * int(ds.Columns) * samples * allocated // 8
        expected += expected % 2
        actual = len(ds.PixelData)
        if actual != expected:
            problems.append(
                f"PixelData has {actual} bytes, Rows x Columns x samples x bits gives {expected}"
            )
    return problems


def _check_sr(ds: Dataset, *, walk_content: bool = True) -> list[str]:
    """SR document checks; ``walk_content=False`` leaves the content tree unparsed."""
    required = _SR_DOCUMENT if walk_content else tuple(r for r in _SR_DOCUMENT if r[0] != "ContentSequence")
    problems = _check_present(ds, required)
    if not walk_content and "ContentSequence" not in ds:
        problems.append("ContentSequence (Type 1) is missing")
    if ds.get("Modality") != "SR":
        problems.append(f"Modality is {ds.get('Modality')!r}, must be 'SR'")
    if ds.get("ValueType") not in (None, "CONTAINER"):
        problems.append(f"root ValueType is {ds.ValueType!r}, must be CONTAINER")
    if ds.get("CompletionFlag") not in (None, "PARTIAL", "COMPLETE"):
        problems.append(f"CompletionFlag {ds.CompletionFlag!r} is not PARTIAL or COMPLETE")
    if ds.get("VerificationFlag") not in (None, "UNVERIFIED", "VERIFIED"):
        problems.append(f"VerificationFlag {ds.VerificationFlag!r} is not UNVERIFIED or VERIFIED")
    evidence = set(_evidence_uids(ds))
    if not evidence:
        problems.append(
            "no evidence (CurrentRequestedProcedureEvidenceSequence / PertinentOtherEvidenceSequence)"
        )
    if walk_content and "ContentSequence" in ds:
        for uid in _content_references(ds.ContentSequence):
            if uid not in evidence:
                problems.append(f"content references {uid}, which is not listed as evidence")
        problems += _check_content_items(ds.ContentSequence, "ContentSequence")
        if _is_tid1500(ds):
            problems += _check_tid1500(ds)
    return problems


def _is_tid1500(ds: Dataset) -> bool:
    templates = ds.get("ContentTemplateSequence") or []
    return bool(templates) and templates[0].get("TemplateIdentifier") == "1500"


def _check_content_items(items: DicomSequence, path: str) -> Iterator[str]:
    """PS3.3 C.17.3 content item rules, per value type, for every item of the tree."""
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        value_type = item.get("ValueType")
        if item.get("RelationshipType") not in _RELATIONSHIPS:
            yield f"{where}: RelationshipType {item.get('RelationshipType')!r} is not valid"
        if not item.get("ConceptNameCodeSequence"):
            yield f"{where}: {value_type} item has no ConceptNameCodeSequence"
        for keyword in _VALUE_KEYWORDS.get(str(value_type), ("(unknown value type)",)):
            if keyword == "(unknown value type)":
                yield f"{where}: ValueType {value_type!r} is not valid"
            elif _is_empty(item.get(keyword)):
                yield f"{where}: {value_type} item has no {keyword}"
        if value_type == "NUM":
            for measured in item.get("MeasuredValueSequence") or []:
                if "NumericValue" not in measured or not measured.get(
                    "MeasurementUnitsCodeSequence"
                ):
                    yield f"{where}: NUM item lacks its numeric value or unit"
        if value_type in ("IMAGE", "COMPOSITE"):
            for reference in item.get("ReferencedSOPSequence") or []:
                if not reference.get("ReferencedSOPClassUID") or not reference.get(
                    "ReferencedSOPInstanceUID"
                ):
                    yield f"{where}: {value_type} reference lacks its SOP Class or Instance UID"
        if "ContentSequence" in item:
            yield from _check_content_items(item.ContentSequence, f"{where}/ContentSequence")


def _check_tid1500(ds: Dataset) -> Iterator[str]:
    """The TID 1500 skeleton: observer, Imaging Measurements, tracked measurement groups."""
    root = list(ds.ContentSequence)
    if not any(_concept(item) == _OBSERVER_TYPE for item in root):
        yield "TID 1500: no Observer Type (TID 1002 observer context)"
    containers = [item for item in root if _concept(item) == _IMAGING_MEASUREMENTS]
    if len(containers) != 1:
        yield f"TID 1500: {len(containers)} Imaging Measurements containers, expected 1"
        return
    groups = list(containers[0].get("ContentSequence") or [])
    if not groups:
        yield "TID 1500: Imaging Measurements has no Measurement Group"
    for index, group in enumerate(groups):
        if group.get("ValueType") != "CONTAINER" or _concept(group) != _MEASUREMENT_GROUP:
            yield f"TID 1500: Imaging Measurements item {index} is not a Measurement Group container"
            continue
        names = {_concept(child) for child in group.get("ContentSequence") or []}
        if _TRACKING_IDENTIFIER not in names or _TRACKING_UID not in names:
            yield f"TID 1500: Measurement Group {index} lacks its Tracking Identifier or Tracking UID"


def _concept(item: Dataset) -> tuple[str, str] | None:
    names = item.get("ConceptNameCodeSequence")
    if not names:
        return None
    return str(names[0].get("CodeValue")), str(names[0].get("CodingSchemeDesignator"))


def _evidence_uids(ds: Dataset) -> Iterator[str]:
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(keyword) or []:
            for series in study.get("ReferencedSeriesSequence") or []:
                for instance in series.get("ReferencedSOPSequence") or []:
                    yield str(instance.ReferencedSOPInstanceUID)


def _content_references(items: DicomSequence) -> Iterator[str]:
    for item in items:
        if item.get("ValueType") in ("IMAGE", "COMPOSITE"):
            for reference in item.get("ReferencedSOPSequence") or []:
                yield str(reference.ReferencedSOPInstanceUID)
        if "ContentSequence" in item:
            yield from _content_references(item.ContentSequence)


def _invalid_values(ds: Dataset, path: str = "", *, skip: frozenset[int] | set[int] = frozenset()) -> Iterator[tuple[str, str]]:
    """(where, why) of every element whose value is invalid for its VR; ``skip``: top-level tags left out."""
    for tag in sorted(ds.keys()):  # the elements as the file lists them
        if tag in skip:
            continue
        element = ds[tag]
        where = f"{path}{element.keyword or element.tag}"
        if element.VR == "SQ":
            for index, item in enumerate(element.value or []):
                yield from _invalid_values(item, f"{where}[{index}]/")
            continue
        message = _element_problem(element)
        if message is not None:
            yield where, message


def _element_problem(element: DataElement) -> str | None:
    """Why the element's value is invalid for its VR, or None when it is fine."""
    if element.VR not in _STRING_VRS or element.value is None:
        return None
    values = (
        element.value if isinstance(element.value, (MultiValue, list, tuple)) else [element.value]
    )
    for value in values:
        if value is None:
            continue
        if element.VR in ("DS", "IS") and not isinstance(value, str):
            value = str(value)  # DSfloat / IS / int / float: check the string that is written
        try:
            validate_value(element.VR, value, pydicom_config.RAISE)
        except ValueError as exc:
            return f"invalid {element.VR} value ({exc})".replace(str(value), "<value>")
    return None


def _round_trip(ds: Dataset) -> tuple[bytes, list[str]]:
    """Write ``ds`` as a Part-10 file to memory and read it back; (bytes, problems)."""
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        back = dcmread(buffer)
    except Exception as exc:  # noqa: BLE001 - any write/read failure is a validation problem
        return b"", [f"cannot be written and read back as a Part-10 file: {type(exc).__name__}: {exc}"]
    problems = []
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if back.get(keyword) != ds.get(keyword):
            problems.append(f"{keyword} differs after a write/read round trip")
    return buffer.getvalue(), problems
