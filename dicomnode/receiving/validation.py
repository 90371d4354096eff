"""Header-only acceptance rules for incoming chest radiographs (no pixel decoding).

Three questions are asked of every received data set, in this order:

1. :func:`read_header` -- can we understand it at all? A deflated data set must not
   inflate past the size limit (:func:`check_inflated_size`), every element must
   parse, native pixel data must be as long as its dimensions say
   (:func:`check_structure`), and the SOP Class/Instance, Study and Series UIDs
   must be present and valid. A failure raises
   :class:`~dicomnode.errors.RejectedInstance` with a ``0xC2xx`` status: the sender
   gets a failure and nothing is stored.
2. :func:`check_command` -- does the data set match its C-STORE command and
   presentation context, and is its SOP class one we take? Otherwise ``0xA900``
   or ``0x0122``, nothing stored.
3. :func:`classify` -- is it a single-frame grayscale chest radiograph we can use?
   :class:`Accept`, or :class:`Skip` with a readable reason. Skipped instances are
   still stored and acknowledged with ``0x0000`` (a refusal only makes senders
   retry), but never reach the model.

Decisions recorded here (see ``README``/issue 2):

* ``BodyPartExamined`` absent or empty is accepted (the NIH DX file has none).
  When present, its words (split on anything that is not a letter or digit, after
  dropping view words such as PA, AP, LAT, PORTABLE) must all be chest words
  (CHEST, THORAX, LUNG, ...). So ``"CHEST PA"`` and ``"PORT CHEST"`` are accepted,
  ``"CHEST_TO_PELVIS"``, ``"CHESTABDPELVIS"``, ``"ABDOMEN"`` and ``"EXTREMITY"`` skipped.
* Lateral views are chest radiographs: the view is not checked.
* ``NumberOfFrames`` absent or 1 is single-frame; more is skipped.
* Modality, when present, must be a projection radiography modality (CR, DX, RG, DR)
  or OT (Secondary Capture's "other"); a CT screenshot stored as SC is skipped.

Reasons never contain patient data: only attribute keywords, numbers and
sanitised, truncated code strings.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
)

from dicomnode.errors import RejectedInstance
from dicomnode.receiving.statuses import Status
from dicomnode.uid import is_valid_uid

# --- SOP classes we take (the association refuses every other storage class) ---
#: CR, DX (for presentation and for processing) and Secondary Capture; also
#: multi-frame grayscale byte / word SC, accepted at negotiation because some
#: converters store a single chest radiograph this way (NumberOfFrames = 1); more than
#: one frame is skipped by :func:`classify`. Single-bit and true-colour SC are refused.
STORAGE_SOP_CLASSES: Final[tuple[UID, ...]] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
)

MIN_SIDE: Final = 64
MAX_SIDE: Final = 16384
MAX_SEQUENCE_DEPTH: Final = 32

_CHEST_WORDS: Final = frozenset(
    {"CHEST", "THORAX", "THORACIC", "LUNG", "LUNGS", "TORAX", "THORAKS", "PECHO"}
)
_VIEW_WORDS: Final = frozenset(
    {
        "PA", "AP", "LAT", "LATERAL", "LL", "RL", "FRONTAL", "PORT", "PORTABLE", "XR", "X", "RAY",
        "XRAY", "CR", "DX", "DR", "UPRIGHT", "ERECT", "SUPINE", "SEMI", "VIEW", "VIEWS", "1V", "2V",
        "1", "2", "AND", "ONLY",
    }
)  # fmt: skip
_RADIOGRAPHY_MODALITIES: Final = frozenset({"CR", "DX", "RG", "DR", "OT"})
_GRAYSCALE: Final = frozenset({"MONOCHROME1", "MONOCHROME2"})
#: Longest value per text VR in characters (0 = no limit: only control characters
#: are checked). PN: per component group. DA and TM allow the ACR-NEMA forms
#: ("yyyy.mm.dd", 10) and the 16 characters of older editions.
_TEXT_LIMITS: Final = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 10, "DS": 16, "DT": 26, "IS": 12, "LO": 64,
    "LT": 10240, "PN": 64, "SH": 16, "ST": 1024, "TM": 16, "UI": 64, "UC": 0, "UT": 0,
}  # fmt: skip
#: Control characters a text value may carry: ESC (ISO 2022 code extensions) in any
#: VR; also TAB, LF, FF, CR in the free-text VRs LT, ST and UT.
_CONTROLS_ANY: Final = frozenset("\x1b")
_TEXT_CONTROLS: Final = frozenset("\x1b\t\n\x0c\r")
_UNDEFINED_LENGTH: Final = 0xFFFFFFFF
_ITEM_TAG: Final = 0xE000FFFE  # (FFFE,E000) read as little-endian uint32 of group, element
_SEQ_DELIM_TAG: Final = 0xE0DDFFFE
#: Most bytes one inflate step of :func:`check_inflated_size` produces.
_INFLATE_CHUNK: Final = 4 * 1024 * 1024


@dataclass(frozen=True)
class InstanceHeader:
    """The identifying UIDs of a received data set, each present and valid."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str


