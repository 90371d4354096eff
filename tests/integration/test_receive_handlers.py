"""C-STORE / C-ECHO handler statuses through a real in-process SCP and a pynetdicom SCU."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from dicomnode.domain import InstanceState, JobState
from dicomnode.receiving.handlers import ReceiveContext
from dicomnode.receiving.scp import stop_scp
from dicomnode.receiving.statuses import Status
from dicomnode.store.files import FileStore
from dicomnode.store.models import Job
from dicomnode.uid import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tests.helpers import (
    CR_IMAGE_STORAGE,
    DX_PRESENTATION_STORAGE,
    REPO_ROOT,
    free_port,
    make_cxr_dataset,
    wait_for_port,
)
from tests.peers.node import incoming_files, instances
from tests.peers.scp import UNCOMPRESSED, RunningScp, associate, run_scp, send_raw_store

pytestmark = [pytest.mark.integration]



def _send(port: int, *datasets: pydicom.Dataset, calling: str = "TESTSCU") -> list[int]:
    assoc = associate(
        port, [(DX_PRESENTATION_STORAGE, UNCOMPRESSED), (CR_IMAGE_STORAGE, UNCOMPRESSED)], calling=calling
    )
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _dataset_bytes(path: Path) -> bytes:
    """The data set part of a Part-10 file (everything after the File Meta group)."""
    raw = path.read_bytes()
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    return raw[132 + 12 + int(meta.FileMetaInformationGroupLength) :]


def test_store_success_writes_file_and_row(
    scp: RunningScp, store_engine: Engine, data_dir: Path
) -> None:
    ds = make_cxr_dataset(rows=128, cols=96)
    assert _send(scp.port, ds) == [0x0000]

    [row] = instances(store_engine)
    assert row.sop_instance_uid == ds.SOPInstanceUID
    assert row.study_instance_uid == ds.StudyInstanceUID
    assert row.series_instance_uid == ds.SeriesInstanceUID
    assert row.sop_class_uid == DX_PRESENTATION_STORAGE
    assert row.state == InstanceState.ACCEPTED and row.skip_reason is None
    assert row.calling_ae_title == "TESTSCU"
    stored = FileStore(data_dir).incoming_path(ds.SOPInstanceUID)
    assert row.path == str(stored.relative_to(data_dir.resolve()))
    assert incoming_files(data_dir) == [stored]  # no temporary file left
    assert ds.SOPInstanceUID not in str(stored)

    back = pydicom.dcmread(stored)
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # our first choice
    # The node wrote the file: its implementation identity, not pynetdicom's.
    assert back.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert back.file_meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert back.PixelData == ds.PixelData
    # The data set bytes are the ones the SCU put on the wire, not a re-encoding.
    assert _dataset_bytes(stored) == encode(ds, False, True)
    with Session(store_engine) as session:
        [job] = session.scalars(select(Job))
        assert job.state == JobState.RECEIVED and job.study_instance_uid == ds.StudyInstanceUID


def test_duplicate_is_acknowledged_once_and_first_copy_kept(
    scp: RunningScp, store_engine: Engine, data_dir: Path
) -> None:
    first = make_cxr_dataset(seed=1)
    second = make_cxr_dataset(seed=2)  # different pixels, same identity
    second.SOPInstanceUID = first.SOPInstanceUID
    second.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    second.StudyInstanceUID = first.StudyInstanceUID
    second.SeriesInstanceUID = first.SeriesInstanceUID

    assert _send(scp.port, first, first) == [0x0000, 0x0000]
    assert _send(scp.port, second) == [0x0000]  # another association

    assert len(instances(store_engine)) == 1
    [path] = incoming_files(data_dir)
    assert pydicom.dcmread(path).PixelData == first.PixelData


def test_command_dataset_uid_mismatch_is_a900(
    scp: RunningScp, store_engine: Engine, data_dir: Path
) -> None:
    ds = make_cxr_dataset()
    assoc = associate(scp.port, [(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])])
    try:
        instance_status = send_raw_store(assoc, ds, sop_instance_uid=generate_uid())
        ds_cr = make_cxr_dataset(sop_class_uid=CR_IMAGE_STORAGE)
        class_status = send_raw_store(assoc, ds_cr, sop_instance_uid=ds_cr.SOPInstanceUID)
    finally:
        assoc.release()
    assert instance_status == Status.MISMATCH
    assert class_status == Status.MISMATCH
    assert instances(store_engine) == []
    assert incoming_files(data_dir) == []


def test_missing_study_uid_is_refused(
    scp: RunningScp, store_engine: Engine, data_dir: Path
) -> None:
    ds = make_cxr_dataset()
    del ds.StudyInstanceUID
    assert _send(scp.port, ds) == [Status.MISSING_UID]
    assert instances(store_engine) == [] and incoming_files(data_dir) == []


def test_invalid_uid_is_refused(scp: RunningScp, store_engine: Engine, data_dir: Path) -> None:
    ds = make_cxr_dataset()
    ds.StudyInstanceUID = "1.2.3.4.x"
    with pytest.MonkeyPatch.context() as patch:  # let the SCU write an invalid value
        patch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
        statuses = _send(scp.port, ds)
    assert statuses == [Status.INVALID_UID]
    assert instances(store_engine) == [] and incoming_files(data_dir) == []


@pytest.mark.parametrize(
    "hostile",
    ["../../../etc/passwd", "1.2.3\n", "1.2.3\\1.2.4", "1." + "2" * 70, "1.2.3; DROP TABLE"],
)
def test_hostile_instance_uids_are_refused(
    scp: RunningScp, store_engine: Engine, data_dir: Path, hostile: str
) -> None:
    ds = make_cxr_dataset()
    ds.SOPInstanceUID = hostile
    assoc = associate(scp.port, [(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])])
    try:
        with pytest.MonkeyPatch.context() as patch:  # let the SCU write an invalid value
            patch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
            status = send_raw_store(assoc, ds, sop_instance_uid=generate_uid())
    finally:
        assoc.release()
    # pydicom strips trailing whitespace from UI values, so "1.2.3\n" arrives as a valid
    # "1.2.3" that no longer matches the command: refused either way. An overlong UI
    # fails the VR length check of check_structure first.
    assert status in (Status.INVALID_UID, Status.MISMATCH, Status.INVALID_VALUE)
    assert instances(store_engine) == []
    assert [
        p for p in data_dir.parent.rglob("*") if p.is_file() and data_dir not in p.parents
    ] == []


def test_deeply_nested_sequences_are_refused(scp: RunningScp, store_engine: Engine) -> None:
    ds = make_cxr_dataset()
    item = pydicom.Dataset()
    for _ in range(200):
        outer = pydicom.Dataset()
        outer.ReferencedImageSequence = [item]
        item = outer
    ds.ReferencedImageSequence = [item]
    assert _send(scp.port, ds) == [Status.CANNOT_UNDERSTAND]
    assert instances(store_engine) == []


def test_garbage_dataset_is_cannot_understand(
    scp: RunningScp, store_engine: Engine, data_dir: Path
) -> None:
    uid = generate_uid()
    assoc = associate(scp.port, [(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])])
    try:
        status = send_raw_store(
            assoc,
            b"\x08\x00\x18\x00UI\x40\x00" + b"not a dicom data set at all" * 3,
            sop_instance_uid=uid,
        )
    finally:
        assoc.release()
    assert status in (Status.CANNOT_UNDERSTAND, 0xC222)
    assert 0xC000 <= status <= 0xCFFF
    assert instances(store_engine) == [] and incoming_files(data_dir) == []


def test_non_chest_is_stored_and_skipped(
    scp: RunningScp, store_engine: Engine, data_dir: Path
) -> None:
    ds = make_cxr_dataset(BodyPartExamined="ABDOMEN")
    assert _send(scp.port, ds) == [0x0000]
    [row] = instances(store_engine)
    assert row.state == InstanceState.SKIPPED
    assert row.skip_reason == "BodyPartExamined 'ABDOMEN' is not a chest"
    assert len(incoming_files(data_dir)) == 1


def test_database_failure_after_write_is_a700_and_file_removed(
    receive_context: ReceiveContext, store_engine: Engine, data_dir: Path
) -> None:
    # A real failure: the job table is gone, so recording fails after the file was written.
    Job.__table__.drop(store_engine)  # type: ignore[attr-defined]
    running = run_scp(receive_context)
    try:
        assert _send(running.port, make_cxr_dataset()) == [Status.OUT_OF_RESOURCES]
    finally:
        stop_scp(running.server, grace_s=2)
    assert incoming_files(data_dir) == []


def test_free_space_below_min_free_bytes_is_a700_and_nothing_is_written(
    receive_context: ReceiveContext, store_engine: Engine, data_dir: Path
) -> None:
    low = dataclasses.replace(receive_context, min_free_bytes=10**18)  # 1 EB: never free
    running = run_scp(low)
    try:
        assert _send(running.port, make_cxr_dataset()) == [Status.OUT_OF_RESOURCES]
    finally:
        stop_scp(running.server, grace_s=2)
    assert instances(store_engine) == [] and incoming_files(data_dir) == []


def test_disk_failure_is_a700(
    receive_context: ReceiveContext, store_engine: Engine, data_dir: Path
) -> None:
    (data_dir / "incoming").write_text("a file where the folder should be")
    running = run_scp(receive_context)
    try:
        assert _send(running.port, make_cxr_dataset()) == [Status.OUT_OF_RESOURCES]
    finally:
        stop_scp(running.server, grace_s=2)
    assert instances(store_engine) == []


def test_echo(scp: RunningScp) -> None:
    assoc = associate(scp.port, [(Verification, [ExplicitVRLittleEndian])])
    assert assoc.is_established
    try:
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()


def test_logs_carry_uids_and_calling_ae_but_no_patient_data(
    scp: RunningScp, caplog: pytest.LogCaptureFixture
) -> None:
    phi: dict[str, Any] = {
        "PatientName": "Phimarker^Name",
        "PatientID": "PHIMARKERID",
        "PatientBirthDate": "19010203",
        "AccessionNumber": "PHIMARKERACC",
    }
    accepted = make_cxr_dataset(**phi)
    skipped = make_cxr_dataset(BodyPartExamined="HAND", **phi)
    refused = make_cxr_dataset(**phi)
    del refused.StudyInstanceUID
    with caplog.at_level(logging.DEBUG):
        statuses = _send(scp.port, accepted, skipped, refused)
    assert statuses == [0x0000, 0x0000, Status.MISSING_UID]
    text = caplog.text
    assert accepted.SOPInstanceUID in text and skipped.SOPInstanceUID in text
    assert "TESTSCU" in text
    for value in ("Phimarker", "PHIMARKER", "19010203"):
        assert value not in text


@pytest.mark.slow
def test_blocking_scp_stops_cleanly_on_sigint(data_dir: Path) -> None:
    port = free_port()
    code = f"""
