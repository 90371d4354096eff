"""Several receiving processes on one port: children serve, stop with SIGTERM, die with the parent.

The pool test binds the port in the test process and never serves it here, so
every association that succeeds was served by a child process. The ``serve``
tests run a real ``dicomnode serve --role receiver --receivers 2``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from dicomnode.config import DicomSettings, Settings, StoreSettings
from dicomnode.receiving.processes import ReceiverPool, receiver_count
from dicomnode.receiving.scp import bind_listeners
from dicomnode.store.db import make_engine, make_sessionmaker
from dicomnode.store.models import Instance
from tests.helpers import (
    DX_PRESENTATION_STORAGE,
    REPO_ROOT,
    free_port,
    make_cxr_dataset,
    wait_for_port,
)
from tests.integration.peers import wait_until
from tests.peers.scp import NODE_AE, associate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VERIFICATION = "1.2.840.10008.1.1"


def _children(parent: int) -> list[int]:
    """Pids of the receiving processes whose parent is ``parent`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == parent and b"dicomnode.receiving.processes" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has stopped already


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _store(port: int) -> tuple[str, int]:
    """C-STORE one DX image; returns (SOP Instance UID, status)."""
    uid = generate_uid()
    ds = make_cxr_dataset(SOPInstanceUID=uid)
    assoc = associate(port, [(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])])
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return uid, int(status.Status)
    finally:
        assoc.release()


def test_receiver_count_auto_is_the_cpu_count_bounded() -> None:
    assert receiver_count(3) == 3
    assert 1 <= receiver_count(0) <= 4
    assert receiver_count(0) == max(1, min(os.cpu_count() or 1, 4))


def test_port_in_use_still_fails_without_reuseport() -> None:
    settings = DicomSettings(ae_title=NODE_AE, port=free_port())
    first = bind_listeners(settings)
    try:
        with pytest.raises(OSError):
            bind_listeners(settings)
    finally:
        first.close()


def test_child_processes_serve_the_shared_port_and_stop_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(
        dicom=DicomSettings(
            ae_title=NODE_AE, port=port, acse_timeout_s=5, dimse_timeout_s=10, network_timeout_s=10
        ),
        store=StoreSettings(data_dir=tmp_path / "data"),
        log_level="WARNING",
    )
    engine = make_engine(settings.store)
    listeners = bind_listeners(settings.dicom)
    pool = ReceiverPool(settings, listeners, 2, grace_s=2)
    try:
        pool.start()
        assert len(pool.pids) == 2
        # Nothing in this process accepts: each success below is a child's.
        uids = []
        for _ in range(4):
            uid, status = _store(port)
            assert status == 0x0000
            uids.append(uid)
        with make_sessionmaker(engine)() as session:
            rows = {
                row.sop_instance_uid: row.path for row in session.scalars(select(Instance)).all()
            }
        assert set(uids) <= set(rows)
        for uid in uids:  # each file lies in the shared data folder
            assert (settings.store.data_dir / rows[uid]).is_file()
        pids = pool.pids
        pool.stop()
        assert not any(_alive(pid) for pid in pids)
        assert all(
            slot.process is not None and slot.process.returncode == 0 for slot in pool._slots
        )
    finally:
        pool.stop()
        listeners.close()
        engine.dispose()
    wait_until(lambda: _refused(port), 10, "the port to close")


def test_pool_starts_a_crashed_child_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomnode.receiving import processes

    monkeypatch.setattr(processes, "RESPAWN_DELAY_S", 0.0)
    settings = Settings(
        dicom=DicomSettings(ae_title=NODE_AE, port=free_port()),
        store=StoreSettings(data_dir=tmp_path / "data"),
        log_level="WARNING",
    )
    listeners = bind_listeners(settings.dicom)
    pool = ReceiverPool(settings, listeners, 1, grace_s=1)
    try:
        pool.start()
        (first,) = pool.pids
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not _alive(first), 10, "the child to die")
        pool.check()
        (second,) = pool.pids
        assert second != first
    finally:
        pool.stop()
        listeners.close()


@pytest.fixture
def serve_two(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dicomnode",
            "serve",
            "--role",
            "receiver",
            "--receivers",
            "2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
            "--log-level",
            "INFO",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
    )
    log.close()
    try:
        wait_for_port(port, timeout_s=60)
        wait_until(lambda: len(_children(process.pid)) == 1, 60, "one child receiving process")
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_serve_sigterm_stops_every_receiving_process(
    serve_two: tuple[subprocess.Popen[bytes], int],
) -> None:
    process, port = serve_two
    (child,) = _children(process.pid)
    _uid, status = _store(port)
    assert status == 0x0000
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    wait_until(lambda: not _alive(child), 20, "the child receiving process to stop")
    assert _refused(port)


def test_children_die_with_a_killed_parent(serve_two: tuple[subprocess.Popen[bytes], int]) -> None:
    process, port = serve_two
    (child,) = _children(process.pid)
    process.kill()
    process.wait(timeout=10)
    wait_until(lambda: not _alive(child), 20, "the orphaned receiving process to stop")
    wait_until(lambda: _refused(port), 10, "nothing to listen on the port any more")
    again = bind_listeners(DicomSettings(ae_title=NODE_AE, port=port))  # a restart can bind it
    again.close()


def test_a_burst_of_sigterms_still_stops_everything(
    serve_two: tuple[subprocess.Popen[bytes], int],
) -> None:
    """Signal handlers must not take locks: repeated signals once deadlocked a child."""
    process, port = serve_two
    (child,) = _children(process.pid)
    for _ in range(20):
        for pid in (child, process.pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    assert process.wait(timeout=30) == 0
    wait_until(lambda: not _alive(child), 20, "the child receiving process to stop")
    assert _refused(port)