@dataclass(frozen=True)
class Accept:
    """The instance is a usable chest radiograph; it goes to inference."""


@dataclass(frozen=True)
class Skip:
    """The instance is stored but not used.

    Attributes:
        reason: why, readable and free of patient data, e.g.
            ``"BodyPartExamined 'EXTREMITY' is not a chest"``.
    """

    reason: str


Verdict = Accept | Skip


def safe_text(value: object, limit: int = 16) -> str:
    """A short printable-ASCII rendering of an untrusted header value for reasons and logs."""
    text = str(value)[:limit]
    return "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in text)


def read_header(ds: Dataset, transfer_syntax: UID) -> InstanceHeader:
    """Check that the data set parses (:func:`check_structure`) and read its UIDs.

    Args:
        ds: the received data set (as decoded lazily by pydicom/pynetdicom).
        transfer_syntax: the presentation context's transfer syntax.

    Returns:
        The SOP Class/Instance, Study and Series Instance UIDs.

    Raises:
        RejectedInstance: the :func:`check_structure` statuses; ``0xC220`` when one
            of the UIDs is missing or empty, ``0xC221`` when one is not a valid UID.
    """
    check_structure(ds, transfer_syntax)
    return InstanceHeader(
        sop_class_uid=_required_uid(ds, "SOPClassUID"),
        sop_instance_uid=_required_uid(ds, "SOPInstanceUID"),
        study_instance_uid=_required_uid(ds, "StudyInstanceUID"),
        series_instance_uid=_required_uid(ds, "SeriesInstanceUID"),
    )


def check_command(
    header: InstanceHeader,
    *,
    command_sop_class_uid: object,
    command_sop_instance_uid: object,
    context_sop_class_uid: object,
) -> None:
    """Check the data set against its C-STORE request and presentation context.

    Args:
        header: the data set's UIDs (:func:`read_header`).
        command_sop_class_uid: the request's Affected SOP Class UID (None when absent).
        command_sop_instance_uid: the request's Affected SOP Instance UID (None when absent).
        context_sop_class_uid: the presentation context's abstract syntax.

    Raises:
        RejectedInstance: ``0xA900`` when a command or context UID differs from the
            data set's, ``0x0122`` when the SOP class is not in :data:`STORAGE_SOP_CLASSES`.
    """
    if str(command_sop_instance_uid or "") != header.sop_instance_uid:
        raise RejectedInstance(
            Status.MISMATCH, "Affected SOP Instance UID differs from the data set's"
        )
    if str(command_sop_class_uid or "") != header.sop_class_uid:
        raise RejectedInstance(
            Status.MISMATCH, "Affected SOP Class UID differs from the data set's"
        )
    if header.sop_class_uid != str(context_sop_class_uid):
        raise RejectedInstance(
            Status.MISMATCH, "SOP Class UID differs from the presentation context's"
        )
    if header.sop_class_uid not in STORAGE_SOP_CLASSES:
        raise RejectedInstance(
            Status.SOP_CLASS_NOT_SUPPORTED, f"SOP class {header.sop_class_uid} is not taken"
        )


