"""The node's Storage SCP + Verification SCP: presentation contexts, limits, start/stop.

Only the chest radiograph SOP classes of :data:`validation.STORAGE_SOP_CLASSES`
(CR, DX for presentation/processing, grayscale Secondary Capture) and Verification
are supported; any other SOP class (CT, MR, MG, ...) is refused at association
negotiation. Each is offered with every transfer syntax pydicom can decode here.

Nothing happens at import time. ``serve`` builds the AE with :func:`build_ae` and
starts it with :func:`start_scp` (plus a second, TLS-only port when ``tls_port`` is
set); :func:`stop_scp` drains and stops both. Hostile-peer protections (PDU length
checks, timeouts, association limits that silent sockets cannot exhaust, the TLS
handshake off the accept loop) live in :mod:`dicomnode.receiving.guard`.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
import ssl
import threading
import time
from typing import Any, Final, cast

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import DicomSettings
from dicomnode.receiving.guard import (
    ConnectionLimits,
    NodeRequestHandler,
    PendingConnections,
    handle_conn_close,
    handle_requested,
    peer_name,
)
from dicomnode.receiving.handlers import ReceiveContext, handle_echo, handle_store
from dicomnode.receiving.validation import STORAGE_SOP_CLASSES
from dicomnode.uid import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

logger = logging.getLogger(__name__)

#: Uncompressed transfer syntaxes: pydicom always decodes them.
NATIVE_TRANSFER_SYNTAXES: Final[tuple[UID, ...]] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
#: Compressed transfer syntaxes offered when a pydicom decoder plugin is installed.
#: When a requestor proposes several in one presentation context, pynetdicom picks
#: the first of *this* list that was proposed, so the order is the node's
#: preference: uncompressed, then lossless, then lossy.
COMPRESSED_TRANSFER_SYNTAXES: Final[tuple[UID, ...]] = (
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    JPEG2000,
    HTJ2K,
)
#: Listen backlog: connection bursts (many modalities at once) queue instead of
#: being refused by the kernel; pynetdicom's default is socketserver's 5.
LISTEN_BACKLOG: Final = 128
#: How often the accept loop checks for a stop request (s); bounds stop latency.
_POLL_INTERVAL_S: Final = 0.2
#: pynetdicom's own association limit counts every acceptor thread, silent
#: connections included; ``guard.handle_requested`` enforces ``max_associations``
#: instead, so the built-in check is set out of reach.
_PYNETDICOM_LIMIT_OFF: Final = 1_000_000


def decodable_transfer_syntaxes() -> tuple[UID, ...]:
    """The transfer syntaxes the node accepts: native ones plus every compressed one
    that an installed pydicom decoder (pylibjpeg, pyjpegls, ...) can decode."""
    from pydicom.pixels.decoders.base import get_decoder

    available: list[UID] = list(NATIVE_TRANSFER_SYNTAXES)
    for uid in COMPRESSED_TRANSFER_SYNTAXES:
        try:
            usable = get_decoder(uid).is_available
        except NotImplementedError:
            usable = False
        if usable:
            available.append(uid)
        else:
            logger.warning("no pixel decoder for %s (%s): not accepted", uid.name, uid)
    return tuple(available)


class NodeAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, hardened against hostile or broken peers.

    * TCP_NODELAY on every accepted socket: Nagle's algorithm delays the small
      C-STORE-RSP PDU until the peer's delayed ACK (~40 ms on Linux loopback),
      which caps a sender at ~20 instances/s.
    * Every accepted connection is registered in :attr:`pending` until its
      A-ASSOCIATE-RQ arrives; the oldest is closed when too many wait.
    * TLS (``tls_context``) is not done here in the accept loop, as pynetdicom's
      ``ssl_context`` would, but by :class:`~dicomnode.receiving.guard.NodeRequestHandler`
      in the connection's own thread, so a slow handshake delays nobody else.

    * ``listener``: an already bound and listening socket (see :func:`bind_listener`)
      that several receiving processes share (:mod:`dicomnode.receiving.processes`).
      It is made non-blocking, so a process that loses the race for a connection to
      another one returns to its loop instead of hanging in ``accept``, and closing
      it never shuts it down for the other processes.

    Args:
        *args: as ``ThreadedAssociationServer``.
        limits: the node's connection limits.
        pending: registry of connections without a request yet (shared by the
            node's plain and TLS servers).
        tls_context: server TLS context, or None for plain TCP.
        listener: a listening socket to serve instead of binding a new one.
        **kwargs: as ``ThreadedAssociationServer``.
    """

    request_queue_size = LISTEN_BACKLOG
    # Association threads are daemons in pynetdicom; the short-lived request threads
    # are too, so a stuck peer can never keep the process alive. stop_scp() drains.
    daemon_threads = True

    def __init__(
        self,
        *args: Any,
        limits: ConnectionLimits,
        pending: PendingConnections,
        tls_context: ssl.SSLContext | None = None,
        listener: socket.socket | None = None,
        **kwargs: Any,
    ) -> None:
        self.listener = listener
        self.limits = limits
        self.pending = pending
        self.tls_context = tls_context
        #: The node's TLS server when this is the plain one and TLS is configured.
        self.tls_server: NodeAssociationServer | None = None
        kwargs["request_handler"] = NodeRequestHandler
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        """Bind as pynetdicom does, or adopt the shared ``listener``."""
        if self.listener is None:
            super().server_bind()
            return
        cast(socket.socket, self.socket).close()  # the unbound one socketserver made
        self.listener.setblocking(False)
        self.socket = self.listener
        self.server_address = self.listener.getsockname()

    def server_activate(self) -> None:
        """Listen, unless the shared ``listener`` already does."""
        if self.listener is None:
            super().server_activate()

    def server_close(self) -> None:
        """Close the listening socket; a shared one is only closed in this process
        (``shutdown(2)`` would stop it listening in the others too)."""
        if self.listener is None:
            super().server_close()
            return
        cast(socket.socket, self.socket).close()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection, disable Nagle on it and register it as pending."""
        listener = cast(socket.socket, self.socket)
        client_socket, address = listener.accept()
        try:
            client_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # e.g. not a TCP socket; never worth refusing the peer
            logger.debug("cannot set TCP_NODELAY: %s", exc)
        self.pending.add(client_socket, peer_name(address))
        return client_socket, address


def bind_listener(host: str, port: int, *, retry_s: float = 0.0) -> socket.socket:
    """A listening TCP socket on ``host:port`` for :func:`start_scp` to share.

    Bound as pynetdicom binds (``SO_REUSEADDR``, no ``SO_REUSEPORT``: a second node
    on the same port still fails with "address in use"), inheritable by child
    processes.

    Args:
        host: address to bind (IPv4 or IPv6 literal or name).
        port: TCP port (0 = any free one).
        retry_s: keep retrying "address in use" this long (s), for a restart while
            the receiving processes of a killed predecessor close their copies.

    Raises:
        OSError: the address cannot be bound.
    """
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    family, _type, _proto, _name, address = info
    deadline = time.monotonic() + max(retry_s, 0.0)
    for _attempt in range(1000):  # bounded by the deadline too
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
            continue
        sock.set_inheritable(True)
        return sock
    raise OSError(errno.EADDRINUSE, f"{host}:{port} stays in use")


@dataclasses.dataclass
class Listeners:
    """The bound listening sockets of a node: the DICOM port and the optional TLS one."""

    plain: socket.socket
    tls: socket.socket | None = None

    def fds(self) -> list[int]:
        """File descriptors to pass to a child process."""
        return [self.plain.fileno()] + ([self.tls.fileno()] if self.tls is not None else [])

    def close(self) -> None:
        """Close this process's copies."""
        for sock in (self.plain, self.tls):
            if sock is not None:
                sock.close()


