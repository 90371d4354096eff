"""Every DIMSE status the node answers to a C-STORE or C-ECHO, in one place.

The handlers (:mod:`dicomnode.receiving.handlers`), the header checks
(:mod:`dicomnode.receiving.validation`), the command-set check
(:mod:`dicomnode.receiving.commands`) and the conformance statement
(:mod:`dicomnode.conformance`) all take their codes from :class:`Status`; the
statement lists every member with its :attr:`Status.meaning` and :attr:`Status.when`,
so a status the node can return cannot be missing from it.

Codes: PS3.4 B.2.3 (Storage Service Class statuses) and PS3.7 C (status classes).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

__all__ = ["Status"]


class Status(IntEnum):
    """A DIMSE status the node returns; an ``int``, so it goes straight into a response."""

    SUCCESS = 0x0000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    MISMATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC210
    MISSING_UID = 0xC220
    INVALID_UID = 0xC221
    PIXEL_LENGTH = 0xC222
    DATASET_TOO_LARGE = 0xC223
    INVALID_VALUE = 0xC224

    @property
    def meaning(self) -> str:
        """The status class and its standard meaning, e.g. ``"Refused: out of resources"``."""
        return _TEXT[self][0]

    @property
    def when(self) -> str:
        """When the node returns it, in the words of the conformance statement."""
        return _TEXT[self][1]

    @property
    def hex(self) -> str:
        """The code as the standard writes it: ``"0xC210"``."""
        return f"0x{int(self):04X}"


#: (meaning, when) per status; a test checks that every member has an entry.
_TEXT: Final[dict[Status, tuple[str, str]]] = {
    Status.SUCCESS: (
        "Success",
        (
            "stored and queued, stored and skipped for inference (not a usable chest "
            "radiograph), a repeat of a stored SOP Instance UID (first copy kept), or a C-ECHO"
        ),
    ),
    Status.SOP_CLASS_NOT_SUPPORTED: (
        "Refused: SOP class not supported",
        "the data set's SOP Class UID is not one the node takes",
    ),
    Status.PROCESSING_FAILURE: (
        "Failure: processing failure",
        "an unexpected error in the node while storing the instance",
    ),
    Status.OUT_OF_RESOURCES: (
        "Refused: out of resources",
        (
            "the file or its database record cannot be written (disk full, database "
            "unavailable; a partial file is removed), or the data folder has less free "
            "space than store.min_free_bytes (nothing is written)"
        ),
    ),
    Status.MISMATCH: (
        "Error: data set does not match SOP class",
        (
            "the command's Affected SOP Instance/Class UID or the presentation context's "
            "abstract syntax differs from the data set's UIDs"
        ),
    ),
    Status.CANNOT_UNDERSTAND: (
        "Error: cannot understand",
        (
            "the data set cannot be parsed, its pixel data encapsulation is broken, its "
            "encoding is not the transfer syntax's, or a deflated data set is corrupt"
        ),
    ),
    Status.MISSING_UID: (
        "Error: cannot understand (required UID missing)",
        "SOP Class, SOP Instance, Study Instance or Series Instance UID is missing or empty",
    ),
    Status.INVALID_UID: (
        "Error: cannot understand (invalid UID)",
        (
            "one of those UIDs, or the command's Affected SOP Instance/Class UID, is not a "
            "valid UID (the association carries on)"
        ),
    ),
    Status.PIXEL_LENGTH: (
        "Error: cannot understand (pixel data length)",
        (
            "native pixel data is not as long as Rows x Columns x Samples x Frames x Bits "
            "Allocated requires"
        ),
    ),
    Status.DATASET_TOO_LARGE: (
        "Error: cannot understand (data set too large)",
        "a deflated data set inflates past dicom.max_dataset_bytes",
    ),
    Status.INVALID_VALUE: (
        "Error: cannot understand (invalid text value)",
        "a text value is longer than its VR allows or contains control characters",
    ),
}
