"""Association negotiation of the node's SCP: SOP classes, transfer syntaxes, AE checks."""

from __future__ import annotations

import socket

import pytest
from pydicom.uid import (
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
)
from pynetdicom.sop_class import Verification

from dicomnode.receiving.handlers import ReceiveContext
from dicomnode.receiving.scp import (
    stop_scp,
)
from tests.helpers import DX_PRESENTATION_STORAGE
from tests.peers.scp import UNCOMPRESSED, RunningScp, associate, rejection, run_scp

pytestmark = [pytest.mark.integration]

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MG_PRESENTATION_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.2")


def test_other_sop_classes_are_refused_at_negotiation(scp: RunningScp) -> None:
    assoc = associate(
        scp.port,
        [
            (CT_IMAGE_STORAGE, UNCOMPRESSED),
            (MG_PRESENTATION_STORAGE, UNCOMPRESSED),
            (DX_PRESENTATION_STORAGE, [JPEGBaseline8Bit, JPEG2000Lossless]),
        ],
    )
    assert assoc.is_established
    try:
        accepted = {cx.abstract_syntax: cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
        rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
        assert accepted == {DX_PRESENTATION_STORAGE: JPEG2000Lossless}  # lossless preferred
        assert rejected == {CT_IMAGE_STORAGE, MG_PRESENTATION_STORAGE}
    finally:
        assoc.release()


def test_calling_ae_allow_list(receive_context: ReceiveContext) -> None:
    running = run_scp(receive_context, allowed_calling_aets=["MODALITY1"])
    try:
        refused = associate(
            running.port, [(DX_PRESENTATION_STORAGE, UNCOMPRESSED)], calling="INTRUDER"
        )
        assert rejection(refused) == (0x01, 0x01, 0x03)  # permanent, calling AE not recognised

        allowed = associate(
            running.port, [(DX_PRESENTATION_STORAGE, UNCOMPRESSED)], calling="MODALITY1"
        )
        assert allowed.is_established
        allowed.release()
    finally:
        stop_scp(running.server, grace_s=2)


def test_called_ae_must_match(scp: RunningScp) -> None:
    assoc = associate(scp.port, [(DX_PRESENTATION_STORAGE, UNCOMPRESSED)], called="SOMEONEELSE")
    assert rejection(assoc)[1:] == (0x01, 0x07)  # called AE not recognised


def test_accepted_sockets_have_tcp_nodelay(scp: RunningScp) -> None:
    assoc = associate(scp.port, [(Verification, UNCOMPRESSED)])
    assert assoc.is_established
    try:
        [server_side] = [a for a in scp.server.active_associations if a.is_established]
        assert server_side.dul.socket is not None
        sock = server_side.dul.socket.socket
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()


def test_stop_closes_the_port(receive_context: ReceiveContext) -> None:
    running = run_scp(receive_context)
    stop_scp(running.server, grace_s=1)
    stop_scp(running.server, grace_s=1)  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", running.port), timeout=1).close()


def test_the_scp_announces_the_nodes_implementation_identity(scp: RunningScp) -> None:
    """The A-ASSOCIATE-AC carries dicomnode's Implementation Class UID and Version Name."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID

    from dicomnode.uid import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

    assoc = associate(scp.port, [(Verification, UNCOMPRESSED)])
    assert assoc.is_established
    try:
        assert assoc.acceptor.implementation_class_uid == IMPLEMENTATION_CLASS_UID
        assert assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
        assert IMPLEMENTATION_CLASS_UID != PYNETDICOM_IMPLEMENTATION_UID
    finally:
        assoc.release()
