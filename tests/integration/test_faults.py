"""Faults: SIGKILL at any moment, disk full, database locked, destination down.

* A real ``dicomnode serve`` is killed with SIGKILL while it receives, while it
  runs a batch and while it sends, then restarted, several times. Afterwards every
  acknowledged instance has exactly one result object at the destination and each
  study exactly one SR (counted by distinct SOP Instance UID: a result whose
  acknowledgement was lost in a kill is sent again with the same UID, which the
  destination stores once).
* Disk full and a locked database answer 0xA700, leave no partial file, and the
  node stores normally once the space or the lock is back.
* While the destination is down, results wait in the outbox with a growing
  backoff (no busy loop) and go out when it returns.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from dicomnode.config import StoreSettings
from dicomnode.receiving.handlers import ReceiveContext
from dicomnode.receiving.scp import stop_scp
from dicomnode.receiving.statuses import Status
from dicomnode.store import db as store_db
from dicomnode.store.db import make_engine, make_sessionmaker
from dicomnode.store.files import FileStore
from tests.helpers import (
    CR_IMAGE_STORAGE,
    DX_PRESENTATION_STORAGE,
    REPO_ROOT,
    free_port,
    make_cxr_dataset,
    make_tiny_model,
    wait_for_port,
)
from tests.integration.peers import (
    NodeProcess,
    StoreSCP,
    run_storescp,
    start_node,
    stop_process,
    wait_until,
)
from tests.peers.scp import associate, run_scp

pytestmark = [pytest.mark.integration, pytest.mark.dcmtk]

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",
    "1.2.840.10008.5.1.4.1.1.88.22",
}
SYNTAXES = [ExplicitVRLittleEndian]


def _storescp_unique(folder: Path, port: int) -> AbstractContextManager[StoreSCP]:
    """DCMTK storescp writing every received object to a new file (+uf), so that
    repeated deliveries of one SOP Instance UID can be counted."""
    return run_storescp(folder, "PACS", port, ("+uf",))


def _db_rows(data_dir: Path, query: str) -> list[tuple[object, ...]]:
    path = data_dir / "dicomnode.sqlite3"
    if not path.exists():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        return list(db.execute(query).fetchall())


class _Sender:
    """Sends datasets over one pynetdicom association in a thread, recording acks."""

    def __init__(self, port: int, datasets: list[pydicom.Dataset], pause_s: float = 0.0) -> None:
        self.acked: list[pydicom.Dataset] = []
        self._port = port
        self._datasets = datasets
        self._pause_s = pause_s
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        ae = AE(ae_title="KILLSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        ae.add_requested_context(DX_PRESENTATION_STORAGE, SYNTAXES)
        ae.add_requested_context(CR_IMAGE_STORAGE, SYNTAXES)
        assoc = ae.associate("127.0.0.1", self._port, ae_title="DICOMNODE")
        if not assoc.is_established:
            return
        try:
            for ds in self._datasets:
                status = assoc.send_c_store(ds)
                if status and int(status.Status) == 0x0000:
                    self.acked.append(ds)
                if not assoc.is_established:
                    return
                time.sleep(self._pause_s)
        except Exception:  # noqa: BLE001 - the node is killed under us on purpose
            return
        finally:
            if assoc.is_established:
                assoc.release()

    def join(self) -> None:
        self.thread.join(timeout=60)


def _acked_at_least(sender: _Sender, count: int) -> Callable[[], bool]:
    return lambda: len(sender.acked) >= count


def _more_files(folder: Path, before: int) -> Callable[[], bool]:
    return lambda: len(list(folder.iterdir())) > before


def _study(n: int, images: int = 3) -> list[pydicom.Dataset]:
    study = generate_uid()
    return [
        make_cxr_dataset(
            study_uid=study, seed=10 * n + k, rows=96, cols=96, bits_stored=12 if k % 2 else 8
        )
        for k in range(images)
    ]


@pytest.mark.slow
def test_sigkill_loop_every_acknowledged_instance_processed_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "DICOMNODE_SCHEDULER__LEASE_S", "3"
    )  # a killed worker's claim expires quickly
    monkeypatch.setenv("DICOMNODE_DESTINATION__RETRY_BACKOFF_S", "1")
    monkeypatch.setenv("DICOMNODE_DESTINATION__RETRY_BACKOFF_MAX_S", "2")
    model = make_tiny_model(tmp_path / "model")
    data_dir = tmp_path / "node"
    pacs_dir = tmp_path / "pacs"
    pacs_port, node_port = free_port(), free_port()
    args = ["--destination", f"PACS@127.0.0.1:{pacs_port}", "--model", str(model),
            "--stable-after", "1", "--interval", "1"]  # fmt: skip
    acked: list[pydicom.Dataset] = []
    kills: list[str] = []

    def start(round_: int) -> NodeProcess:
        return start_node(data_dir, args, port=node_port, log_name=f"run{round_}.log")

    with _storescp_unique(pacs_dir, pacs_port):
        for round_, phase in enumerate(["receive", "batch", "send"] * 2):
            node = start(round_)
            try:
                study = _study(round_)
                if phase == "receive":
                    sender = _Sender(node_port, study, pause_s=0.3)
                    wait_until(_acked_at_least(sender, 2), 60, "two acknowledged instances")
                else:
                    sender = _Sender(node_port, study)
                    sender.join()
                    assert len(sender.acked) == len(study)
                    if phase == "batch":
                        wait_until(
                            lambda: bool(_db_rows(data_dir, "SELECT 1 FROM job WHERE state IN ('running','done','sent')")),
                            60, "a batch to start", poll_s=0.01,
                        )  # fmt: skip
                    else:
                        before = len(list(pacs_dir.iterdir()))
                        wait_until(_more_files(pacs_dir, before), 60, "a result at the destination",
                                   poll_s=0.01)  # fmt: skip
            finally:
                node.kill()  # also when an assertion above failed: no node left running
            sender.join()
            acked += sender.acked
            kills.append(phase)
        # A last run without kill: everything left is processed and sent.
        node = start(99)
        try:

            def settled() -> bool:
                open_jobs = _db_rows(
                    data_dir,
                    "SELECT 1 FROM job WHERE state IN ('received','ready','running','done')",
                )
                pending = _db_rows(data_dir, "SELECT 1 FROM result WHERE state = 'pending'")
                return not open_jobs and not pending

            wait_until(settled, 180, "every job sent and the outbox empty")
            time.sleep(2.5)  # two more scheduler periods: room for a duplicate to appear
        finally:
            assert node.stop() == 0
    assert len(kills) == 6

    deliveries = [
        pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(pacs_dir.iterdir())
    ]
    distinct = {str(ds.SOPInstanceUID): ds for ds in deliveries}
    sc_per_source: Counter[str] = Counter()
    sr_per_study: Counter[str] = Counter()
    for ds in distinct.values():
        if ds.SOPClassUID == SC_CLASS:
            sc_per_source[str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)] += 1
        elif ds.SOPClassUID in SR_CLASSES:
            sr_per_study[str(ds.StudyInstanceUID)] += 1
    stored = {str(uid) for (uid,) in _db_rows(data_dir, "SELECT sop_instance_uid FROM instance")}
    acked_uids = {str(ds.SOPInstanceUID) for ds in acked}
    assert acked_uids <= stored  # nothing acknowledged was lost
    # Every stored instance (acknowledged or not) has exactly one result object ...
    assert set(sc_per_source) == stored
    assert set(sc_per_source.values()) == {1}
    # ... and every study exactly one SR.
    studies = {str(ds.StudyInstanceUID) for ds in acked}
    assert set(sr_per_study) == {
        str(s) for (s,) in _db_rows(data_dir, "SELECT study_instance_uid FROM study")
    }
    assert studies <= set(sr_per_study) and set(sr_per_study.values()) == {1}
    # Repeated deliveries only ever repeat a UID (the result rows are fixed before sending).
    repeats = Counter(str(ds.SOPInstanceUID) for ds in deliveries)
    assert len(deliveries) == sum(repeats.values())
    assert len(repeats) == len(distinct) == len(stored) + len(sr_per_study)


def _tmpfs(mountpoint: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    mountpoint.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    return result.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mountpoint = tmp_path / "disk"
    if not _tmpfs(mountpoint, "4m"):
        pytest.skip(
            "cannot mount a tmpfs here (needs root); test_file_size_limit_* covers the write failure"
        )
    try:
        yield mountpoint
    finally:
        subprocess.run(
            ["umount", "-l", str(mountpoint)], capture_output=True, timeout=30, check=False
        )


def _partials(data_dir: Path) -> list[Path]:
    return list(data_dir.rglob(".partial-*"))


def test_disk_full_is_a700_without_partial_and_recovers(small_disk: Path) -> None:
    data_dir = small_disk / "data"
    engine = make_engine(StoreSettings(data_dir=data_dir))
    context = ReceiveContext(files=FileStore(data_dir), sessionmaker=make_sessionmaker(engine))
    running = run_scp(context)
    contexts = [(DX_PRESENTATION_STORAGE, SYNTAXES)]
    big = make_cxr_dataset(rows=512, cols=512, bits_stored=16)  # 512 KiB of pixels
    try:
        assoc = associate(running.port, contexts)
        assert int(assoc.send_c_store(make_cxr_dataset()).Status) == 0x0000
        # Fill the disk, leaving 128 KiB: the write starts, then runs out of space.
        stat = os.statvfs(small_disk)
        ballast = small_disk / "ballast"
        ballast.write_bytes(b"\x00" * max(stat.f_bavail * stat.f_frsize - 128 * 1024, 0))
        assert int(assoc.send_c_store(big).Status) == Status.OUT_OF_RESOURCES
        assert _partials(data_dir) == []
        assert not FileStore(data_dir).incoming_path(big.SOPInstanceUID).exists()
        ballast.unlink()  # space is back
        assert int(assoc.send_c_store(big).Status) == 0x0000
        assoc.release()
    finally:
        stop_scp(running.server, grace_s=1)
        engine.dispose()
    assert FileStore(data_dir).incoming_path(big.SOPInstanceUID).is_file()


def test_file_size_limit_write_failure_is_a700_without_partial(data_dir: Path) -> None:
    """Works unprivileged: the receiver process may not write files over 1 MiB."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.receiver_main", str(data_dir), str(port), str(1024 * 1024)],
        cwd=REPO_ROOT,
    )
    try:
        wait_for_port(port, timeout_s=30)
        assoc = associate(port, [(DX_PRESENTATION_STORAGE, SYNTAXES)])
        big = make_cxr_dataset(rows=1024, cols=1024, bits_stored=16)  # 2 MiB
        statuses = [
            int(assoc.send_c_store(ds).Status)
            for ds in (make_cxr_dataset(), big, make_cxr_dataset())
        ]
        assoc.release()
    finally:
        stop_process(process, signal.SIGINT, timeout_s=20)
    assert statuses == [0x0000, Status.OUT_OF_RESOURCES, 0x0000]
    assert _partials(data_dir) == []
    assert not FileStore(data_dir).incoming_path(big.SOPInstanceUID).exists()
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] != 1024 * 1024  # only the child was limited


