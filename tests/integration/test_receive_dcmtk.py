"""DCMTK storescu / echoscu -> the node's SCP, with the real chest files of ../shared/data.

The SCP runs in-process on a free loopback port with a file-backed SQLite database
in ``tmp_path``; DCMTK is a real separate process. Every subprocess is bounded.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from dicomnode.domain import InstanceState
from dicomnode.receiving.handlers import ReceiveContext
from dicomnode.receiving.scp import stop_scp
from dicomnode.store.files import FileStore
from dicomnode.store.models import Instance
from tests.helpers import dcmtk, make_cxr_dataset, require_shared_data
from tests.integration.peers import STORESCU_PROPOSAL, run_storescp
from tests.peers.scp import NODE_AE, RunningScp, run_scp

pytestmark = [pytest.mark.integration, pytest.mark.dcmtk, pytest.mark.shared_data]

# Sent in this order. siim_cxr_pa_jpeg_baseline.dcm and Fake_MONOHR1.dcm carry the same
# SOP Instance UID: the second is a duplicate, acknowledged, and the first copy is kept.
REAL_FILES: dict[str, InstanceState] = {
    "RG1_UNCR.dcm": InstanceState.ACCEPTED,
    "RG1_J2KR.dcm": InstanceState.ACCEPTED,
    "RG1_J2KI.dcm": InstanceState.ACCEPTED,
    "RG1_JLSN.dcm": InstanceState.ACCEPTED,
    "siim_cxr_pa_jpeg_baseline.dcm": InstanceState.ACCEPTED,
    "nih_cxr14_google_dicom_DX.dcm": InstanceState.ACCEPTED,
    "Fake_MONOHR1.dcm": InstanceState.ACCEPTED,
    "RG3_UNCR.dcm": InstanceState.SKIPPED,
    "highdicom_dx_image.dcm": InstanceState.ACCEPTED,
}
DUPLICATE_OF_EARLIER = "Fake_MONOHR1.dcm"


@pytest.fixture
def node_scp(receive_context: ReceiveContext) -> Iterator[RunningScp]:
    running = run_scp(receive_context)
    yield running
    stop_scp(running.server, grace_s=5)


@pytest.fixture
def reference_storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp writing what it receives bit-preserving (+B), as a byte reference."""
    with run_storescp(tmp_path / "reference", NODE_AE, options=("+B", "+xa")) as reference:
        yield reference.port, reference.folder


def _dataset_part(path: Path) -> tuple[UID, bytes]:
    """(transfer syntax, bytes after the File Meta group) of a Part-10 file."""
    raw = path.read_bytes()
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    assert raw[128:132] == b"DICM"
    return UID(meta.TransferSyntaxUID), raw[132 + 12 + int(meta.FileMetaInformationGroupLength) :]


def _storescu(
    port: int, files: list[Path], cwd: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            dcmtk("storescu"),
            "-aet", "DCMTKSCU", "-aec", NODE_AE,
            "-ta", "30", "-ts", "30", "-td", "60", "-to", "30",
            "-R", *options,
            "127.0.0.1", str(port), *map(str, files),
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )  # fmt: skip


