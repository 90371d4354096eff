"""C-STORE SCU: send produced result objects to the configured destination.

One association carries every due result of a send round. Each result gets a
typed :class:`SendOutcome`; the caller records it in the outbox (retry with
backoff, or FAILED with the peer's status).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.presentation import build_context

from dicomnode.config import DestinationSettings
from dicomnode.errors import SendError
from dicomnode.uid import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

logger = logging.getLogger(__name__)

#: SOP classes the node produces and sends: the heatmap (``outputs.sc``, highdicom
#: ``SCImage``) and the findings report (``outputs.sr``, highdicom ``ComprehensiveSR``).
#: The sending AE proposes exactly these, and the conformance statement lists them.
RESULT_SOP_CLASSES: Final[tuple[UID, ...]] = (SecondaryCaptureImageStorage, ComprehensiveSRStorage)
#: Transfer syntaxes proposed for each result SOP class (results are written uncompressed).
RESULT_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class SendOutcome:
    """What the destination answered for one object.

    Attributes:
        path: the file that was sent.
        ok: True when the destination answered 0x0000 (or a warning 0xB000-range).
        status: the DIMSE status, or None when no answer came (association failure).
        error: readable reason when not ok.
    """

    path: Path
    ok: bool
    status: int | None
    error: str | None


def set_tcp_nodelay(event: Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association socket."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - e.g. a TLS-wrapped socket on an odd platform
            logger.debug("could not set TCP_NODELAY")


def build_scu_ae(destination: DestinationSettings, calling_ae_title: str) -> AE:
    """The sending AE: timeouts from ``destination``, one context per result SOP class."""
    ae = AE(ae_title=calling_ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = destination.timeout_s
    ae.dimse_timeout = destination.timeout_s
    ae.network_timeout = destination.timeout_s
    ae.connection_timeout = destination.timeout_s
    ae.requested_contexts = [
        build_context(sop_class, list(RESULT_TRANSFER_SYNTAXES)) for sop_class in RESULT_SOP_CLASSES
    ]
    return ae


def send_files(destination: DestinationSettings, calling_ae_title: str, paths: Sequence[Path]) -> list[SendOutcome]:
    """C-STORE each file over one association.

    Args:
        destination: where to send; ``destination.host`` must be set.
        calling_ae_title: our AE title as SCU.
        paths: Part-10 files to send, in order.

    Returns:
        one outcome per path, in order. When the association cannot be made
        every outcome carries that reason.

    Raises:
        SendError: no destination host is configured.
    """
    if destination.host is None:
        raise SendError("no destination configured (set destination.host or --destination AET@HOST:PORT)")
    if not paths:
        return []
    ae = build_scu_ae(destination, calling_ae_title)
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)],
    )
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "association aborted or no answer"
        logger.warning("cannot send to %s: %s", where, reason)
        return [SendOutcome(p, False, None, f"{where}: {reason}") for p in paths]
    outcomes: list[SendOutcome] = []
    try:
        for path in paths:
            outcomes.append(_send_one(assoc, path, where))
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    for path in paths[len(outcomes):]:
        outcomes.append(SendOutcome(path, False, None, f"{where}: association lost"))
    return outcomes


def _send_one(assoc: object, path: Path, where: str) -> SendOutcome:
    try:
        dataset = dcmread(path)
    except (OSError, ValueError, InvalidDicomError) as exc:  # one bad file must not stop the round
        return SendOutcome(path, False, None, f"cannot read result file: {exc}")
    try:
        status = assoc.send_c_store(dataset)  # type: ignore[attr-defined]
    except (ValueError, RuntimeError) as exc:
        # e.g. no accepted presentation context for the SOP class
        return SendOutcome(path, False, None, f"{where}: {exc}")
    if not status or "Status" not in status:
        return SendOutcome(path, False, None, f"{where}: no C-STORE response (timeout or abort)")
    code = int(status.Status)
    if code == 0x0000 or 0xB000 <= code <= 0xBFFF:
        return SendOutcome(path, True, code, None)
    return SendOutcome(path, False, code, f"{where}: C-STORE failed with status 0x{code:04X}")
