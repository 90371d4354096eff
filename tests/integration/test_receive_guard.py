"""Hostile and broken peers at the association level, over raw sockets (guard.py).

Each case is answered promptly (A-ABORT, A-ASSOCIATE-RJ or a close within the
configured timeout), stores nothing, and leaves the node serving. Timeouts are
short here (2 s) so the suite stays fast; the integration tests use long ones.
"""

from __future__ import annotations

import socket
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
)
from pynetdicom.sop_class import Verification
from sqlalchemy import Engine

from dicomnode.receiving.guard import (
    ABORT_INVALID_PDU_PARAMETER,
    ABORT_UNRECOGNIZED_PDU,
    MAX_CONTROL_PDU_BYTES,
)
from dicomnode.receiving.handlers import ReceiveContext
from dicomnode.receiving.scp import stop_scp
from dicomnode.receiving.statuses import Status
from tests.helpers import DX_PRESENTATION_STORAGE, make_cxr_dataset
from tests.peers import rawpeer
from tests.peers.node import incoming_files, instances
from tests.peers.scp import (
    UNCOMPRESSED,
    RunningScp,
    associate,
    rejection,
    run_scp,
    send_raw_store,
)

pytestmark = [pytest.mark.integration]

TIMEOUT_S = 2.0
#: Slack for thread scheduling on a loaded 2-core CI machine.
SLACK_S = 3.0


@pytest.fixture
def fast_scp(receive_context: ReceiveContext) -> Iterator[RunningScp]:
    """An SCP with 2 s ACSE and network timeouts."""
    running = run_scp(receive_context, acse_timeout_s=TIMEOUT_S, network_timeout_s=TIMEOUT_S)
    yield running
    stop_scp(running.server, grace_s=1)


def _still_serves(port: int) -> None:
    assoc = associate(port, [(Verification, UNCOMPRESSED)])
    assert assoc.is_established
    try:
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()


def test_pdu_longer_than_negotiated_maximum_is_aborted_unread(fast_scp: RunningScp) -> None:
    with rawpeer.open_association(
        fast_scp.port, [(Verification, [ExplicitVRLittleEndian])]
    ) as sock:
        start = time.monotonic()
        # A P-DATA-TF header claiming 4 GiB, then a little data: the node must not wait for the rest.
        sock.sendall(b"\x04\x00" + struct.pack(">L", 0xFFFFFFFF) + b"\x00" * 1024)
        answer = rawpeer.read_pdu(sock, SLACK_S)
        assert answer is not None and answer.type == rawpeer.A_ABORT_TYPE
        assert answer.abort_reason == (0x02, ABORT_INVALID_PDU_PARAMETER)
        rawpeer.wait_closed(sock, SLACK_S)
        assert time.monotonic() - start < TIMEOUT_S  # answered from the header, not after a timeout
    _still_serves(fast_scp.port)


def test_p_data_one_byte_over_the_maximum_is_aborted(fast_scp: RunningScp) -> None:
    limit = fast_scp.settings.maximum_pdu_size
    with rawpeer.open_association(
        fast_scp.port, [(Verification, [ExplicitVRLittleEndian])]
    ) as sock:
        sock.sendall(b"\x04\x00" + struct.pack(">L", limit + 1))
        answer = rawpeer.read_pdu(sock, SLACK_S)
        assert answer is not None and answer.abort_reason == (0x02, ABORT_INVALID_PDU_PARAMETER)


def test_oversized_association_request_is_aborted(fast_scp: RunningScp) -> None:
    with rawpeer.connect(fast_scp.port) as sock:
        sock.sendall(b"\x01\x00" + struct.pack(">L", MAX_CONTROL_PDU_BYTES + 1) + b"\x00\x01")
        answer = rawpeer.read_pdu(sock, SLACK_S)
        assert answer is not None and answer.abort_reason == (0x02, ABORT_INVALID_PDU_PARAMETER)
        rawpeer.wait_closed(sock, SLACK_S)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: node\r\nUser-Agent: curl/8\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello
        bytes(range(256)) * 4,
        b"\xff\x00\x00\x00\x00\x04abcd",  # unknown PDU type 0xFF
    ],
    ids=["http", "tls-client-hello", "binary", "unknown-pdu-type"],
)
def test_garbage_gets_a_abort_and_close(fast_scp: RunningScp, garbage: bytes) -> None:
    with rawpeer.connect(fast_scp.port) as sock:
        sock.sendall(garbage)
        answer = rawpeer.read_pdu(sock, SLACK_S)
        assert answer is not None and answer.type == rawpeer.A_ABORT_TYPE
        assert answer.abort_reason == (0x02, ABORT_UNRECOGNIZED_PDU)
        assert rawpeer.wait_closed(sock, SLACK_S) < TIMEOUT_S
    _still_serves(fast_scp.port)


