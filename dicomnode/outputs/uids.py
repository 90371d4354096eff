"""UIDs for the objects dicomnode creates.

dicomnode has no registered organisation root, so every UID it makes is of the
``2.25.<integer>`` form of ISO/IEC 9834-8 / ITU-T X.667 (a UUID written as one
decimal integer; PS3.5 section B.2). pydicom's :func:`~pydicom.uid.generate_uid`
with ``prefix=None`` builds exactly that form.

Two flavours:

* :func:`new_uid` -- random (a fresh UUID4), for one-off objects.
* :func:`derived_uid` -- deterministic: the same inputs always give the same UID
  (a name-based version-5 UUID of the parts, RFC 4122 section 4.3). Use it where re-running a job must
  produce the *same* SOP/Series Instance UID, so that a PACS that receives the result
  twice overwrites instead of storing a duplicate.

No module state: nothing is cached or counted between calls.
"""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from dicomnode.uid import (
    DICOMNODE_UUID_NAMESPACE,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    name_based_uid,
)

__all__ = ["DICOMNODE_UUID_NAMESPACE", "derived_uid", "new_uid", "stamp_implementation"]

def new_uid() -> str:
    """A new random UID of the form ``2.25.<decimal UUID4>`` (at most 64 characters)."""
    return str(generate_uid(prefix=None))


def derived_uid(*parts: str) -> str:
    """A deterministic ``2.25.<integer>`` UID derived from ``parts``.

    Args:
        parts: strings identifying the object, e.g. the source SOP Instance UID, the
            model's weights sha256 and a role such as ``"heatmap-sc"``. At least one,
            none empty. The parts are joined with an unambiguous separator, so
            ``("a", "bc")`` and ``("ab", "c")`` give different UIDs.

    Returns:
        The UID (at most 64 characters).

    Raises:
        ValueError: no parts, or an empty part.
    """
    return name_based_uid(*parts)


def stamp_implementation(ds: Dataset) -> None:
    """Name dicomnode (not highdicom or pydicom) as the writer in ``ds.file_meta``.

    Sets (0002,0012) Implementation Class UID and (0002,0013) Implementation Version
    Name to :data:`dicomnode.uid.IMPLEMENTATION_CLASS_UID` and
    :data:`dicomnode.uid.IMPLEMENTATION_VERSION_NAME`; creates the file meta when absent.
    """
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