def check_inflated_size(payload: bytes | memoryview, limit: int) -> None:
    """Inflate a deflated data set in bounded steps before pydicom does it unbounded.

    pynetdicom inflates with one ``zlib.decompress`` call, so a few hundred KiB of
    deflated zeros would become gigabytes. Here at most ``limit`` bytes are
    produced (in steps of 4 MiB, then discarded) and the data set is refused if
    more would follow.

    Args:
        payload: the deflated data set bytes as received.
        limit: most bytes the inflated data set may have.

    Raises:
        RejectedInstance: ``0xC223`` when it inflates past ``limit``, ``0xC210``
            when the deflate stream is corrupt.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending: bytes | memoryview = payload
    total = 0
    too_large = RejectedInstance(
        Status.DATASET_TOO_LARGE,
        f"deflated data set of {len(payload)} bytes inflates past max_dataset_bytes ({limit})",
    )
    try:
        while True:  # bounded: each round consumes input or ends
            total += len(inflater.decompress(pending, _INFLATE_CHUNK))
            if total > limit:
                raise too_large
            pending = inflater.unconsumed_tail
            if not pending:
                break
        total += len(inflater.flush())
    except zlib.error as exc:
        raise RejectedInstance(Status.CANNOT_UNDERSTAND, "deflated data set is corrupt") from exc
    if total > limit:
        raise too_large


def _required_uid(ds: Dataset, keyword: str) -> str:
    """A present, single-valued, valid UID attribute.

    Raises:
        RejectedInstance: ``0xC220`` when missing or empty, ``0xC221`` when invalid.
    """
    value: Any = ds.get(keyword)
    if value is None or value == "":
        raise RejectedInstance(Status.MISSING_UID, f"{keyword} is missing")
    if not is_valid_uid(value):
        length = len(value) if isinstance(value, str) else "multi-valued"
        raise RejectedInstance(
            Status.INVALID_UID, f"{keyword} is not a valid UID (length {length})"
        )
    return str(value)


def check_structure(ds: Dataset, transfer_syntax: UID) -> None:
    """Make sure the whole data set parses, without decoding compressed pixels.

    Every element (nested sequences included) is converted from its raw bytes, so
    an undecodable value fails here instead of in the batch. Native pixel data must
    hold exactly the bytes its dimensions need (one pad byte allowed); encapsulated
    pixel data must be a well-formed item sequence.

    Args:
        ds: the received data set (as decoded lazily by pydicom/pynetdicom).
        transfer_syntax: the presentation context's transfer syntax.

    Raises:
        RejectedInstance: ``0xC210`` when an element cannot be parsed, the
            encapsulation is broken or the encoding is not the transfer syntax's
            (implicit VR data on an explicit VR context or the reverse),
            ``0xC222`` when the native pixel data length does not match Rows x
            Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated, ``0xC224``
            when a text value is longer than its VR allows or holds control
            characters.
    """
    _check_encoding(ds, transfer_syntax)
    try:
        _parse_all(ds, depth=0)
    except RejectedInstance:
        raise
    except Exception as exc:
        raise RejectedInstance(
            Status.CANNOT_UNDERSTAND, f"data set cannot be parsed ({type(exc).__name__})"
        ) from exc
    if "PixelData" not in ds:
        return
    value = ds.PixelData
    if not isinstance(value, bytes | bytearray):
        raise RejectedInstance(Status.CANNOT_UNDERSTAND, "PixelData has no byte value")
    if transfer_syntax.is_encapsulated:
        _check_encapsulation(value)
        return
    expected = _native_length(ds)
    if expected is None:
        return  # dimensions unusable: classify() skips it with a reason
    if len(value) not in (expected, expected + 1):
        raise RejectedInstance(
            Status.PIXEL_LENGTH,
            f"native PixelData is {len(value)} bytes but its dimensions need {expected}",
        )


def _check_encoding(ds: Dataset, transfer_syntax: UID) -> None:
    """Refuse implicit VR data on an explicit VR context and the reverse.

    pydicom silently switches between implicit and explicit VR when the first
    element does not fit the expected one (and pynetdicom then labels the data set
    with the context's transfer syntax), so the stored file would lie about its
    encoding. The raw elements still say how they were read.
    """
    first = next(iter(ds.keys()), None)  # the first element tells (iterating ds converts)
    if first is None:
        return
    raw = ds.get_item(first)
    if isinstance(raw, RawDataElement) and raw.is_implicit_VR != transfer_syntax.is_implicit_VR:
        found = "implicit" if raw.is_implicit_VR else "explicit"
        raise RejectedInstance(
            Status.CANNOT_UNDERSTAND,
            f"data set is {found} VR but the transfer syntax is {transfer_syntax.name}",
        )


def _parse_all(ds: Dataset, depth: int) -> None:
    """Convert every element from its raw bytes, refusing truncated values.

    pydicom silently keeps a value shorter than its header's length (a truncated
    stream), so each raw element's length is compared before it is converted.
    """
    if depth > MAX_SEQUENCE_DEPTH:
        raise RejectedInstance(
            Status.CANNOT_UNDERSTAND, f"sequences nested deeper than {MAX_SEQUENCE_DEPTH}"
        )
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if (
            isinstance(raw, RawDataElement)
            and raw.length != _UNDEFINED_LENGTH
            and isinstance(raw.value, bytes)
            and len(raw.value) != raw.length
        ):
            raise RejectedInstance(
                Status.CANNOT_UNDERSTAND,
                f"element {tag} is truncated ({len(raw.value)} of {raw.length} bytes)",
            )
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                _parse_all(item, depth + 1)
        elif elem.VR in _TEXT_LIMITS and elem.value is not None:
            _check_text(tag, elem.VR, elem.value)


def _check_text(tag: object, vr: str, value: object) -> None:
    """Refuse a text value over its VR's length limit (PS3.5 table 6.2-1) or with
    control characters, so such values never reach the result objects that copy them.

    Raises:
        RejectedInstance: ``0xC224``; the reason names the tag and VR, never the value.
    """
    limit = _TEXT_LIMITS[vr]
    allowed = _TEXT_CONTROLS if vr in ("LT", "ST", "UT") else _CONTROLS_ANY
    values = value if isinstance(value, MultiValue | list | tuple) else (value,)
    for item in values:
        text = str(item).rstrip("\x00 ")
        # PN: the limit applies to each component group (alphabetic=ideographic=phonetic).
        parts = text.split("=") if vr == "PN" else (text,)
        if limit and any(len(part) > limit for part in parts):
            raise RejectedInstance(
                Status.INVALID_VALUE, f"{vr} value of {tag} is longer than {limit} characters"
            )
        if any((ord(ch) < 0x20 and ch not in allowed) or ord(ch) == 0x7F for ch in text):
            raise RejectedInstance(
                Status.INVALID_VALUE, f"{vr} value of {tag} contains control characters"
            )


def _native_length(ds: Dataset) -> int | None:
    """Bytes of native pixel data that the header describes, or None if it can't say."""
    dims: list[int] = []
    for keyword, default in (
        ("Rows", None),
        ("Columns", None),
        ("SamplesPerPixel", 1),
        ("NumberOfFrames", 1),
        ("BitsAllocated", None),
    ):
        value = _int(ds, keyword, default)
        if value is None or value < 1:
            return None
        dims.append(value)
    rows, cols, samples, frames, bits = dims
    if bits != 1 and bits % 8 != 0:
        return None
    total_bits = rows * cols * samples * frames * bits
    return (total_bits + 7) // 8


