"""Hostile peers beside real senders: DCMTK storescu is never delayed by them.

The SCP runs in-process with the *long* production-like timeouts (30 s), so a
sender that had to wait for a hostile connection's timeout would take > 30 s;
the bounds asserted below (10 s) prove it did not wait. They are behavioural
bounds, not benchmarks.
"""

from __future__ import annotations

import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import Engine, func
from sqlalchemy import select as sql_select
from sqlalchemy.orm import Session

from dicomnode.receiving.handlers import ReceiveContext
from dicomnode.receiving.scp import stop_scp
from dicomnode.store.models import Instance
from tests.helpers import DX_PRESENTATION_STORAGE, dcmtk, make_cxr_dataset
from tests.peers import rawpeer
from tests.peers.scp import NODE_AE, RunningScp, run_scp

pytestmark = [pytest.mark.integration, pytest.mark.dcmtk]

HOSTILE_TIMEOUT_S = 30.0
NOT_DELAYED_S = 10.0


@pytest.fixture
def patient_scp(receive_context: ReceiveContext) -> Iterator[RunningScp]:
    """An SCP with 30 s ACSE/network timeouts and only 4 association slots."""
    running = run_scp(
        receive_context,
        max_associations=4,
        acse_timeout_s=HOSTILE_TIMEOUT_S,
        network_timeout_s=HOSTILE_TIMEOUT_S,
        dimse_timeout_s=HOSTILE_TIMEOUT_S,
    )
    yield running
    stop_scp(running.server, grace_s=1)


def _write_files(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        path = folder / f"img{n}.dcm"
        make_cxr_dataset(seed=n).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _storescu(port: int, files: list[Path]) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    result = subprocess.run(
        [
            dcmtk("storescu"),
            "-aet",
            "MODALITY",
            "-aec",
            NODE_AE,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result, time.monotonic() - start


def _count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(sql_select(func.count()).select_from(Instance)) or 0)


def test_storescu_is_not_delayed_by_silent_and_half_open_peers(
    patient_scp: RunningScp, store_engine: Engine, tmp_path: Path
) -> None:
    files = _write_files(tmp_path / "study", 3)
    hostile: list[socket.socket] = []
    try:
        hostile += [rawpeer.connect(patient_scp.port) for _ in range(5)]  # silent TCP
        half = rawpeer.connect(patient_scp.port)
        half.sendall(rawpeer.associate_rq()[:30])  # half an A-ASSOCIATE-RQ, then silence
        hostile.append(half)
        stalled = rawpeer.open_association(
            patient_scp.port, [(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])]
        )
        stalled.sendall(
            rawpeer.c_store_pdus(make_cxr_dataset(rows=256, cols=256, bits_stored=16))[0]
        )
        hostile.append(stalled)  # an association stuck mid C-STORE
        time.sleep(0.3)

        result, took = _storescu(patient_scp.port, files)
        assert result.returncode == 0, result.stderr
        assert took < NOT_DELAYED_S, f"storescu took {took:.1f} s"
        assert _count(store_engine) == 3
        # The hostile connections are all still open: nobody waited for them to go.
        for sock in hostile:
            readable, _, _ = select.select([sock], [], [], 0)
            assert not readable
    finally:
        for sock in hostile:
            sock.close()


def test_fifty_concurrent_associations_are_all_answered(
    patient_scp: RunningScp, store_engine: Engine, tmp_path: Path
) -> None:
    contexts = [(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])]
    socks = [rawpeer.connect(patient_scp.port) for _ in range(50)]
    try:
        request = rawpeer.associate_rq(contexts)
        for sock in socks:
            sock.sendall(request)
        answers = [rawpeer.read_pdu(sock, NOT_DELAYED_S) for sock in socks]
        assert all(answer is not None for answer in answers)
        accepted = [
            s for s, a in zip(socks, answers) if a and a.type == rawpeer.A_ASSOCIATE_AC_TYPE
        ]
        rejected = [a for a in answers if a and a.type == rawpeer.A_ASSOCIATE_RJ_TYPE]
        assert len(accepted) + len(rejected) == 50
        assert 1 <= len(accepted) <= 4
        assert {a.reject_reason for a in rejected} == {
            (0x02, 0x03, 0x02)
        }  # transient, local limit exceeded
        # The accepted ones work: one C-STORE each, then release.
        for n, sock in enumerate(accepted):
            for pdu in rawpeer.c_store_pdus(make_cxr_dataset(seed=100 + n)):
                sock.sendall(pdu)
            response = rawpeer.read_pdu(sock, NOT_DELAYED_S)
            assert response is not None and response.type == rawpeer.P_DATA_TYPE
            sock.sendall(rawpeer.release_pdu())
            released = rawpeer.read_pdu(sock, NOT_DELAYED_S)
            assert released is not None and released.type == rawpeer.A_RELEASE_RP_TYPE
    finally:
        for sock in socks:
            sock.close()
    assert _count(store_engine) == len(accepted)
    # Afterwards the node serves normally.
    result, took = _storescu(patient_scp.port, _write_files(tmp_path / "after", 2))
    assert result.returncode == 0, result.stderr
    assert took < NOT_DELAYED_S
    assert _count(store_engine) == len(accepted) + 2


def test_flood_of_connections_does_not_lock_senders_out(
    patient_scp: RunningScp, store_engine: Engine, tmp_path: Path
) -> None:
    """More silent connections than max_pending_connections: the oldest are closed, senders get in."""
    flood = [
        rawpeer.connect(patient_scp.port)
        for _ in range(patient_scp.settings.max_pending_connections + 16)
    ]
    try:
        time.sleep(0.5)
        result, took = _storescu(patient_scp.port, _write_files(tmp_path / "study", 1))
        assert result.returncode == 0, result.stderr
        assert took < NOT_DELAYED_S
        closed = sum(1 for sock in flood if select.select([sock], [], [], 0)[0])
        assert closed >= 16
    finally:
        for sock in flood:
            sock.close()


def test_serve_enforces_allowed_calling_aets(tmp_path: Path) -> None:
    """``dicomnode serve --allowed-calling-aets`` (a real receiver process) rejects other callers."""
    from tests.integration.peers import start_node

    files = _write_files(tmp_path / "study", 1)
    node = start_node(
        tmp_path / "node", ["--role", "receiver", "--allowed-calling-aets", "MODALITY1,PACS"]
    )
    try:

        def send(calling: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    dcmtk("storescu"),
                    "-aet",
                    calling,
                    "-aec",
                    NODE_AE,
                    "127.0.0.1",
                    str(node.port),
                    str(files[0]),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        refused = send("INTRUDER")
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
        allowed = send("MODALITY1")
        assert allowed.returncode == 0, allowed.stderr
    finally:
        assert node.stop() == 0
    log = node.log.read_text()
    assert "calling AEs: MODALITY1,PACS" in log