import signal
import sys
from pathlib import Path
from typing import Any
# A runner that started the tests in the background (no job control) leaves SIGINT
# ignored, which Python then keeps: this test is about the SCP, not that inheritance.
signal.signal(signal.SIGINT, signal.default_int_handler)
from dicomnode.config import DicomSettings, StoreSettings
from dicomnode.receiving.handlers import ReceiveContext
from dicomnode.receiving.scp import start_scp
from dicomnode.store.db import make_engine, make_sessionmaker
from dicomnode.store.files import FileStore
data = Path({str(data_dir)!r})
context = ReceiveContext(FileStore(data), make_sessionmaker(make_engine(StoreSettings(data_dir=data))))
try:
    start_scp(DicomSettings(port={port}), context, block=True)
except KeyboardInterrupt:
    print("stopped", flush=True)
    sys.exit(0)
sys.exit(3)
"""
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        wait_for_port(port, timeout_s=20)
        assert _send(port, make_cxr_dataset()) == [0x0000]
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0 and "stopped" in out
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_duplicates_are_counted_and_conflicts_logged(
    scp: RunningScp, store_engine: Engine, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_cxr_dataset(seed=1)
    conflicting = make_cxr_dataset(seed=2)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(conflicting, keyword, getattr(first, keyword))
    conflicting.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    with caplog.at_level(logging.INFO, logger="dicomnode.receiving.handlers"):
        assert _send(scp.port, first, first, conflicting, conflicting) == [0x0000] * 4
    counters = scp.context.counters
    assert (counters.duplicates, counters.conflicting_duplicates) == (1, 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(
        "DIFFERENT content" in w and first.SOPInstanceUID in w for w in warnings
    )
    [path] = incoming_files(data_dir)
    assert pydicom.dcmread(path).PixelData == first.PixelData  # the first copy won
    assert len(instances(store_engine)) == 1
    # ... and counted where `dicomnode status` reads them (issue 15), text and JSON.
    from typer.testing import CliRunner

    from dicomnode.cli import app

    text = CliRunner().invoke(app, ["status", "--data-dir", str(data_dir)])
    assert text.exit_code == 0, text.output
    assert "duplicates: 1 identical, 2 with DIFFERENT content (last " in text.output
    as_json = CliRunner().invoke(app, ["status", "--data-dir", str(data_dir), "--json"])
    duplicates = json.loads(as_json.output.strip().splitlines()[-1])["duplicates"]
    assert duplicates["identical"] == 1 and duplicates["conflicting"] == 2
    assert duplicates["last_conflicting_at"] >= duplicates["last_identical_at"]


def test_unrecorded_file_left_by_a_crash_is_replaced(
    scp: RunningScp, store_engine: Engine, data_dir: Path
) -> None:
    ds = make_cxr_dataset()
    stale = FileStore(data_dir).incoming_path(ds.SOPInstanceUID)
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a file from a receiver killed before its commit")
    assert _send(scp.port, ds) == [0x0000]
    assert pydicom.dcmread(stale).PixelData == ds.PixelData
    assert len(instances(store_engine)) == 1


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
@pytest.mark.parametrize(
    "hostile",
    [
        "/etc/passwd",
        "..\\..\\windows",
        "1.2.3'; DROP TABLE instance;--",
        "1.2.3\\1.2.4",
        "1." + "9" * 80,
    ],
    ids=["absolute", "backslashes", "sql", "multi-valued", "overlong"],
)
def test_hostile_study_and_series_uids_are_refused(
    scp: RunningScp, store_engine: Engine, data_dir: Path, keyword: str, hostile: str
) -> None:
    ds = make_cxr_dataset()
    with pytest.MonkeyPatch.context() as patch:  # let the SCU write an invalid value
        patch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
        setattr(ds, keyword, hostile)
        status = _send(scp.port, ds)[0]
    assert status in (Status.INVALID_UID, Status.INVALID_VALUE)
    assert instances(store_engine) == [] and incoming_files(data_dir) == []
    assert [
        p for p in data_dir.parent.rglob("*") if p.is_file() and data_dir not in p.parents
    ] == []
    with Session(store_engine) as session:  # the tables are intact
        assert session.scalars(select(Job)).all() == []


@pytest.mark.slow
def test_two_receiver_processes_racing_on_one_uid_store_it_once(
    data_dir: Path, store_engine: Engine
) -> None:
    """Two processes on one data folder get the same UIDs (different bytes) at once."""
    from concurrent.futures import ThreadPoolExecutor

    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.receiver_main", str(data_dir), str(port)], cwd=REPO_ROOT
        )
        for port in ports
    ]
    try:
        for port in ports:
            wait_for_port(port, timeout_s=30)
        pairs = []
        for n in range(12):
            a = make_cxr_dataset(seed=2 * n)
            b = make_cxr_dataset(seed=2 * n + 1)
            for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
                setattr(b, keyword, getattr(a, keyword))
            b.file_meta.MediaStorageSOPInstanceUID = a.SOPInstanceUID
            pairs.append((a, b))
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(_send, ports[0], *(a for a, _ in pairs), calling="SENDERA")
            second = pool.submit(_send, ports[1], *(b for _, b in pairs), calling="SENDERB")
            statuses = first.result(timeout=120) + second.result(timeout=120)
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    assert statuses == [0x0000] * 24
    rows = {row.sop_instance_uid: row for row in instances(store_engine)}
    assert len(rows) == 12
    files = FileStore(data_dir)
    for a, b in pairs:
        # The copy on disk is the one whose receiver recorded it (first copy wins).
        winner = a if rows[a.SOPInstanceUID].calling_ae_title == "SENDERA" else b
        assert pydicom.dcmread(files.incoming_path(a.SOPInstanceUID)).PixelData == winner.PixelData
    assert len(incoming_files(data_dir)) == 12  # no partial or extra file