def _check_encapsulation(value: bytes | bytearray) -> None:
    """Walk the item headers of encapsulated pixel data (PS3.5 A.4) without copying."""
    view = memoryview(value)
    offset = 0
    items = 0
    while offset < len(view):
        if offset + 8 > len(view):
            raise RejectedInstance(
                Status.CANNOT_UNDERSTAND, "encapsulated PixelData ends inside an item header"
            )
        tag, length = struct.unpack_from("<II", view, offset)
        if tag == _SEQ_DELIM_TAG:
            break
        if tag != _ITEM_TAG:
            raise RejectedInstance(
                Status.CANNOT_UNDERSTAND, "encapsulated PixelData has a non-item element"
            )
        if length == 0xFFFFFFFF or offset + 8 + length > len(view):
            raise RejectedInstance(
                Status.CANNOT_UNDERSTAND, "encapsulated PixelData item overruns the value"
            )
        offset += 8 + length
        items += 1
    if items < 2:
        raise RejectedInstance(
            Status.CANNOT_UNDERSTAND,
            "encapsulated PixelData has no fragment after the offset table",
        )


def classify(ds: Dataset) -> Verdict:
    """Decide from the header alone whether an instance is a usable chest radiograph.

    Never decodes pixel data and never raises on odd values: anything it cannot
    read is a :class:`Skip` with a reason.

    Args:
        ds: a data set that passed :func:`check_structure`.

    Returns:
        :class:`Accept` or :class:`Skip` (first failing rule wins).
    """
    for rule in _RULES:
        reason = rule(ds)
        if reason is not None:
            return Skip(reason)
    return Accept()


