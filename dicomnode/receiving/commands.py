"""DIMSE command sets pynetdicom cannot turn into a request: answered, not aborted.

pynetdicom validates the UIDs of a received command set only when it converts the
message to a primitive (``DIMSEMessage.message_to_primitive``); a C-STORE-RQ whose
Affected SOP Instance UID is, say, 350 characters raises there and pynetdicom
aborts the whole association (``Evt19``), so every instance the sender queued
behind it fails too. :class:`CheckedDIMSEProvider` checks the UIDs of each complete
C-STORE-RQ first and answers a bad one with ``0xC221`` (the status the C-STORE
handler gives a data set UID that is not a UID) on the open association; the data
set is dropped unread, nothing is stored, and the association carries on.

Other commands are left to pynetdicom unchanged.

The provider is also the receiving end of the guard's P-DATA fast path
(:class:`~dicomnode.receiving.guard.GuardedSocket`): the socket reads each P-DATA-TF
PDU once, hands pynetdicom a copy whose data set fragments are cut down to their
message control header, and queues views of the real fragments here
(:meth:`CheckedDIMSEProvider.queue_fragments`); :meth:`~CheckedDIMSEProvider.receive_primitive`
puts them back into the primitive made from that PDU, so pynetdicom's own decoder
assembles the message from views of the received buffer. pynetdicom's reading,
decoding and slicing of a PDU (about five copies of every data byte) then only
touch the few bytes of the reduced PDU.
"""

from __future__ import annotations

import logging
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE

from dicomnode.receiving.statuses import Status
from dicomnode.uid import is_valid_uid

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pynetdicom.association import Association
    from pynetdicom.pdu_primitives import P_DATA

logger = logging.getLogger(__name__)

#: Command Field of a C-STORE-RQ (PS3.7 E.1).
_C_STORE_RQ: Final = 0x0001


class CheckedDIMSEProvider(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, answering C-STORE-RQs with invalid command UIDs.

    Installed on each acceptor association by ``guard.NodeRequestHandler``.
    """

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        #: Per P-DATA-TF PDU read by the guard's fast path, in the order read: views of
        #: its data set PDVs (message control header + fragment), or None for a PDU
        #: passed on unchanged.
        self._fragments: deque[list[memoryview] | None] = deque()

    def queue_fragments(self, fragments: list[memoryview] | None) -> None:
        """Called by the socket for each P-DATA-TF PDU it reads, before pynetdicom sees it.

        Args:
            fragments: the PDU's data set PDVs (each: control header byte, then the
                fragment), whose places in the PDU given to pynetdicom hold only the
                control header; None when the PDU was passed on unchanged.
        """
        self._fragments.append(fragments)

    def receive_primitive(self, primitive: P_DATA) -> None:
        """Feed one P-DATA primitive to the message being received (pynetdicom's
        method, with a message whose decoding vets a complete C-STORE-RQ first).

        pynetdicom passes the primitives of P-DATA-TF PDUs in the order they were
        read (any other state aborts the association), one per PDU, so the oldest
        queued fragments belong to this primitive.
        """
        if self._fragments:
            fragments = self._fragments.popleft()
            if fragments:
                _restore_fragments(primitive, fragments)
        if self.message is None:
            message = DIMSEMessage()
            # An instance attribute: it survives pynetdicom switching the message's
            # class to C_STORE_RQ etc. once the command set is decoded.
            message.decode_msg = partial(_checked_decode, message, self)  # type: ignore[method-assign]
            self.message = message
        super().receive_primitive(primitive)


def _restore_fragments(primitive: P_DATA, fragments: list[memoryview]) -> None:
    """Put the data set fragments the guard took out back into ``primitive``, in order
    (its data set PDVs hold only their control header byte)."""
    pdvs = primitive.presentation_data_value_list
    taken = iter(fragments)
    for index, (context_id, data) in enumerate(pdvs):
        if not data[0] & 0x01:  # a data set PDV (command PDVs were left as received)
            pdvs[index] = (context_id, next(taken))  # type: ignore[assignment]  # pynetdicom reads it as bytes-like


def _checked_decode(
    message: DIMSEMessage,
    provider: DIMSEServiceProvider,
    primitive: P_DATA,
    assoc: Association | None = None,
) -> bool:
    """pynetdicom's ``decode_msg``; a complete C-STORE-RQ with an invalid Affected SOP
    Instance or Class UID is answered here and reported as not complete, so pynetdicom
    neither converts it (which would abort) nor queues it; the next P-DATA starts a
    new message."""
    if not type(message).decode_msg(message, primitive, assoc):
        return False
    problem = _command_uid_problem(message.command_set)
    if problem is None:
        return True
    _refuse(message, provider.assoc, problem)
    if message._data_set_file is not None:
        message._data_set_file.close()
    provider.message = None  # the data set is dropped unread
    return False


def _refuse(message: DIMSEMessage, assoc: Association, problem: str) -> None:
    """Send the C-STORE-RSP with ``0xC221`` for ``message``."""
    command = message.command_set
    message_id = int(_value(command, "MessageID"))
    logger.warning(
        "refused C-STORE (message %d) from %s: 0x%04X %s",
        message_id, _peer(assoc), Status.INVALID_UID, problem,
    )  # fmt: skip
    response = C_STORE()
    response.MessageIDBeingRespondedTo = message_id
    sop_class = _value(command, "AffectedSOPClassUID")
    if is_valid_uid(sop_class):
        response.AffectedSOPClassUID = sop_class
    response.Status = int(Status.INVALID_UID)
    assoc.dimse.send_msg(response, int(message.context_id or 0))


def _command_uid_problem(command: Dataset) -> str | None:
    """Why a C-STORE-RQ command set cannot be served (None: fine, or not a C-STORE-RQ
    with a usable Message ID, which pynetdicom handles as before)."""
    if _value(command, "CommandField") != _C_STORE_RQ:
        return None
    if not isinstance(_value(command, "MessageID"), int):
        return None
    for keyword in ("AffectedSOPInstanceUID", "AffectedSOPClassUID"):
        value = _value(command, keyword)
        if not is_valid_uid(value):
            length = len(value) if isinstance(value, str) else "none"
            return f"command {keyword} is not a valid UID (length {length})"
    return None


def _value(command: Dataset, keyword: str) -> Any:
    """A command element's value as received (None when absent or unreadable)."""
    try:
        return command.get(keyword)
    except Exception:  # noqa: BLE001 - an unreadable value is just "unusable"
        return None


def _peer(assoc: Association) -> str:
    try:
        return f"{assoc.requestor.ae_title.strip()} at {assoc.requestor.address}:{assoc.requestor.port}"
    except Exception:  # noqa: BLE001 - logging aid only
        return "?"
