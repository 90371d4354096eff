"""A generated corpus of the input classes of issue 4, one small dataset per case.

* :func:`valid_cases`: chest radiographs in every common form (CR/DX/SC,
  MONOCHROME1/2, 8/12/14/16-bit, signed, every transfer syntax the node offers,
  character sets, private tags, SQL-looking strings). Each must be answered
  0x0000, stored ACCEPTED, and produce an SC (and its study an SR).
* :func:`unusable_cases`: stored and acknowledged, but never reach the model: the
  receiver skips them with a reason, or (a corrupt compressed stream, which only
  decoding reveals) the batch does.
* :func:`malformed_cases`: wire data that cannot be decoded or is hostile; never
  answered 0x0000.

Compressed forms come from pydicom's encoders (RLE, JPEG-LS, JPEG 2000) and, for
the JPEG processes pydicom cannot encode, from DCMTK ``dcmcjpeg`` (skipped when it
is not installed). Everything is synthetic (``make_cxr_dataset``); no PHI.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom.dsutils import encode

from tests.helpers import (
    CR_IMAGE_STORAGE,
    SECONDARY_CAPTURE_STORAGE,
    make_cxr_dataset,
)

DX_PROCESSING_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
MF_GRAYSCALE_WORD_SC = UID("1.2.840.10008.5.1.4.1.1.7.3")
SQL = "x'); DROP TABLE instance; --"


@dataclass
class Case:
    """One dataset to send, with what must happen to it.

    Attributes:
        name: test id.
        dataset: the dataset; ``file_meta.TransferSyntaxUID`` is the one to send it in.
        receive: the instance state the receiver records ("accepted" or "skipped").
        skip_reason: substring of the receiver's or the batch's skip reason.
        batch: "result" (an SC is produced) or "skipped" (the batch skips the image).
    """

    name: str
    dataset: Dataset
    receive: Literal["accepted", "skipped"] = "accepted"
    skip_reason: str | None = None
    batch: Literal["result", "skipped"] = "result"

    @property
    def transfer_syntax(self) -> UID:
        return UID(self.dataset.file_meta.TransferSyntaxUID)

    @property
    def sop_class_uid(self) -> UID:
        return UID(self.dataset.SOPClassUID)


@dataclass
class Malformed:
    """Bytes put on the wire in a C-STORE, answered with one of ``statuses`` (never 0).

    Attributes:
        name: test id.
        payload: the data set bytes as sent.
        transfer_syntax: the presentation context's transfer syntax.
        sop_class_uid: the context's (and command's) SOP class.
        sop_instance_uid: the command's Affected SOP Instance UID.
        statuses: acceptable answers.
    """

    name: str
    payload: bytes
    transfer_syntax: UID
    sop_class_uid: UID
    sop_instance_uid: str
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({0xC210}))


def _with_ts(ds: Dataset, ts: UID) -> Dataset:
    ds.file_meta.TransferSyntaxUID = ts
    return ds


def _compressed(ts: UID, **kwargs: Any) -> Callable[[Dataset], Dataset]:
    def apply(ds: Dataset) -> Dataset:
        ds.compress(ts, **kwargs)
        return ds

    return apply


def _big_endian(ds: Dataset) -> Dataset:
    # pydicom writes OW bytes as they are: swap them so the big endian stream is right.
    if ds.BitsAllocated == 16:
        ds.PixelData = np.frombuffer(ds.PixelData, dtype="<u2").byteswap().tobytes()
    return _with_ts(ds, ExplicitVRBigEndian)


def _dcmcjpeg(*options: str) -> Callable[[Dataset], Dataset]:
    """Compress with DCMTK dcmcjpeg (JPEG processes pydicom cannot encode)."""

    def apply(ds: Dataset) -> Dataset:
        tool = shutil.which("dcmcjpeg", path="/usr/bin") or shutil.which("dcmcjpeg")
        if tool is None:
            raise _Unavailable("dcmcjpeg is not installed")
        with tempfile.TemporaryDirectory() as folder:
            source, target = Path(folder) / "in.dcm", Path(folder) / "out.dcm"
            ds.save_as(source, enforce_file_format=True)
            subprocess.run(
                [tool, *options, str(source), str(target)],
                check=True,
                capture_output=True,
                timeout=60,
            )
            return pydicom.dcmread(target)

    return apply


class _Unavailable(Exception):
    """An encoder needed for a case is missing."""


def _charset(charset: str | list[str], name: str, description: str) -> dict[str, Any]:
    return {"SpecificCharacterSet": charset, "PatientName": name, "StudyDescription": description}


def _private(ds: Dataset) -> Dataset:
    block = ds.private_block(0x0029, "DICOMNODE TEST", create=True)
    block.add_new(0x10, "LO", "private value")
    block.add_new(0x11, "OB", b"\x00\x01\x02\x03")
    block.add_new(0x12, "US", 7)
    item = Dataset()
    item.add_new(0x00291010, "LO", "DICOMNODE TEST")
    inner = Dataset()
    inner.CodeValue = "1"
    item.ReferencedImageSequence = [inner]
    block.add_new(0x13, "SQ", [item])
    ds.add_new(0x00311010, "UN", b"an unknown element with UN VR")  # no private creator
    return ds


# (name, make_cxr_dataset kwargs, transform)
_VALID: list[tuple[str, dict[str, Any], Callable[[Dataset], Dataset] | None]] = [
    ("dx-mono2-8bit-explicit", {"bits_stored": 8}, None),
    ("dx-mono1-16bit-explicit", {"photometric": "MONOCHROME1", "bits_stored": 16}, None),
    (
        "cr-12bit-implicit",
        {"sop_class_uid": CR_IMAGE_STORAGE},
        lambda ds: _with_ts(ds, ImplicitVRLittleEndian),
    ),
    ("sc-14bit-explicit", {"sop_class_uid": SECONDARY_CAPTURE_STORAGE, "bits_stored": 14}, None),
    (
        "dx-processing-12bit",
        {"sop_class_uid": DX_PROCESSING_STORAGE, "PresentationIntentType": "FOR PROCESSING"},
        None,
    ),
    ("dx-signed-12bit", {"bits_stored": 12, "signed": True}, None),
    (
        "cr-signed-16bit",
        {"sop_class_uid": CR_IMAGE_STORAGE, "bits_stored": 16, "signed": True},
        None,
    ),
    ("dx-big-endian-16bit", {"bits_stored": 16}, _big_endian),
    ("dx-deflated-12bit", {}, lambda ds: _with_ts(ds, DeflatedExplicitVRLittleEndian)),
    ("dx-rle-12bit", {}, _compressed(RLELossless)),
    (
        "cr-rle-signed-16bit",
        {"sop_class_uid": CR_IMAGE_STORAGE, "bits_stored": 16, "signed": True},
        _compressed(RLELossless),
    ),
    ("dx-jpegls-lossless-16bit", {"bits_stored": 16}, _compressed(JPEGLSLossless)),
    (
        "dx-jpegls-near-lossless-8bit",
        {"bits_stored": 8},
        _compressed(JPEGLSNearLossless, jls_error=2),
    ),
    ("dx-j2k-lossless-12bit", {}, _compressed(JPEG2000Lossless)),
    (
        "cr-j2k-lossy-mono1-16bit",
        {"sop_class_uid": CR_IMAGE_STORAGE, "photometric": "MONOCHROME1", "bits_stored": 16},
        _compressed(JPEG2000, j2k_cr=[20]),
    ),
    ("dx-jpeg-baseline-8bit", {"bits_stored": 8}, _dcmcjpeg("+eb")),
    ("dx-jpeg-extended-12bit", {"bits_stored": 12}, _dcmcjpeg("+ee")),
    ("dx-jpeg-lossless-sv1-16bit", {"bits_stored": 16}, _dcmcjpeg("+e1")),
    ("cr-jpeg-lossless-p14-12bit", {"sop_class_uid": CR_IMAGE_STORAGE}, _dcmcjpeg("+el")),
    ("charset-utf8", _charset("ISO_IR 192", "Gärtner^Zoë=王^小明", "Thorax ä ö ü ß"), None),
    (
        "charset-iso2022-jp",
        _charset(["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", "CHEST"),
        None,
    ),
    (
        "charset-iso2022-kr",
        _charset(["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동", "CHEST"),
        None,
    ),
    ("charset-latin1", _charset("ISO_IR 100", "Müller^François", "Thorax pa"), None),
    ("charset-unknown-term", {"SpecificCharacterSet": "ISO_IR 999"}, None),
    ("private-tags", {}, _private),
    (
        "sql-looking-strings",
        {"StudyDescription": SQL, "AccessionNumber": "1 OR 1=1", "PatientID": "';--"},
        None,
    ),
]

_UNUSABLE: list[tuple[str, dict[str, Any], Callable[[Dataset], Dataset] | None, str, str]] = [
    # (name, kwargs, transform, where skipped, reason substring)
    ("not-a-chest", {"BodyPartExamined": "ABDOMEN"}, None, "receive", "is not a chest"),
    (
        "ct-screenshot-as-sc",
        {"sop_class_uid": SECONDARY_CAPTURE_STORAGE, "Modality": "CT"},
        None,
        "receive",
        "not projection radiography",
    ),
    ("tiny-16x16", {"rows": 16, "cols": 16}, None, "receive", "outside 64..16384"),
    (
        "absurd-16400-rows",
        {"rows": 16400, "cols": 64, "bits_stored": 8},
        None,
        "receive",
        "outside 64..16384",
    ),
    (
        "bits-stored-over-allocated",
        {"bits_stored": 8, "BitsStored": 14, "HighBit": 13},
        None,
        "receive",
        "inconsistent with BitsAllocated",
    ),
    ("missing-pixel-data", {}, lambda ds: _drop(ds, "PixelData"), "receive", "no PixelData"),
    (
        "multi-frame",
        {"sop_class_uid": MF_GRAYSCALE_WORD_SC},
        lambda ds: _frames(ds, 2),
        "receive",
        "multi-frame",
    ),
    (
        "rgb-screenshot",
        {"sop_class_uid": SECONDARY_CAPTURE_STORAGE},
        lambda ds: _rgb(ds),
        "receive",
        "not a grayscale image",
    ),
    ("corrupt-j2k-stream", {}, lambda ds: _corrupt(ds, JPEG2000Lossless), "batch", ""),
    ("corrupt-rle-stream", {}, lambda ds: _corrupt(ds, RLELossless), "batch", ""),
]


def _drop(ds: Dataset, keyword: str) -> Dataset:
    delattr(ds, keyword)
    return ds


def _frames(ds: Dataset, frames: int) -> Dataset:
    ds.NumberOfFrames = frames
    ds.PixelData = ds.PixelData * frames
    for keyword in ("PresentationIntentType", "ImageLaterality"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def _rgb(ds: Dataset) -> Dataset:
    gray = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns)
    rgb = np.stack([(gray >> 4).astype(np.uint8)] * 3, axis=-1)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    for keyword in (
        "WindowCenter",
        "WindowWidth",
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
    ):
        delattr(ds, keyword)
    ds.PixelData = rgb.tobytes()
    return ds


def _corrupt(ds: Dataset, ts: UID) -> Dataset:
    """Well-formed encapsulation (header checks pass) around a codestream of noise."""
    noise = np.random.default_rng(7).integers(0, 256, size=2048, dtype=np.uint8).tobytes()
    ds.PixelData = encapsulate([noise])
    ds["PixelData"].VR = "OB"
    return _with_ts(ds, ts)


def _build(
    name: str, kwargs: dict[str, Any], transform: Callable[[Dataset], Dataset] | None, seed: int
) -> Dataset:
    ds = make_cxr_dataset(seed=seed, **kwargs)
    if transform is not None:
        ds = transform(ds)
    ds.SeriesDescription = f"corpus {name}"
    return ds


def valid_cases() -> list[Case]:
    """Every usable form; cases whose encoder is missing are left out."""
    cases = []
    for seed, (name, kwargs, transform) in enumerate(_VALID):
        try:
            cases.append(Case(name, _build(name, kwargs, transform, seed)))
        except _Unavailable:
            continue
    return cases


def valid_case_names() -> list[str]:
    """Ids of :func:`valid_cases` (for parametrisation without building them)."""
    return [name for name, _, _ in _VALID]


def unusable_cases() -> list[Case]:
    """Stored, acknowledged, and skipped with a reason (by the receiver or the batch)."""
    cases = []
    for seed, (name, kwargs, transform, where, reason) in enumerate(_UNUSABLE, start=100):
        ds = _build(name, kwargs, transform, seed)
        if where == "receive":
            cases.append(Case(name, ds, receive="skipped", skip_reason=reason, batch="skipped"))
        else:
            cases.append(
                Case(name, ds, receive="accepted", skip_reason=reason or None, batch="skipped")
            )
    return cases


def build_case(name: str) -> Case:
    """One case of :func:`valid_cases` or :func:`unusable_cases` by name."""
    for seed, (each, kwargs, transform) in enumerate(_VALID):
        if each == name:
            try:
                return Case(name, _build(name, kwargs, transform, seed))
            except _Unavailable as exc:
                import pytest

                pytest.skip(str(exc))
    for case in unusable_cases():
        if case.name == name:
            return case
    raise KeyError(name)


def unusable_case_names() -> list[str]:
    return [entry[0] for entry in _UNUSABLE]


def _explicit(ds: Dataset) -> bytes:
    payload = encode(ds, False, True)
    assert payload is not None
    return payload


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"):
        return struct.pack("<HH2sHL", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def malformed_cases() -> list[Malformed]:
    """Wire data that must never be acknowledged with 0x0000."""
    cases: list[Malformed] = []

    def add(
        name: str, ds: Dataset, payload: bytes, statuses: set[int], ts: UID = ExplicitVRLittleEndian
    ) -> None:
        cases.append(
            Malformed(
                name, payload, ts, UID(ds.SOPClassUID), str(ds.SOPInstanceUID), frozenset(statuses)
            )
        )

    ds = make_cxr_dataset(seed=200)
    full = _explicit(ds)
    add("truncated-in-pixel-data", ds, full[:-100], {0xC210})
    add("truncated-in-a-header", ds, full[:301], {0xC210, 0xC220, 0xC222})
    ds = make_cxr_dataset(seed=201)
    add(
        "garbage-after-header",
        ds,
        _explicit(ds)[:200] + bytes(range(256)) * 8,
        {0xC210, 0xC222, 0xC224},
    )

    ds = make_cxr_dataset(seed=202)
    add("implicit-vr-on-explicit-context", ds, encode(ds, True, True) or b"", {0xC210})
    ds = make_cxr_dataset(seed=203)
    add("explicit-vr-on-implicit-context", ds, _explicit(ds), {0xC210}, ImplicitVRLittleEndian)
    ds = make_cxr_dataset(seed=204, bits_stored=16)
    add(
        "big-endian-on-little-endian-context",
        ds,
        encode(ds, False, False) or b"",
        {0xC210, 0xC220, 0xC224},
    )
    ds = make_cxr_dataset(seed=205)
    add(
        "plain-data-on-deflated-context",
        ds,
        _explicit(ds),
        {0xC210},
        DeflatedExplicitVRLittleEndian,
    )

    ds = make_cxr_dataset(seed=206)
    without_pixels = _explicit(_drop(ds.copy(), "PixelData"))
    huge = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, 0x40000000) + b"\x00" * 512
    add("gigabyte-element-length", ds, without_pixels + huge, {0xC210})
    ds = make_cxr_dataset(seed=207)
    huge_private = _element(0x7FE10010, b"LO", b"HUGE")
    huge_private += struct.pack("<HH2sHL", 0x7FE1, 0x1010, b"OB", 0, 0xFFFFFFF0) + b"\x01" * 64
    add("gigabyte-private-element", ds, _explicit(ds) + huge_private, {0xC210})

    ds = make_cxr_dataset(seed=208)
    ds.StudyDescription = "X" * 5000
    add("overlong-lo", ds, _explicit_unchecked(ds), {0xC224})
    ds = make_cxr_dataset(seed=209)
    ds.PatientName = "A" * 300
    add("overlong-pn", ds, _explicit_unchecked(ds), {0xC224})
    ds = make_cxr_dataset(seed=210)
    ds.StudyDescription = "CHEST\x07\x1a\x00PA"
    add("control-characters-lo", ds, _explicit_unchecked(ds), {0xC224})
    ds = make_cxr_dataset(seed=211)
    ds.PatientName = "Line^One\nLine^Two"
    add("newline-in-pn", ds, _explicit_unchecked(ds), {0xC224})
    ds = make_cxr_dataset(seed=212)
    ds.PixelData = ds.PixelData[:-64]
    add("native-pixel-data-too-short", ds, _explicit(ds), {0xC222})
    ds = make_cxr_dataset(seed=213)
    item = Dataset()
    for _ in range(64):
        outer = Dataset()
        outer.ReferencedImageSequence = [item]
        item = outer
    ds.ReferencedImageSequence = [item]
    add("nesting-64-deep", ds, _explicit(ds), {0xC210})
    return cases


def _explicit_unchecked(ds: Dataset) -> bytes:
    """Encode without pydicom's write validation (the values are invalid on purpose)."""
    import pydicom.config

    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        return _explicit(ds)
    finally:
        pydicom.config.settings.writing_validation_mode = previous


def new_identity(ds: Dataset) -> Dataset:
    """``ds`` with fresh study/series/instance UIDs (to send a case again)."""
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds
