"""Association-level protections around pynetdicom's acceptor: hostile or broken peers.

pynetdicom 3.0 trusts the peer more than a hospital network allows:

* a PDU header is followed by a read of as many bytes as it claims (4 GiB if it
  says so), before anything checks the negotiated maximum PDU length;
* accepted sockets have no timeout, so a half-sent PDU blocks its thread forever;
* after an unknown PDU type the rest of the stream is parsed as more PDUs (an HTTP
  request becomes a string of "PDUs" read with blocking calls);
* a connection that never sends an A-ASSOCIATE-RQ holds one of the
  ``max_associations`` slots until the ACSE timeout, so a few silent sockets lock
  every modality out;
* the TLS handshake runs in the accept loop, so one slow TLS client stalls all.

This module closes those gaps with pynetdicom's documented extension points
(``AssociationServer`` subclass, a request handler class and its socket, event
handlers), without patching pynetdicom:

==========================================  ==========================================
peer behaviour                              what it gets
==========================================  ==========================================
PDU longer than the negotiated maximum      A-ABORT (invalid PDU parameter), closed
  (P-DATA-TF), or a control PDU > 1 MiB
unknown PDU type (garbage, HTTP, TLS to     A-ABORT (unrecognised PDU), closed
  the plain port)
data set / command larger than the limit    A-ABORT, closed; nothing stored
PDU started then silence                    closed after ``network_timeout_s``
A-ASSOCIATE-RQ not complete (nothing, part  closed ``acse_timeout_s`` after the
  of it, then silence)                      connection was accepted
connection with no A-ASSOCIATE-RQ           closed after ``acse_timeout_s``; never
                                            counts against ``max_associations``;
                                            the oldest such one is closed when more
                                            than ``max_pending_connections`` wait
A-ASSOCIATE-RQ without presentation ctx     A-ASSOCIATE-RJ (permanent, no reason)
more than ``max_associations``              A-ASSOCIATE-RJ (transient, local limit
                                            exceeded)
established but idle                        A-ABORT after ``network_timeout_s``
                                            (pynetdicom's idle timer)
TLS handshake slow / failing                in the connection's own thread, bounded
                                            by ``acse_timeout_s``; never delays others
==========================================  ==========================================

Log lines name the peer's address and the reason, never data set content.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from collections import OrderedDict
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import A_P_ABORT
from pynetdicom.transport import AssociationSocket, RequestHandler

from dicomnode.receiving.commands import CheckedDIMSEProvider

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

logger = logging.getLogger(__name__)

#: PDU types of PS3.8 9.3 (1 A-ASSOCIATE-RQ ... 7 A-ABORT).
_PDU_NAMES: Final = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
_P_DATA_TF: Final = 0x04
#: Largest non-P-DATA PDU read (bytes of the variable field). An A-ASSOCIATE-RQ with
#: 128 presentation contexts of 20 transfer syntaxes each is about 70 KiB.
MAX_CONTROL_PDU_BYTES: Final = 1024 * 1024
#: Ceiling for a P-DATA-TF PDU when ``maximum_pdu_size`` is 0 ("unlimited").
UNLIMITED_PDU_CEILING_BYTES: Final = 64 * 1024 * 1024
#: Largest command set accepted (bytes); a C-STORE-RQ command is about 200 bytes.
MAX_COMMAND_BYTES: Final = 64 * 1024
#: A-ABORT reasons for source 2 (service provider), PS3.8 table 9-26.
ABORT_REASON_NOT_SPECIFIED: Final = 0x00
ABORT_UNRECOGNIZED_PDU: Final = 0x01
ABORT_INVALID_PDU_PARAMETER: Final = 0x06
#: Chunk size of socket reads (bytes).
_RECV_CHUNK: Final = 256 * 1024
#: Item length of a data set PDV cut to its context ID and control header.
_DATA_ITEM_LENGTH: Final = struct.pack(">L", 2)
#: Serialises the association count of :func:`handle_requested`.
_COUNT_LOCK: Final = threading.Lock()


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits applied by :class:`GuardedSocket` and the handlers here.

    Attributes:
        max_associations: associations (A-ASSOCIATE-RQ received, not yet ended)
            served at once; more are rejected "local limit exceeded".
        max_pending_connections: accepted connections without an A-ASSOCIATE-RQ
            yet (or in their TLS handshake); past this the oldest is closed.
        max_dataset_bytes: largest C-STORE data set (bytes on the wire).
        network_timeout_s: longest wait for the rest of a started PDU (s), and
            pynetdicom's idle timeout of an established association.
        acse_timeout_s: longest wait for the A-ASSOCIATE-RQ and for a TLS handshake (s).
    """

    max_associations: int
    max_pending_connections: int
    max_dataset_bytes: int
    network_timeout_s: float
    acse_timeout_s: float


