"""The node's own UIDs and UID syntax (PS3.5 section 9.1).

Receiving (the C-STORE handler's checks of incoming UIDs) and outputs (the gate that
checks every produced object) both call :func:`is_valid_uid`, so a value is a UID in
one place exactly when it is one in the other.

dicomnode has no registered organisation root: every UID it makes is of the
``2.25.<integer>`` form (ISO/IEC 9834-8, PS3.5 B.2). Name-based ones
(:func:`name_based_uid`) are version-5 UUIDs in :data:`DICOMNODE_UUID_NAMESPACE`;
:mod:`dicomnode.outputs.uids` builds the UIDs of created objects the same way. The
node's Implementation Class UID and Implementation Version Name (sent in every
association and written in every file's meta header) are defined here, once.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

from pydicom.uid import UID

from dicomnode import __version__

__all__ = [
    "DICOMNODE_UUID_NAMESPACE",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "MAX_UID_LENGTH",
    "is_valid_uid",
    "name_based_uid",
]

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


#: Namespace of dicomnode's name-based UUIDs: ``uuid5(NAMESPACE_URL, "urn:dicomnode")``.
DICOMNODE_UUID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dicomnode")


def name_based_uid(*parts: str) -> str:
    """A deterministic ``2.25.<integer>`` UID derived from ``parts`` (at most 64 characters).

    The parts are length-prefixed before hashing, so ``("a", "bc")`` and ``("ab", "c")``
    give different UIDs.

    Raises:
        ValueError: no parts, or an empty part.
    """
    if not parts or any(not part for part in parts):
        raise ValueError("a name-based UID needs one or more non-empty parts")
    name = "".join(f"{len(part)}:{part}" for part in parts)
    return f"2.25.{uuid.uuid5(DICOMNODE_UUID_NAMESPACE, name).int}"


#: The node's Implementation Class UID (PS3.7 D.3.3.2): the same for every version.
IMPLEMENTATION_CLASS_UID: Final = UID(name_based_uid("implementation-class-uid"))
#: The node's Implementation Version Name: ``DICOMNODE_<version>``, at most 16 characters.
IMPLEMENTATION_VERSION_NAME: Final = f"DICOMNODE_{__version__}"[:16]