def test_locked_database_is_a700_without_partial_and_recovers(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_db, "SQLITE_BUSY_TIMEOUT_MS", 500)  # give up after 0.5 s, not 30 s
    engine = make_engine(StoreSettings(data_dir=data_dir))
    context = ReceiveContext(files=FileStore(data_dir), sessionmaker=make_sessionmaker(engine))
    running = run_scp(context)
    ds = make_cxr_dataset()
    blocker = sqlite3.connect(data_dir / "dicomnode.sqlite3", timeout=1, isolation_level=None)
    try:
        assoc = associate(running.port, [(DX_PRESENTATION_STORAGE, SYNTAXES)])
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        start = time.monotonic()
        assert int(assoc.send_c_store(ds).Status) == Status.OUT_OF_RESOURCES
        assert time.monotonic() - start < 5
        assert _partials(data_dir) == []
        assert not FileStore(data_dir).incoming_path(ds.SOPInstanceUID).exists()
        blocker.execute("ROLLBACK")  # the lock is released
        assert int(assoc.send_c_store(ds).Status) == 0x0000
        assoc.release()
    finally:
        blocker.close()
        stop_scp(running.server, grace_s=1)
        engine.dispose()
    assert FileStore(data_dir).incoming_path(ds.SOPInstanceUID).is_file()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