def test_storescu_real_chest_files(
    node_scp: RunningScp,
    reference_storescp: tuple[int, Path],
    store_engine: Engine,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    paths = [require_shared_data("dicom", name) for name in REAL_FILES]
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    # One storescu run per proposal option (one association each), in REAL_FILES order.
    groups: dict[str, list[Path]] = {}
    for path in paths:
        syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        groups.setdefault(STORESCU_PROPOSAL.get(syntax, ""), []).append(path)
    ref_port, ref_dir = reference_storescp
    for option, group in groups.items():
        options = [option] if option else []
        result = _storescu(node_scp.port, group, cwd, *options)
        assert result.returncode == 0, (option, result.stdout[-1000:], result.stderr[-2000:])
        unique = [p for p in group if p.name != DUPLICATE_OF_EARLIER]
        reference = _storescu(ref_port, unique, cwd, *options)
        assert reference.returncode == 0, reference.stderr[-2000:]
    received_by_dcmtk = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in ref_dir.iterdir()
    }

    with Session(store_engine) as session:
        rows = {row.sop_instance_uid: row for row in session.scalars(select(Instance))}
    files = FileStore(data_dir)
    first_copy: dict[str, Path] = {}
    byte_checked: list[str] = []
    for name, path in zip(REAL_FILES, paths, strict=True):
        source = pydicom.dcmread(path, stop_before_pixels=True)
        uid = source.SOPInstanceUID
        row = rows[uid]
        assert row.calling_ae_title == "DCMTKSCU"
        assert row.sop_class_uid == source.SOPClassUID
        assert row.study_instance_uid == source.StudyInstanceUID
        stored = files.incoming_path(uid)
        assert row.path == files.relative(stored)
        if name == DUPLICATE_OF_EARLIER:
            assert uid in first_copy
            continue
        first_copy[uid] = path
        assert row.state == REAL_FILES[name], name
        if row.state == InstanceState.SKIPPED:
            assert row.skip_reason == "BodyPartExamined 'EXTREMITY' is not a chest"
        # Stored exactly as received: the same transfer syntax and data set bytes that
        # DCMTK storescp +B (bit-preserving) wrote from the same storescu stream. (The
        # source file itself differs: storescu drops trailing padding, pads odd lengths.)
        # storescp may pick another transfer syntax in a multi-syntax context (it took
        # explicit VR for the implicit NIH file, we kept implicit): then compare values.
        stored_syntax, stored_bytes = _dataset_part(stored)
        ref_syntax, ref_bytes = _dataset_part(received_by_dcmtk[uid])
        assert (
            stored_syntax
            == pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        )
        if stored_syntax == ref_syntax:
            assert stored_bytes == ref_bytes, name
        else:
            assert pydicom.dcmread(stored) == pydicom.dcmread(received_by_dcmtk[uid]), name
        original = pydicom.dcmread(path)
        back = pydicom.dcmread(stored)
        assert back.PixelData[: len(original.PixelData)] == original.PixelData, name
        if stored_syntax == ref_syntax:
            byte_checked.append(name)

    assert len(rows) == len(REAL_FILES) - 1  # one duplicate
    assert len(byte_checked) >= 6, byte_checked  # all four RG1 syntaxes among them

    # Nothing outside the data folder, nothing but hashed Part-10 files inside it.
    outside = [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and data_dir not in p.parents and ref_dir not in p.parents
    ]
    assert outside == []
    incoming = sorted(p for p in (data_dir / "incoming").rglob("*") if p.is_file())
    assert incoming == sorted(files.incoming_path(uid) for uid in rows)
    others = {p.name for p in data_dir.iterdir() if p.is_file()} - {
        "dicomnode.sqlite3",
        "dicomnode.sqlite3-wal",
        "dicomnode.sqlite3-shm",
        "duplicates.json",  # counts of repeated SOP Instance UIDs (no UIDs, no PHI)
    }
    assert others == set()


def test_storescu_other_sop_class_is_refused(
    node_scp: RunningScp, store_engine: Engine, data_dir: Path, tmp_path: Path
) -> None:
    ct = make_cxr_dataset(sop_class_uid=UID("1.2.840.10008.5.1.4.1.1.2"), Modality="CT")
    path = tmp_path / "ct.dcm"
    ct.save_as(path, enforce_file_format=True)
    result = _storescu(node_scp.port, [path], tmp_path)
    assert result.returncode != 0
    assert "no acceptable presentation contexts" in (result.stdout + result.stderr).lower()
    with Session(store_engine) as session:
        assert list(session.scalars(select(Instance))) == []


def test_echoscu(node_scp: RunningScp) -> None:
    result = subprocess.run(
        [
            dcmtk("echoscu"),
            "-aet",
            "DCMTKSCU",
            "-aec",
            NODE_AE,
            "-to",
            "10",
            "127.0.0.1",
            str(node_scp.port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
