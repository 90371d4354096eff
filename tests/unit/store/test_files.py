"""Atomic, hash-addressed file store: nothing half-written, nothing outside the data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.errors import StorageError
from dicomnode.store.files import FileStore


def test_paths_are_hashed_and_inside(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    hostile = "../../etc/passwd\\..\n1.2.3"
    path = store.incoming_path(hostile)
    assert store.data_dir in path.parents
    assert "passwd" not in str(path) and ".." not in path.parts
    assert path != store.incoming_path("1.2.3")
    assert store.result_path("1.2.3") != store.incoming_path("1.2.3")


def test_write_atomic_round_trip_and_no_partials(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    path = store.incoming_path("1.2.3")
    store.write_atomic(path, b"DICM" * 10)
    assert path.read_bytes() == b"DICM" * 10
    assert store.relative(path).startswith("incoming/")
    assert store.absolute(store.relative(path)) == path
    assert list(path.parent.glob(".partial-*")) == []


def test_refuses_paths_outside(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data")
    with pytest.raises(StorageError):
        store.write_atomic(tmp_path / "elsewhere.dcm", b"x")
    with pytest.raises(StorageError):
        store.absolute("../elsewhere.dcm")


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    path = store.incoming_path("1.2.3")
    path.parent.mkdir(parents=True)
    path.mkdir()  # a directory where the file should go: os.replace fails
    with pytest.raises(StorageError):
        store.write_atomic(path, b"data")
    assert list(path.parent.glob(".partial-*")) == []


def test_remove_partials(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    leftover = store.data_dir / "incoming" / "ab" / "cd" / ".partial-x.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    assert store.remove_partials() == 1
    assert not leftover.exists()


def test_write_without_overwrite_keeps_the_first_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    path = store.incoming_path("1.2.3")
    assert store.write_atomic(path, b"first", overwrite=False) is True
    assert store.write_atomic(path, b"second", overwrite=False) is False
    assert path.read_bytes() == b"first"
    assert list(path.parent.glob(".partial-*")) == []
    assert store.write_atomic(path, b"third") is True  # the default replaces
    assert path.read_bytes() == b"third"


def test_concurrent_no_clobber_writers_have_one_winner(tmp_path: Path) -> None:
    """Two processes' worth of writers racing on one path: exactly one write lands."""
    from concurrent.futures import ThreadPoolExecutor

    store = FileStore(tmp_path)
    path = store.incoming_path("1.2.3")
    payloads = [bytes([n]) * 4096 for n in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        won = list(pool.map(lambda data: store.write_atomic(path, data, overwrite=False), payloads))
    assert won.count(True) == 1
    assert path.read_bytes() == payloads[won.index(True)]
    assert list(path.parent.glob(".partial-*")) == []


def test_fsynced_store_flushes_the_folder_of_each_new_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A received file's name must be on disk before 0x0000, not only its bytes: the
    folder is fsynced after the link (and each newly created folder's parent)."""
    import dicomnode.store.files as files_module

    flushed: list[Path] = []
    real = files_module._fsync_dir
    monkeypatch.setattr(files_module, "_fsync_dir", lambda folder: (flushed.append(folder), real(folder)))
    store = FileStore(tmp_path / "data")
    path = store.incoming_path("1.2.3")
    assert store.write_atomic(path, b"x", overwrite=False)
    assert flushed[-1] == path.parent
    assert {path.parent.parent, path.parent.parent.parent} <= set(flushed)  # new folders' entries
    flushed.clear()
    store.write_atomic(store.incoming_path("1.2.3"), b"y")  # rename over: flushed too
    assert flushed == [path.parent]
    flushed.clear()
    FileStore(tmp_path / "data", fsync=False).write_atomic(store.incoming_path("1.2.4"), b"z")
    assert flushed == []


def test_database_writers_lock_excludes_threads_and_other_processes(tmp_path: Path) -> None:
    """Receivers' recording transactions queue on one lock per data folder: another
    open file (another process) cannot take it while it is held, and a second thread
    waits until it is released."""
    import fcntl
    import os
    import threading

    store = FileStore(tmp_path)
    taken = threading.Event()
    with store.lock_database_writes():
        lock_file = tmp_path / "locks" / "database-writers.lock"
        fd = os.open(lock_file, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)

        def second() -> None:
            with store.lock_database_writes():
                taken.set()

        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        assert not taken.wait(0.2)
    assert taken.wait(10)
    thread.join(10)
