"""UID syntax (PS3.5 section 9.1): the package's one UID validator.

Receiving (the C-STORE handler's checks of incoming UIDs) and outputs (the gate that
checks every produced object) both call :func:`is_valid_uid`, so a value is a UID in
one place exactly when it is one in the other.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_UID_LENGTH", "is_valid_uid"]

#: Longest UID in characters (the UI value representation's limit).
MAX_UID_LENGTH: Final = 64

_UID_PATTERN: Final = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(value: object) -> bool:
    """True for a single UID string of 1 to 64 characters: dot-separated decimal
    components without leading zeros (PS3.5 9.1).

    The whole string must match (``fullmatch``): ``re.match`` with ``^...$``, as in
    ``pydicom.uid.UID.is_valid``, lets a trailing newline through (``"1.2.3\\n"``).
    Multi-valued values (lists), bytes and ``None`` are not UIDs.
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_UID_LENGTH
        and _UID_PATTERN.fullmatch(value) is not None
    )