def test_unknown_pdu_type_inside_an_association_is_aborted(fast_scp: RunningScp) -> None:
    with rawpeer.open_association(
        fast_scp.port, [(Verification, [ExplicitVRLittleEndian])]
    ) as sock:
        sock.sendall(b"\x0a\x00\x00\x00\x00\x02xx")
        answer = rawpeer.read_pdu(sock, SLACK_S)
        assert answer is not None and answer.abort_reason == (0x02, ABORT_UNRECOGNIZED_PDU)


def test_malformed_association_request_is_aborted(fast_scp: RunningScp) -> None:
    with rawpeer.connect(fast_scp.port) as sock:
        sock.sendall(b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16)
        answer = rawpeer.read_pdu(sock, SLACK_S)
        assert answer is not None and answer.type == rawpeer.A_ABORT_TYPE


def test_request_without_presentation_contexts_is_rejected(fast_scp: RunningScp) -> None:
    with rawpeer.connect(fast_scp.port) as sock:
        sock.sendall(rawpeer.associate_rq(contexts=()))
        answer = rawpeer.read_pdu(sock, SLACK_S)
        assert answer is not None and answer.type == rawpeer.A_ASSOCIATE_RJ_TYPE
        assert answer.reject_reason == (0x01, 0x01, 0x01)  # permanent, service user, no reason


@pytest.mark.slow
@pytest.mark.parametrize(
    "partial",
    [b"\x01\x00\x00", rawpeer.associate_rq()[:40]],
    ids=["half-header", "half-request"],
)
def test_half_sent_pdu_is_closed_after_the_network_timeout(
    fast_scp: RunningScp, partial: bytes
) -> None:
    with rawpeer.connect(fast_scp.port) as sock:
        sock.sendall(partial)
        took = rawpeer.wait_closed(sock, TIMEOUT_S + SLACK_S)
    assert took >= TIMEOUT_S * 0.9


@pytest.mark.slow
@pytest.mark.parametrize("sent", [20, 6, 0], ids=["20-bytes", "header-only", "nothing"])
def test_stalled_association_request_is_closed_after_the_acse_timeout(
    receive_context: ReceiveContext, sent: int
) -> None:
    """The A-ASSOCIATE-RQ must be complete within ``acse_timeout_s`` of connecting,
    however much of it arrived (issue 15: 20 bytes then silence held the connection
    for the 60 s network timeout). Network timeout long here, so only the ACSE one can
    close it within the bound."""
    running = run_scp(receive_context, acse_timeout_s=TIMEOUT_S, network_timeout_s=60)
    try:
        with rawpeer.connect(running.port) as sock:
            sock.sendall(rawpeer.associate_rq()[:sent])
            rawpeer.wait_closed(sock, TIMEOUT_S + SLACK_S)  # raises TimeoutError if still open
        _still_serves(running.port)
    finally:
        stop_scp(running.server, grace_s=1)


@pytest.mark.slow
def test_half_sent_p_data_is_closed_after_the_network_timeout(
    fast_scp: RunningScp, store_engine: Engine, data_dir: Path
) -> None:
    with rawpeer.open_association(
        fast_scp.port, [(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])]
    ) as sock:
        pdus = rawpeer.c_store_pdus(make_cxr_dataset())
        sock.sendall(pdus[0] + pdus[1][:100])
        took = rawpeer.wait_closed(sock, TIMEOUT_S + SLACK_S)
    assert took >= TIMEOUT_S * 0.9
    assert instances(store_engine) == [] and incoming_files(data_dir) == []


@pytest.mark.slow
def test_silent_connection_is_closed_after_the_acse_timeout(fast_scp: RunningScp) -> None:
    with rawpeer.connect(fast_scp.port) as sock:
        took = rawpeer.wait_closed(sock, TIMEOUT_S + SLACK_S)
    assert took >= TIMEOUT_S * 0.9