def _rule_pixels(ds: Dataset) -> str | None:
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            return "float pixel data is not supported"
        return "no PixelData"
    return None


def _rule_modality(ds: Dataset) -> str | None:
    modality = ds.get("Modality")
    if modality in (None, ""):
        return None
    if not isinstance(modality, str) or modality.strip().upper() not in _RADIOGRAPHY_MODALITIES:
        return f"Modality '{safe_text(modality)}' is not projection radiography"
    return None


def _rule_body_part(ds: Dataset) -> str | None:
    body_part = ds.get("BodyPartExamined")
    if body_part in (None, ""):
        return None
    if not isinstance(body_part, str) or not _is_chest(body_part):
        return f"BodyPartExamined '{safe_text(body_part)}' is not a chest"
    return None


def _is_chest(body_part: str) -> bool:
    words = [w for w in re.split(r"[^A-Z0-9]+", body_part.upper()) if w and w not in _VIEW_WORDS]
    return bool(words) and all(word in _CHEST_WORDS for word in words)


def _rule_frames(ds: Dataset) -> str | None:
    if "NumberOfFrames" not in ds:
        return None
    frames = _int(ds, "NumberOfFrames")
    if frames is None:
        return "NumberOfFrames is not a number"
    if frames > 1:
        return f"multi-frame image ({frames} frames)"
    if frames < 1:
        return f"NumberOfFrames is {frames}"
    return None


def _rule_grayscale(ds: Dataset) -> str | None:
    samples = _int(ds, "SamplesPerPixel", default=1)
    if samples != 1:
        return f"SamplesPerPixel is {samples}, not a grayscale image"
    photometric = ds.get("PhotometricInterpretation")
    if not isinstance(photometric, str) or photometric.strip().upper() not in _GRAYSCALE:
        return f"PhotometricInterpretation '{safe_text(photometric)}' is not MONOCHROME1/2"
    return None


def _rule_dimensions(ds: Dataset) -> str | None:
    for keyword in ("Rows", "Columns"):
        value = _int(ds, keyword)
        if value is None:
            return f"{keyword} missing or not a number"
        if not MIN_SIDE <= value <= MAX_SIDE:
            return f"{keyword} is {value}, outside {MIN_SIDE}..{MAX_SIDE}"
    return None


def _rule_bits(ds: Dataset) -> str | None:
    allocated = _int(ds, "BitsAllocated")
    stored = _int(ds, "BitsStored")
    if allocated not in (8, 16):
        return f"BitsAllocated is {allocated}, not 8 or 16"
    if stored is None or not 1 <= stored <= allocated:
        return f"BitsStored {stored} is inconsistent with BitsAllocated {allocated}"
    representation = _int(ds, "PixelRepresentation", default=0)
    if representation not in (0, 1):
        return f"PixelRepresentation is {representation}"
    return None


_RULES: Final = (
    _rule_pixels,
    _rule_modality,
    _rule_body_part,
    _rule_frames,
    _rule_grayscale,
    _rule_dimensions,
    _rule_bits,
)


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    """An integer attribute, ``default`` when absent, None when present but unusable."""
    if keyword not in ds:
        return default
    try:
        value = ds[keyword].value
    except Exception:  # noqa: BLE001 - an unreadable value is just "unusable"
        return None
    if value is None or value == "":
        return default
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return None  # multi-valued
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