def bind_listeners(settings: DicomSettings, *, retry_s: float = 0.0) -> Listeners:
    """Bind ``settings.port`` (and ``settings.tls_port``) for :func:`start_scp`.

    Raises:
        OSError: an address cannot be bound.
    """
    plain = bind_listener(settings.bind_address, settings.port, retry_s=retry_s)
    if settings.tls_port is None:
        return Listeners(plain)
    try:
        return Listeners(
            plain, bind_listener(settings.bind_address, settings.tls_port, retry_s=retry_s)
        )
    except BaseException:
        plain.close()
        raise


def build_ae(settings: DicomSettings) -> AE:
    """Build the node's application entity (not started).

    Args:
        settings: AE title, ACSE/DIMSE/network timeouts (s), maximum PDU size
            (bytes, 0 = unlimited up to guard.UNLIMITED_PDU_CEILING_BYTES),
            calling-AE allow-list (empty = any) and whether the called AE title
            must match ours. ``max_associations`` is enforced by
            :func:`~dicomnode.receiving.guard.handle_requested`, not here.

    Returns:
        A pynetdicom AE with the storage contexts of :data:`STORAGE_SOP_CLASSES`
        and Verification as SCP.
    """
    ae = AE(ae_title=settings.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.maximum_associations = _PYNETDICOM_LIMIT_OFF  # see guard.handle_requested
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.maximum_pdu_size = settings.maximum_pdu_size
    # A-ASSOCIATE-RJ reason 3 (calling AE not recognised) / 7 (called AE not recognised).
    ae.require_calling_aet = list(settings.allowed_calling_aets)
    ae.require_called_aet = settings.require_called_ae_title

    transfer_syntaxes = list(decodable_transfer_syntaxes())
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, transfer_syntaxes)
    ae.add_supported_context(
        Verification,
        [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian],
    )
    return ae