@pytest.mark.slow
def test_idle_association_is_aborted_after_the_network_timeout(fast_scp: RunningScp) -> None:
    with rawpeer.open_association(
        fast_scp.port, [(Verification, [ExplicitVRLittleEndian])]
    ) as sock:
        start = time.monotonic()
        answer = rawpeer.read_pdu(sock, TIMEOUT_S + SLACK_S)
        assert answer is None or answer.type == rawpeer.A_ABORT_TYPE
        assert time.monotonic() - start >= TIMEOUT_S * 0.9


def test_silent_sockets_never_take_association_slots(receive_context: ReceiveContext) -> None:
    running = run_scp(receive_context, max_associations=2, acse_timeout_s=30, network_timeout_s=30)
    silent = [rawpeer.connect(running.port) for _ in range(6)]
    try:
        time.sleep(0.2)  # let the node accept them all
        first = associate(running.port, [(Verification, UNCOMPRESSED)])
        second = associate(running.port, [(Verification, UNCOMPRESSED)])
        assert first.is_established and second.is_established
        third = associate(running.port, [(Verification, UNCOMPRESSED)])
        assert rejection(third) == (0x02, 0x03, 0x02)  # transient, local limit exceeded
        first.release()
        second.release()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # released associations free their slots
            again = associate(running.port, [(Verification, UNCOMPRESSED)])
            if again.is_established:
                again.release()
                break
            time.sleep(0.1)
        else:
            pytest.fail("slots were not freed after release")
    finally:
        for sock in silent:
            sock.close()
        stop_scp(running.server, grace_s=1)


def test_oldest_pending_connection_is_closed_when_too_many_wait(
    receive_context: ReceiveContext,
) -> None:
    running = run_scp(
        receive_context, max_pending_connections=3, acse_timeout_s=30, network_timeout_s=30
    )
    socks = []
    try:
        for _ in range(3):
            socks.append(rawpeer.connect(running.port))
            time.sleep(0.1)  # accepted in this order
        newest = rawpeer.connect(running.port)
        socks.append(newest)
        assert rawpeer.wait_closed(socks[0], SLACK_S) < SLACK_S  # the oldest went
        for sock in socks[1:]:
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(1)  # the others are still open
        _still_serves(running.port)
    finally:
        for sock in socks:
            sock.close()
        stop_scp(running.server, grace_s=1)


def test_data_set_over_the_size_limit_is_aborted_and_not_stored(
    receive_context: ReceiveContext, store_engine: Engine, data_dir: Path
) -> None:
    running = run_scp(receive_context, max_dataset_bytes=64 * 1024)
    try:
        big = make_cxr_dataset(rows=256, cols=256, bits_stored=16)  # 128 KiB of pixels
        small = make_cxr_dataset(rows=64, cols=64, bits_stored=8)
        assoc = associate(running.port, [(DX_PRESENTATION_STORAGE, UNCOMPRESSED)])
        assert assoc.is_established
        status = assoc.send_c_store(big)
        assert not status  # no response: the association was aborted
        deadline = time.monotonic() + SLACK_S
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not assoc.is_established
        assoc = associate(running.port, [(DX_PRESENTATION_STORAGE, UNCOMPRESSED)])
        assert int(assoc.send_c_store(small).Status) == 0x0000
        assoc.release()
    finally:
        stop_scp(running.server, grace_s=1)
    assert [row.sop_instance_uid for row in instances(store_engine)] == [small.SOPInstanceUID]
    assert len(incoming_files(data_dir)) == 1


def test_deflate_bomb_is_refused_without_inflating_it(
    receive_context: ReceiveContext, store_engine: Engine, data_dir: Path
) -> None:
    running = run_scp(receive_context, max_dataset_bytes=1024 * 1024)
    ds = make_cxr_dataset()
    ds.add_new(0x00091010, "LO", "BOMB")  # private creator
    ds.add_new(0x00091011, "OB", b"\x00" * (8 * 1024 * 1024))  # 8 MiB of zeros
    try:
        assoc = associate(
            running.port, [(DX_PRESENTATION_STORAGE, [DeflatedExplicitVRLittleEndian])]
        )
        status = send_raw_store(
            assoc,
            ds,
            sop_instance_uid=ds.SOPInstanceUID,
            transfer_syntax=DeflatedExplicitVRLittleEndian,
        )
        assoc.release()
    finally:
        stop_scp(running.server, grace_s=1)
    assert status == Status.DATASET_TOO_LARGE
    assert instances(store_engine) == [] and incoming_files(data_dir) == []