def test_destination_down_results_wait_without_busy_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMNODE_DESTINATION__RETRY_BACKOFF_S", "1")
    monkeypatch.setenv("DICOMNODE_DESTINATION__RETRY_BACKOFF_MAX_S", "4")
    model = make_tiny_model(tmp_path / "model")
    pacs_port = free_port()  # nothing listens here yet
    data_dir = tmp_path / "node"
    node = start_node(data_dir, ["--destination", f"PACS@127.0.0.1:{pacs_port}", "--model", str(model),
                                 "--stable-after", "1", "--interval", "1"])  # fmt: skip
    try:
        sender = _Sender(node.port, _study(0, images=2))
        sender.join()
        assert len(sender.acked) == 2
        wait_until(
            lambda: bool(_db_rows(data_dir, "SELECT 1 FROM result WHERE state = 'pending' AND attempts >= 2")),
            60, "two failed send attempts",
        )  # fmt: skip
        cpu_before, wall_before = _cpu_seconds(node.process.pid), time.monotonic()
        time.sleep(5)
        cpu = _cpu_seconds(node.process.pid) - cpu_before
        wall = time.monotonic() - wall_before
        assert cpu < 0.5 * wall, f"{cpu:.1f} s CPU in {wall:.1f} s while waiting"
        attempts = max(int(a) for (a,) in _db_rows(data_dir, "SELECT attempts FROM result"))  # type: ignore[call-overload]
        assert 2 <= attempts <= 6  # backoff 1, 2, 4, 4, ... s: a handful of tries, not hundreds
        status = subprocess.run(
            [sys.executable, "-m", "dicomnode", "status", "--data-dir", str(data_dir), "--json"],
            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False,
        )  # fmt: skip
        summary = json.loads(status.stdout.strip().splitlines()[-1])
        assert summary["results"] == {"pending": 3}
        assert all(item["last_error"] for item in summary["pending_sends"])
        with _storescp_unique(tmp_path / "pacs", pacs_port):  # the destination comes back
            wait_until(
                lambda: len(list((tmp_path / "pacs").iterdir())) >= 3, 30, "the waiting results"
            )
            wait_until(
                lambda: _db_rows(data_dir, "SELECT state, count(*) FROM result GROUP BY state") == [("sent", 3)],
                30, "the outbox marked sent",
            )  # fmt: skip
        by_kind: defaultdict[str, int] = defaultdict(int)
        for path in (tmp_path / "pacs").iterdir():
            by_kind[str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID)] += 1
        assert by_kind[SC_CLASS] == 2 and sum(by_kind[c] for c in SR_CLASSES) == 1
    finally:
        assert node.stop() == 0
