"""Which ``dicomnode serve`` processes run on a data folder: one locked pid file each.

Each serving process writes ``<data_dir>/run/serve-<pid>-<random>.json`` (its pid, role,
destination, model and start time) and holds an exclusive ``flock(2)`` on it while it runs
(the random part keeps apart processes of the same pid in different containers).
The kernel drops the lock when the process ends, however it ends (SIGKILL, crash), so
a file whose lock can be taken is stale: :func:`running` ignores it and the next
:func:`hold` removes it. Nothing depends on pids being unique over time.

Locks are per host: on a data folder shared over a network file system, processes of
other hosts may not be seen.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

#: Folder of the data folder that holds the pid files.
RUN_AREA = "run"
_PATTERN = "serve-*.json"


@dataclass(frozen=True)
class NodeProcess:
    """One running ``serve`` process, as its pid file records it.

    Attributes:
        pid: process id on this host.
        role: ``all``, ``receiver`` or ``worker``.
        destination: where its results go (``AET@HOST:PORT``), None = nowhere (kept).
        started_at: ISO 8601 UTC time the process started serving.
        model: the model it serves (``model.name`` as configured); None for a receiver.
    """

    pid: int
    role: str
    destination: str | None
    started_at: str
    model: str | None = None


def _new_pid_path(data_dir: Path, pid: int) -> Path:
    return data_dir / RUN_AREA / f"serve-{pid}-{secrets.token_hex(4)}.json"


def _pid_from_name(path: Path) -> int | None:
    text = path.stem.removeprefix("serve-").partition("-")[0]
    return int(text) if text.isdigit() else None


@contextmanager
def hold(data_dir: Path, process: NodeProcess) -> Iterator[Path]:
    """Write and lock ``process``'s pid file for the duration of the ``with`` block.

    Stale pid files (their process is gone) are removed first.

    Args:
        data_dir: the node's data folder (created when missing).
        process: what to record; ``process.pid`` is normally ``os.getpid()``.

    Yields:
        the pid file's path.

    Raises:
        OSError: the run folder or the file cannot be written.
    """
    folder = data_dir / RUN_AREA
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale(folder)
    path, fd = _create_locked(data_dir, process.pid)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(asdict(process)).encode())
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


def _create_locked(data_dir: Path, pid: int) -> tuple[Path, int]:
    """Create a new pid file and lock it; returns its path and descriptor.

    Another process's stale sweep may unlink the file between our create and our lock
    (it finds the lock free): then the locked file is no longer at its path and we
    start again with a new name.
    """
    for _ in range(10):  # bounded: each round loses only to a concurrent stale sweep
        path = _new_pid_path(data_dir, pid)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a new file: free, or a sweeper's for an instant
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return path, fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise OSError(f"cannot create a pid file in {data_dir / RUN_AREA}: they keep being removed")


def running(data_dir: Path) -> list[NodeProcess]:
    """The serve processes of this host whose pid files under ``data_dir`` are locked.

    Returns:
        one entry per live process, by pid; empty when there is no run folder.
    """
    folder = data_dir / RUN_AREA
    if not folder.is_dir():
        return []
    found: list[NodeProcess] = []
    for path in sorted(folder.glob(_PATTERN)):
        pid = _pid_from_name(path)
        if pid is None:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # removed meanwhile, or not readable by us
            continue
        try:
            if _lock_is_free(fd):
                continue  # stale
            found.append(_read(fd, pid))
        finally:
            os.close(fd)
    return sorted(found, key=lambda p: p.pid)


def _lock_is_free(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _read(fd: int, pid: int) -> NodeProcess:
    """The record in a locked pid file (``pid`` from its name, for a file being written)."""
    try:
        data = json.loads(os.read(fd, 65536) or b"{}")
        return NodeProcess(
            pid=int(data.get("pid", pid)),
            role=str(data.get("role", "unknown")),
            destination=data.get("destination"),
            started_at=str(data.get("started_at", "")),
            model=data.get("model"),
        )
    except (ValueError, TypeError):
        return NodeProcess(pid=pid, role="unknown", destination=None, started_at="")


def _remove_stale(folder: Path) -> None:
    for path in folder.glob(_PATTERN):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process is alive
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