def test_corrupt_deflate_stream_is_cannot_understand(
    fast_scp: RunningScp, store_engine: Engine
) -> None:
    ds = make_cxr_dataset()
    assoc = associate(fast_scp.port, [(DX_PRESENTATION_STORAGE, [DeflatedExplicitVRLittleEndian])])
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    from pynetdicom.dsutils import encode

    payload = encode(ds, False, True)
    assert payload is not None
    deflated = compressor.compress(payload) + compressor.flush()
    broken = deflated[:50] + bytes(b ^ 0x5A for b in deflated[50:90]) + deflated[90:]
    status = send_raw_store(
        assoc,
        broken,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax=DeflatedExplicitVRLittleEndian,
    )
    assoc.release()
    assert 0xC000 <= status <= 0xCFFF
    assert instances(store_engine) == []


def test_overlong_affected_sop_instance_uid_is_refused_on_the_open_association(
    fast_scp: RunningScp, store_engine: Engine, data_dir: Path
) -> None:
    """A C-STORE whose SOP Instance UID is 350 characters (command and data set) gets
    0xC221 on the same association, which then stores a valid instance (issue 15:
    pynetdicom could not decode the command and aborted)."""
    overlong = "1.2." + "3" * 346
    bad = make_cxr_dataset(seed=1)
    with pytest.MonkeyPatch.context() as patch:  # an invalid value on purpose
        patch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
        bad.SOPInstanceUID = overlong
        first = rawpeer.c_store_pdus(bad, affected_sop_instance_uid=overlong, message_id=1)
    good = make_cxr_dataset(seed=2)
    second = rawpeer.c_store_pdus(good, message_id=2)
    with rawpeer.open_association(
        fast_scp.port, [(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])]
    ) as sock:
        sock.sendall(b"".join(first))
        answer = rawpeer.read_pdu(sock, SLACK_S)
        assert answer is not None, "connection closed instead of a C-STORE-RSP"
        assert rawpeer.response_status(answer) == Status.INVALID_UID
        sock.sendall(b"".join(second))
        answer = rawpeer.read_pdu(sock, SLACK_S)
        assert answer is not None and rawpeer.response_status(answer) == 0x0000
        sock.sendall(rawpeer.release_pdu())
        answer = rawpeer.read_pdu(sock, SLACK_S)
        assert answer is not None and answer.type == rawpeer.A_RELEASE_RP_TYPE
    assert [row.sop_instance_uid for row in instances(store_engine)] == [good.SOPInstanceUID]
    assert len(incoming_files(data_dir)) == 1


@pytest.mark.parametrize("ending", ["a-abort", "tcp-close"])
def test_abort_in_the_middle_of_a_c_store_stores_nothing(
    fast_scp: RunningScp, store_engine: Engine, data_dir: Path, ending: str
) -> None:
    ds = make_cxr_dataset(rows=256, cols=256, bits_stored=16)
    pdus = rawpeer.c_store_pdus(ds)
    assert len(pdus) > 3
    with rawpeer.open_association(
        fast_scp.port, [(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])]
    ) as sock:
        for pdu in pdus[:-1]:  # everything but the last data fragment
            sock.sendall(pdu)
        if ending == "a-abort":
            sock.sendall(rawpeer.abort_pdu())
        else:
            sock.shutdown(socket.SHUT_RDWR)
        rawpeer.wait_closed(sock, SLACK_S)
    time.sleep(0.3)
    assert instances(store_engine) == [] and incoming_files(data_dir) == []
    # The same instance sent completely afterwards is stored normally.
    with rawpeer.open_association(
        fast_scp.port, [(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])]
    ) as sock:
        for pdu in pdus:
            sock.sendall(pdu)
        answer = rawpeer.read_pdu(sock, 10)
        assert answer is not None and answer.type == rawpeer.P_DATA_TYPE
        sock.sendall(rawpeer.release_pdu())
        assert rawpeer.read_pdu(sock, 5) is not None
    [row] = instances(store_engine)
    assert row.sop_instance_uid == ds.SOPInstanceUID
    assert pydicom.dcmread(incoming_files(data_dir)[0]).PixelData == ds.PixelData
