"""Data elements encoded as Explicit VR Little Endian bytes (PS3.5 7.1.2, 7.1.3).

The two places where the node writes DICOM bytes itself rather than through pydicom,
because pydicom's per-element cost dominated a hot path: the File Meta header of every
received instance (:func:`dicomnode.store.files.part10_header`) and the findings SR's
content tree (:mod:`dicomnode.outputs.content`). Both are pinned by tests to the bytes
pydicom writes.
"""

from __future__ import annotations

import struct

__all__ = ["element", "header"]

#: VRs whose explicit-VR header has a 4-byte length (PS3.5 7.1.2).
_LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
#: VRs padded to even length with NUL rather than a space (PS3.5 6.2).
_NUL_PADDED_VRS = frozenset({"UI", "OB", "UN"})


def header(tag: int, vr: str, length: int) -> bytes:
    """Tag, VR and value length of one element; ``tag`` as 0xGGGGEEEE, ``length`` in bytes.

    Raises:
        ValueError: the length does not fit the VR's 16-bit length field.
    """
    if vr in _LONG_LENGTH_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), 0, length)
    if length > 0xFFFF:
        raise ValueError(f"a {vr} value of {length} bytes does not fit its 16-bit length")
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), length)


def element(tag: int, vr: str, value: bytes) -> bytes:
    """One element, its encoded value padded to an even length as its VR requires."""
    if len(value) % 2:
        value += b"\x00" if vr in _NUL_PADDED_VRS else b" "
    return header(tag, vr, len(value)) + value