def connection_limits(settings: DicomSettings) -> ConnectionLimits:
    """The :class:`~dicomnode.receiving.guard.ConnectionLimits` of ``settings``."""
    return ConnectionLimits(
        max_associations=settings.max_associations,
        max_pending_connections=settings.max_pending_connections,
        max_dataset_bytes=settings.max_dataset_bytes,
        network_timeout_s=settings.network_timeout_s,
        acse_timeout_s=settings.acse_timeout_s,
    )


def start_scp(
    settings: DicomSettings,
    context: ReceiveContext,
    *,
    block: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    listeners: Listeners | None = None,
) -> NodeAssociationServer:
    """Build the AE and listen on ``settings.bind_address:settings.port``.

    When ``settings.tls_port`` is set, a second server on that port speaks only
    DICOM TLS with mutual authentication (:func:`dicomnode.receiving.tls.server_context`).
    Both share one AE, so ``max_associations`` counts the associations of both.

    Args:
        settings: the node's DICOM settings (see :func:`build_ae`).
        context: what the C-STORE handler needs (files, sessions, clock).
        block: when True, do not return while the server runs. The accept loop
            runs in a helper thread and this one waits in short joins, so signal
            handlers stay responsive: a ``KeyboardInterrupt`` or ``SystemExit``
            raised here (SIGINT, or a SIGTERM handler calling ``sys.exit``) stops
            the server with :func:`stop_scp` and propagates.
        ssl_context: server-side TLS context for ``settings.port`` itself, or None
            for plain TCP there.
        listeners: already bound sockets (:func:`bind_listeners`) to serve instead
            of binding the ports here; several processes may serve the same ones.

    Returns:
        The running server on ``settings.port`` (``block=False``), its TLS sibling
        in ``server.tls_server``; with ``block=True`` the call only ends by the
        exception that stopped it. ``server.server_address`` holds the bound
        ``(host, port)``.

    Raises:
        OSError: an address cannot be bound (port in use, not permitted).
        ConfigError: the TLS certificate, key or CA file cannot be loaded.
    """
    ae = build_ae(settings)
    limits = connection_limits(settings)
    pending = PendingConnections(settings.max_pending_connections)
    context = dataclasses.replace(context, max_dataset_bytes=settings.max_dataset_bytes)
    handlers: list[EventHandlerType] = [
        (evt.EVT_C_STORE, handle_store, [context]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_REQUESTED, handle_requested, [limits, pending]),
        (evt.EVT_CONN_CLOSE, handle_conn_close, [pending]),
    ]

    def make(
        port: int, tls: ssl.SSLContext | None, listener: socket.socket | None
    ) -> NodeAssociationServer:
        server = ae.make_server(
            (settings.bind_address, port),
            evt_handlers=handlers,
            server_class=NodeAssociationServer,
            limits=limits,
            pending=pending,
            tls_context=tls,
            listener=listener,
        )
        if not isinstance(server, NodeAssociationServer):  # pragma: no cover - pynetdicom contract
            raise TypeError(f"pynetdicom returned a {type(server).__name__}")
        # AE.start_server() does the same registration; AE.shutdown() and the server's
        # own shutdown() (which removes itself from this list) rely on it.
        ae._servers.append(server)
        return server

    server = make(settings.port, ssl_context, listeners.plain if listeners else None)
    if settings.tls_port is not None:
        from dicomnode.receiving.tls import server_context

        try:
            tls_listener = listeners.tls if listeners else None
            server.tls_server = make(settings.tls_port, server_context(settings), tls_listener)
        except BaseException:
            server.server_close()
            ae._servers.remove(server)
            raise
    threads = [_serve_in_thread(server, "dicomnode-scp")]
    if server.tls_server is not None:
        threads.append(_serve_in_thread(server.tls_server, "dicomnode-scp-tls"))
    host, port = server.server_address[:2]
    logger.info(
        "listening as %s on %s:%s%s%s (%d transfer syntaxes, calling AEs: %s, max %d associations)",
        settings.ae_title,
        host,
        port,
        " (TLS)" if ssl_context is not None else "",
        f", DICOM TLS on {host}:{settings.tls_port}" if settings.tls_port is not None else "",
        max(len(cx.transfer_syntax) for cx in ae.supported_contexts),
        ",".join(settings.allowed_calling_aets) or "any",
        settings.max_associations,
    )
    if block:
        try:
            while all(thread.is_alive() for thread in threads):
                threads[0].join(timeout=0.5)
        except (KeyboardInterrupt, SystemExit):
            logger.info("interrupted: stopping the SCP")
            stop_scp(server)
            raise
    return server