def peer_name(address: Any) -> str:
    """``host:port`` of a socket address tuple, for logs."""
    try:
        return f"{address[0]}:{address[1]}"
    except (TypeError, IndexError):
        return "?"


class PendingConnections:
    """Accepted connections that have not sent an A-ASSOCIATE-RQ yet, oldest first.

    Only these can be idle without the node owing them anything, so only they are
    closed to make room: a sender that has just connected sends its request within
    milliseconds, so it is practically never the oldest one.

    Args:
        limit: most connections kept waiting at once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._items: OrderedDict[int, _Pending] = OrderedDict()

    def add(self, sock: socket.socket, peer: str) -> int:
        """Register a newly accepted socket; close the oldest ones beyond the limit.

        Returns:
            the key to pass to :meth:`update` and :meth:`discard`.
        """
        key = id(sock)
        with self._lock:
            self._items[key] = _Pending(sock=sock, peer=peer, since=time.monotonic())
            evicted: list[_Pending] = []
            while len(self._items) > self.limit:
                evicted.append(self._items.popitem(last=False)[1])
        for item in evicted:
            logger.warning(
                "closing %s: no A-ASSOCIATE-RQ after %.1f s and %d newer connections are waiting",
                item.peer,
                time.monotonic() - item.since,
                self.limit,
            )
            item.close()
        return key

    def update(
        self, key: int, *, sock: socket.socket | None = None, assoc: Association | None = None
    ) -> bool:
        """Record the TLS-wrapped socket or the association of a pending connection.

        Returns:
            False when the connection was closed meanwhile (evicted).
        """
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return False
            if sock is not None:
                item.sock = sock
            if assoc is not None:
                item.assoc = assoc
            return True

    def discard(self, key: int | None) -> None:
        """Forget a connection (it sent its A-ASSOCIATE-RQ, or it ended)."""
        if key is None:
            return
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class _Pending:
    sock: socket.socket
    peer: str
    since: float
    assoc: Association | None = None

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.assoc is not None:
            end_unrequested(self.assoc)


def end_unrequested(assoc: Association) -> None:
    """Let an acceptor that never got an A-ASSOCIATE-RQ finish now.

    pynetdicom's acceptor thread waits ``acse_timeout`` for the request even after
    the connection is gone; an A-P-ABORT primitive on its queue ends that wait, and
    :func:`handle_requested` then stops its DUL thread.
    """
    if assoc.requestor.primitive is not None or assoc.is_aborted:
        return
    assoc.is_aborted = True
    primitive = A_P_ABORT()
    primitive.provider_reason = 0x00
    assoc.dul.to_user_queue.put(primitive)


def split_p_data(body: bytearray) -> tuple[bytearray, list[memoryview] | None]:
    """Take the data set fragments out of a P-DATA-TF PDU body (PS3.8 9.3.5).

    Args:
        body: the PDU after its 6-byte header: presentation data value items, each
            ``item length (4, big endian) | context ID | control header | fragment``.

    Returns:
        ``(reduced, fragments)``: ``reduced`` holds the same items, command set ones
        unchanged, data set ones cut to their context ID and control header (item
        length 2); ``fragments`` holds a view of each data set item's control header
        and fragment in ``body``, in order. A malformed body comes back unchanged with
        ``None``, for pynetdicom's decoder to refuse.
    """
    view = memoryview(body)
    reduced = bytearray()
    fragments: list[memoryview] = []
    offset = 0
    end = len(body)
    while offset < end:  # bounded: every round moves past one item of >= 6 bytes
        if offset + 6 > end:
            return body, None
        (item_length,) = struct.unpack_from(">L", body, offset)
        stop = offset + 4 + item_length
        if item_length < 2 or stop > end:
            return body, None
        if body[offset + 5] & 0x01:  # command set fragment: as received
            reduced += view[offset:stop]
        else:
            reduced += _DATA_ITEM_LENGTH
            reduced += view[offset + 4 : offset + 6]  # context ID, control header
            fragments.append(view[offset + 5 : stop])
        offset = stop
    return reduced, fragments


class GuardedSocket(AssociationSocket):
    """An ``AssociationSocket`` that checks each PDU before reading it.

    pynetdicom's DUL reads a PDU as ``recv(6)`` (type, reserved, length) followed
    by ``recv(length)``. Here the header is checked first: a length over the limit
    or an unknown type answers A-ABORT and closes the connection without reading
    the body; the DUL then sees a short read, i.e. the connection closed. Every
    read of a started PDU must complete within ``network_timeout_s``, and the first
    PDU (the A-ASSOCIATE-RQ) within ``acse_timeout_s`` of ``accepted_at``. The data
    fragments of P-DATA-TF PDUs are counted per message against
    ``max_dataset_bytes``.

    P-DATA fast path: once the association's DIMSE provider is a
    :class:`~dicomnode.receiving.commands.CheckedDIMSEProvider`, a P-DATA-TF body is
    read in one buffer right after its header, its data set fragments are queued on
    the provider as views (:func:`split_p_data`), and pynetdicom is given the PDU cut
    down to its control headers (the header's length says so). pynetdicom's state
    machine and DIMSE decoder run as before; only the bytes they copy are fewer.

    Args:
        assoc: the acceptor association.
        client_socket: the accepted (possibly TLS-wrapped) socket.
        limits: the node's connection limits.
        peer: ``host:port`` of the peer, for logs.
        accepted_at: ``time.monotonic()`` when the connection was accepted (default: now).
    """

    def __init__(
        self,
        assoc: Association,
        client_socket: socket.socket,
        limits: ConnectionLimits,
        peer: str,
        accepted_at: float | None = None,
    ) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self._limits = limits
        self._peer = peer
        #: Deadline (monotonic s) of the first complete PDU; None once one arrived.
        self._first_pdu_deadline: float | None = (
            time.monotonic() if accepted_at is None else accepted_at
        ) + limits.acse_timeout_s
        self._body: tuple[int, int] | None = None
        #: The reduced body of the P-DATA-TF PDU whose header was just returned.
        self._reduced: bytearray | None = None
        self._command_bytes = 0
        self._dataset_bytes = 0
        self._dead = False

    @property
    def ready(self) -> bool:
        """True when data can be read; never after this side gave up on the peer
        (bytes still buffered in the kernel are not read as more PDUs)."""
        if self._dead:
            return False
        return bool(super().ready)

    def recv(self, nr_bytes: int) -> bytearray:
        """Read a PDU header (checked) or the body of the PDU just announced."""
        if self._dead:
            return bytearray()
        if self._reduced is not None:  # the body of the P-DATA-TF just announced
            body, self._reduced = self._reduced, None
            return body
        if self._body is None:
            if nr_bytes != 6:  # not the DUL's header read: plain bounded read
                return self._read(nr_bytes)
            return self._read_header()
        pdu_type, _length = self._body
        self._body = None
        data = self._read(nr_bytes)
        if len(data) != nr_bytes:
            return data
        self._first_pdu_deadline = None  # a whole PDU arrived: network_timeout_s from now on
        if pdu_type == _P_DATA_TF and not self._count_fragments(data):
            return bytearray()
        return data

    def _read_header(self) -> bytearray:
        header = self._read(6)
        if len(header) < 6:
            return header
        pdu_type, _, length = struct.unpack(">BBL", header)
        name = _PDU_NAMES.get(pdu_type)
        if name is None:
            self._abort(ABORT_UNRECOGNIZED_PDU, f"unknown PDU type 0x{pdu_type:02X}")
            return bytearray()
        limit = self._limit_for(pdu_type)
        if length > limit:
            self._abort(
                ABORT_INVALID_PDU_PARAMETER,
                f"{name} PDU of {length} bytes exceeds the maximum of {limit}",
            )
            return bytearray()
        dimse = self.assoc.dimse
        if pdu_type == _P_DATA_TF and isinstance(dimse, CheckedDIMSEProvider):
            return self._read_p_data(header, length, dimse)
        self._body = (pdu_type, length)
        return header

    def _read_p_data(
        self, header: bytearray, length: int, dimse: CheckedDIMSEProvider
    ) -> bytearray:
        """The fast path of a P-DATA-TF PDU: read its body now, in one buffer; queue
        views of its data set fragments on ``dimse``; announce the reduced PDU
        (:func:`split_p_data`) to pynetdicom and hand it over on the next ``recv``."""
        body = self._read(length)
        if len(body) != length:
            return header  # the DUL's body read comes up short: connection closed
        self._first_pdu_deadline = None  # a whole PDU arrived: network_timeout_s from now on
        if not self._count_fragments(body):
            return bytearray()
        reduced, fragments = split_p_data(body)
        dimse.queue_fragments(fragments)
        self._reduced = reduced
        return header[:2] + struct.pack(">L", len(reduced))

    def _limit_for(self, pdu_type: int) -> int:
        if pdu_type != _P_DATA_TF:
            return MAX_CONTROL_PDU_BYTES
        negotiated = self.assoc.acceptor.maximum_length or 0
        return int(negotiated) if negotiated > 0 else UNLIMITED_PDU_CEILING_BYTES

    def _count_fragments(self, body: bytearray) -> bool:
        """Add the PDV fragments of a P-DATA-TF body to the current message's size.

        Returns:
            False when a limit was exceeded (the association was aborted).
        """
        offset = 0
        end = len(body)
        while offset + 6 <= end:
            (item_length,) = struct.unpack_from(">L", body, offset)
            if item_length < 2 or offset + 4 + item_length > end:
                return True  # malformed: pynetdicom's decoder answers it with A-ABORT
            control = body[offset + 5]
            fragment = item_length - 2
            if control & 0x01:  # command fragment
                self._command_bytes += fragment
                if self._command_bytes > MAX_COMMAND_BYTES:
                    self._abort(
                        ABORT_REASON_NOT_SPECIFIED, f"command set over {MAX_COMMAND_BYTES} bytes"
                    )
                    return False
                if control & 0x02:
                    self._command_bytes = 0
            else:
                self._dataset_bytes += fragment
                if self._dataset_bytes > self._limits.max_dataset_bytes:
                    self._abort(
                        ABORT_REASON_NOT_SPECIFIED,
                        f"data set over max_dataset_bytes ({self._limits.max_dataset_bytes})",
                    )
                    return False
                if control & 0x02:
                    self._dataset_bytes = 0
            offset += 4 + item_length
        return True

    def _read(self, nr_bytes: int) -> bytearray:
        """Read exactly ``nr_bytes`` unless the peer closes or ``network_timeout_s`` passes."""
        sock = self.socket
        if sock is None or nr_bytes <= 0:
            return bytearray()
        data = bytearray(nr_bytes)  # received straight into place: no chunk copies
        view = memoryview(data)
        got = 0
        timeout = self._limits.network_timeout_s
        deadline = time.monotonic() + timeout
        first = self._first_pdu_deadline
        if first is not None and first < deadline:
            deadline = first
        try:
            while got < nr_bytes:  # bounded: each round reads >= 1 byte, stops, or times out
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                count = sock.recv_into(view[got:], min(_RECV_CHUNK, nr_bytes - got))
                if not count:
                    break
                got += count
        except (TimeoutError, ssl.SSLError, OSError) as exc:
            if isinstance(exc, TimeoutError) and first is not None and deadline == first:
                logger.warning(
                    "closing %s: no complete A-ASSOCIATE-RQ within acse_timeout_s (%.0f s; %d of %d bytes)",
                    self._peer, self._limits.acse_timeout_s, got, nr_bytes,
                )  # fmt: skip
            elif isinstance(exc, TimeoutError):
                logger.warning(
                    "closing %s: %d of %d bytes of a PDU arrived within %.0f s",
                    self._peer, got, nr_bytes, timeout,
                )  # fmt: skip
            else:
                logger.info("connection with %s failed mid-PDU: %s", self._peer, type(exc).__name__)
            self._shutdown()
        finally:
            try:
                sock.settimeout(timeout)
            except OSError:
                pass
        view.release()
        if got < nr_bytes:
            del data[got:]
            self._closed_early()
        return data

    def _abort(self, reason: int, why: str) -> None:
        """Send an A-ABORT (source: service provider) and close the connection."""
        logger.warning("A-ABORT to %s: %s", self._peer, why)
        pdu = A_ABORT_RQ()
        pdu.source = 0x02
        pdu.reason_diagnostic = reason
        sock = self.socket
        if sock is not None:
            try:
                sock.settimeout(1.0)
                sock.sendall(pdu.encode())
            except OSError:
                pass
        self._shutdown()
        self._closed_early()

    def _shutdown(self) -> None:
        self._dead = True
        sock = self.socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _closed_early(self) -> None:
        """The peer is gone; end the acceptor at once if it never sent its request."""
        end_unrequested(self.assoc)


class NodeRequestHandler(RequestHandler):
    """Per-connection setup, run in the connection's own thread (never the accept loop).

    Does the TLS handshake when the server has a TLS context (bounded by
    ``acse_timeout_s``), sets the socket timeout, and builds the acceptor
    association around a :class:`GuardedSocket`.
    """

    server: Any  # NodeAssociationServer (scp.py); Any avoids an import cycle

    def handle(self) -> None:
        """Handshake (TLS), then start the association's threads."""
        accepted_at = time.monotonic()
        limits: ConnectionLimits = self.server.limits
        pending: PendingConnections = self.server.pending
        key = id(self.request)
        peer = peer_name(self.client_address)
        tls_context: ssl.SSLContext | None = self.server.tls_context
        if tls_context is not None:
            raw: socket.socket = self.request
            try:
                raw.settimeout(limits.acse_timeout_s)
                wrapped = tls_context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                reason = getattr(exc, "reason", None) or type(exc).__name__
                if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
                    logger.info("%s closed the connection before the TLS handshake", peer)
                else:
                    logger.warning("TLS handshake with %s failed: %s", peer, reason)
                pending.discard(key)
                _close_quietly(raw)
                return
            if not pending.update(key, sock=wrapped):
                _close_quietly(wrapped)
                return
            self.request = wrapped
            logger.info("TLS peer %s: %s (%s)", peer, _subject(wrapped), wrapped.version())
        self.request.settimeout(limits.network_timeout_s)
        assoc = self._create_association(accepted_at)
        assoc._dicomnode_pending_key = key  # type: ignore[attr-defined]
        if not pending.update(key, assoc=assoc):
            end_unrequested(assoc)  # evicted while we set up: let it end at once
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()

    def _create_association(self, accepted_at: float) -> Association:  # type: ignore[override]
        """pynetdicom's acceptor setup (``RequestHandler._create_association``) with a
        :class:`GuardedSocket` in place of the plain ``AssociationSocket``.

        Args:
            accepted_at: ``time.monotonic()`` when the connection was accepted.
        """
        from pynetdicom.association import Association

        assoc = Association(self.ae, MODE_ACCEPTOR)
        assoc.dimse = CheckedDIMSEProvider(assoc)  # bad command UIDs answered, not aborted
        assoc._server = self.server
        timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
        assoc.name = f"AcceptorThread@{timestamp}"
        assoc.set_socket(
            GuardedSocket(
                assoc,
                self.request,
                self.server.limits,
                peer_name(self.client_address),
                accepted_at,
            )
        )
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    assoc.bind(event, handler[0], handler[1])
        return assoc


def handle_requested(event: Event, limits: ConnectionLimits, pending: PendingConnections) -> None:
    """EVT_REQUESTED: the A-ASSOCIATE-RQ arrived; apply the association limits.

    Rejects a request without presentation contexts (permanent, no reason given)
    and, past ``max_associations`` requested-and-unfinished associations, rejects
    with "local limit exceeded" (transient). Connections that never sent a request
    are not counted, so silent sockets cannot lock senders out.
    """
    assoc = event.assoc
    pending.discard(getattr(assoc, "_dicomnode_pending_key", None))
    peer = _requestor_name(assoc)
    if assoc.is_aborted:  # ended by end_unrequested() before any request
        assoc.kill()
        return
    request = assoc.requestor.primitive
    if request is None or not request.presentation_context_definition_list:
        logger.warning("rejecting %s: A-ASSOCIATE-RQ without presentation contexts", peer)
        assoc.acse.send_reject(0x01, 0x01, 0x01)
        assoc.kill()
        return
    with _COUNT_LOCK:
        assoc._dicomnode_requested = True  # type: ignore[attr-defined]
        active = sum(
            1
            for other in assoc.ae.active_associations
            if other.is_acceptor
            and getattr(other, "_dicomnode_requested", False)
            and not (other.is_released or other.is_aborted or other.is_rejected)
        )
    if active > limits.max_associations:
        logger.warning(
            "rejecting %s: %d associations open (max_associations %d)",
            peer,
            active - 1,
            limits.max_associations,
        )
        assoc.acse.send_reject(0x02, 0x03, 0x02)
        assoc.kill()


def handle_conn_close(event: Event, pending: PendingConnections) -> None:
    """EVT_CONN_CLOSE: forget a pending connection that ended without a request."""
    pending.discard(getattr(event.assoc, "_dicomnode_pending_key", None))


def _requestor_name(assoc: Association) -> str:
    try:
        return f"{assoc.requestor.address}:{assoc.requestor.port}"
    except Exception:  # noqa: BLE001 - logging aid only
        return "?"


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _subject(sock: ssl.SSLSocket) -> str:
    """The commonName of a verified peer certificate, for logs."""
    cert: dict[str, Any] = dict(sock.getpeercert() or {})
    for rdn in cert.get("subject", ()):
        for pair in rdn:
            if pair[0] == "commonName":
                return f"CN={pair[1]}"
    return "certificate without CN"
