"""A raw-socket DICOM peer for protocol-abuse tests: hand-built PDUs, bounded reads.

pynetdicom's SCU cannot send a broken PDU on purpose, so these helpers build the
bytes with pynetdicom's own PDU classes (or by hand) and speak over a plain socket.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

A_ASSOCIATE_AC_TYPE = 0x02
A_ASSOCIATE_RJ_TYPE = 0x03
P_DATA_TYPE = 0x04
A_RELEASE_RP_TYPE = 0x06
A_ABORT_TYPE = 0x07


def associate_rq(
    contexts: Sequence[tuple[str, Sequence[str]]] = (("1.2.840.10008.1.1", (EXPLICIT_LE,)),),
    *,
    calling: str = "RAWSCU",
    called: str = "DICOMNODE",
    max_pdu: int = 16384,
) -> bytes:
    """An encoded A-ASSOCIATE-RQ PDU proposing ``(abstract syntax, [transfer syntaxes])``."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.1.1"
    primitive.user_information = [max_length, implementation]
    definitions = []
    for number, (abstract, syntaxes) in enumerate(contexts):
        context = build_context(abstract, list(syntaxes))
        context.context_id = 2 * number + 1
        definitions.append(context)
    primitive.presentation_context_definition_list = definitions
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def abort_pdu() -> bytes:
    """An A-ABORT PDU from the service user."""
    pdu = A_ABORT_RQ()
    pdu.source = 0x00
    pdu.reason_diagnostic = 0x00
    return bytes(pdu.encode())


def release_pdu() -> bytes:
    """An A-RELEASE-RQ PDU."""
    return bytes(A_RELEASE_RQ().encode())


def c_store_pdus(
    ds: Dataset,
    *,
    context_id: int = 1,
    max_pdu: int = 16384,
    message_id: int = 1,
    affected_sop_instance_uid: str | None = None,
) -> list[bytes]:
    """The P-DATA-TF PDUs of one C-STORE-RQ of ``ds`` (explicit VR little endian), in order.

    Args:
        affected_sop_instance_uid: the command's Affected SOP Instance UID, written by
            hand without any check (pynetdicom refuses to encode one over 64
            characters); default: the data set's, through pynetdicom.
    """
    if affected_sop_instance_uid is not None:
        return _hand_built_c_store(ds, context_id, max_pdu, message_id, affected_sop_instance_uid)
    request = C_STORE()
    request.MessageID = message_id
    request.Priority = 2
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    payload = encode(ds, False, True)
    assert payload is not None
    request.DataSet = BytesIO(payload)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdus = []
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdus.append(bytes(pdu.encode()))
    return pdus


def _hand_built_c_store(
    ds: Dataset, context_id: int, max_pdu: int, message_id: int, instance_uid: str
) -> list[bytes]:
    """A C-STORE-RQ whose command set is encoded element by element (implicit VR LE)."""

    def element(element: int, value: bytes) -> bytes:
        return struct.pack("<HHL", 0x0000, element, len(value)) + value

    def ui(value: str) -> bytes:
        raw = value.encode("ascii")
        return raw + b"\x00" * (len(raw) % 2)

    body = b"".join(
        (
            element(0x0002, ui(str(ds.SOPClassUID))),
            element(0x0100, struct.pack("<H", 0x0001)),  # C-STORE-RQ
            element(0x0110, struct.pack("<H", message_id)),
            element(0x0700, struct.pack("<H", 2)),  # priority low
            element(0x0800, struct.pack("<H", 0x0000)),  # a data set follows
            element(0x1000, ui(instance_uid)),
        )
    )
    command = element(0x0000, struct.pack("<L", len(body))) + body
    payload = encode(ds, False, True)
    assert payload is not None
    fragment = max_pdu - 6  # PDV item header (4 + 2) inside the PDU body
    pdus = []
    for is_command, data in ((True, command), (False, payload)):
        pieces = list(chunks(data, fragment))
        for index, piece in enumerate(pieces):
            control = (0x01 if is_command else 0x00) | (0x02 if index == len(pieces) - 1 else 0x00)
            item = struct.pack(">LBB", len(piece) + 2, context_id, control) + piece
            pdus.append(struct.pack(">BBL", P_DATA_TYPE, 0, len(item)) + item)
    return pdus


def response_status(pdu: Pdu) -> int:
    """The Status of a DIMSE response carried whole in one P-DATA-TF PDU."""
    assert pdu.type == P_DATA_TYPE, pdu
    (item_length,) = struct.unpack_from(">L", pdu.body, 0)
    control = pdu.body[5]
    assert control == 0x03, "expected a complete command fragment"
    command = decode(BytesIO(pdu.body[6 : 4 + item_length]), True, True)
    return int(command.Status)


@dataclass(frozen=True)
class Pdu:
    """A PDU read back from the node."""

    type: int
    body: bytes

    @property
    def reject_reason(self) -> tuple[int, int, int]:
        """(result, source, diagnostic) of an A-ASSOCIATE-RJ."""
        assert self.type == A_ASSOCIATE_RJ_TYPE
        return self.body[1], self.body[2], self.body[3]

    @property
    def abort_reason(self) -> tuple[int, int]:
        """(source, reason/diagnostic) of an A-ABORT."""
        assert self.type == A_ABORT_TYPE
        return self.body[2], self.body[3]


def read_pdu(sock: socket.socket, timeout_s: float) -> Pdu | None:
    """The next PDU from ``sock``, or None when the connection closes first.

    Raises:
        TimeoutError: nothing complete arrived within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s

    def exactly(n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete PDU within {timeout_s} s")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(n - len(data))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    header = exactly(6)
    if header is None:
        return None
    pdu_type, _, length = struct.unpack(">BBL", header)
    body = exactly(length)
    if body is None:
        return None
    return Pdu(pdu_type, body)


def wait_closed(sock: socket.socket, timeout_s: float) -> float:
    """Read (and drop) until the peer closes; the seconds it took.

    Raises:
        TimeoutError: still open after ``timeout_s``.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"connection still open after {timeout_s} s")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return time.monotonic() - start
        except TimeoutError:
            continue
        if not chunk:
            return time.monotonic() - start


def connect(port: int) -> socket.socket:
    """A TCP connection to the node on 127.0.0.1."""
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def open_association(
    port: int, contexts: Sequence[tuple[str, Sequence[str]]], **kwargs: object
) -> socket.socket:
    """Connect and negotiate; the socket of an established association.

    Raises:
        AssertionError: the node did not accept.
    """
    sock = connect(port)
    sock.sendall(associate_rq(contexts, **kwargs))  # type: ignore[arg-type]
    answer = read_pdu(sock, 10)
    assert answer is not None and answer.type == A_ASSOCIATE_AC_TYPE, answer
    return sock


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    """``data`` in pieces of at most ``size`` bytes."""
    for start in range(0, len(data), size):
        yield data[start : start + size]