def _serve_in_thread(server: NodeAssociationServer, name: str) -> threading.Thread:
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": _POLL_INTERVAL_S},
        name=name,
        daemon=True,
    )
    thread.start()
    return thread


def stop_scp(server: ThreadedAssociationServer, *, grace_s: float = 5.0) -> None:
    """Stop accepting, let running associations finish for ``grace_s``, abort the rest.

    Stops the TLS sibling (``server.tls_server``) too. Safe to call from a signal
    handler in the thread that called ``start_scp(block=True)``, and idempotent.

    Args:
        server: what :func:`start_scp` returned.
        grace_s: seconds to wait for open associations before aborting them. An
            instance whose C-STORE was interrupted was never answered 0x0000, so the
            sender retries it.
    """
    if getattr(server, "_dicomnode_stopped", False):
        return
    server._dicomnode_stopped = True  # type: ignore[attr-defined]
    servers: list[ThreadedAssociationServer] = [server]
    sibling = getattr(server, "tls_server", None)
    if sibling is not None:
        servers.append(sibling)
    # Stop the accept loops and close the listening sockets first, so that no new
    # association starts while we drain (serve_forever runs in another thread, so
    # this cannot deadlock).
    for each in servers:
        try:
            each.shutdown()
        except (OSError, ValueError) as exc:
            logger.debug("server shutdown: %s", exc)
    deadline = time.monotonic() + max(grace_s, 0.0)

    def active() -> list[Any]:
        return [a for each in servers for a in each.active_associations]

    # Only established associations can be mid-transfer; ones still waiting for an
    # A-ASSOCIATE-RQ (a port probe, a silent client) are aborted at once.
    while any(a.is_established for a in active()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for assoc in active():
        if assoc.is_established:
            logger.warning("aborting association with %s at shutdown", assoc.requestor.ae_title)
        assoc.abort()
    for each in servers:
        logger.info("stopped listening on %s:%s", *each.server_address[:2])
