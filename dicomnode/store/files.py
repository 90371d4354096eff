"""On-disk layout of received and produced Part-10 files, written atomically.

Paths are derived from the sha256 of the SOP Instance UID, never from the raw UID,
so no UID (however hostile) can choose where a file lands:

    <data_dir>/incoming/ab/cd/<sha256>.dcm      received instances
    <data_dir>/results/ab/cd/<sha256>.dcm       produced SC / SR objects
    <data_dir>/locks/NN.lock                    per-UID lock stripes shared by receivers
    <data_dir>/locks/database-writers.lock      queue of the receivers' SQLite commits

A received instance is stored as a Part-10 file: the 128-byte preamble, ``DICM``, a File
Meta header (:func:`part10_header`), then the data set bytes exactly as received (never
re-encoded). :meth:`FileStore.lock_instance` makes check-write-record
atomic per SOP Instance UID for every process on one data folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Final

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

from dicomnode.errors import StorageError
from dicomnode.explicit_vr import element

#: Folder of the data folder that holds produced SC / SR objects.
RESULTS_AREA = "results"
#: Folder (under the data folder) of the per-UID lock files shared by receivers.
LOCK_FOLDER: Final = "locks"
#: Lock file (in :data:`LOCK_FOLDER`) that queues receivers' database write transactions.
WRITERS_LOCK: Final = "database-writers.lock"
#: Number of lock stripes (files in :data:`LOCK_FOLDER`, locks per process).
LOCK_STRIPES: Final = 64
#: The Part-10 preamble (PS3.10 7.1): 128 zero bytes, then the ``DICM`` prefix.
PART10_PREAMBLE: Final = b"\x00" * 128 + b"DICM"


def part10_parts(
    file_meta: FileMetaDataset, dataset: bytes | memoryview
) -> list[bytes | memoryview]:
    """The Part-10 file of an encoded data set, as two parts, without copying the data set.

    Args:
        file_meta: the File Meta Information (group 0002) to write, encoded as
            explicit VR little endian with its group length.
        dataset: the data set bytes in the transfer syntax ``file_meta`` names,
            exactly as received (a view of the received buffer is fine).

    Returns:
        ``[preamble + DICM + file meta, dataset]``, ready for :meth:`FileStore.write_atomic`.
    """
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, file_meta)
    return [PART10_PREAMBLE + buffer.getvalue(), dataset]


def part10_header(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """Preamble, ``DICM`` and File Meta Information of a received instance, encoded directly.

    The same bytes as :func:`part10_parts` writes (pydicom's ``write_file_meta_info``)
    for a File Meta with exactly these elements (``tests/unit/store/test_files_parts.py``
    pins that), at about 1/30 of its cost: per received instance pydicom's Dataset
    building and element writing took ~0.5 ms, a tenth of the receiver's Python time.
    PS3.10 7.1: explicit VR little endian, group length first; UIDs padded with NUL,
    the SH version name with a space, to even length.

    Args:
        sop_class_uid: (0002,0002) Media Storage SOP Class UID.
        sop_instance_uid: (0002,0003) Media Storage SOP Instance UID.
        transfer_syntax_uid: (0002,0010) Transfer Syntax UID.
        implementation_class_uid: (0002,0012) Implementation Class UID.
        implementation_version_name: (0002,0013) Implementation Version Name (SH, <= 16).

    Returns:
        The bytes that precede the data set in the Part-10 file.
    """
    group = b"".join((
        element(0x00020001, "OB", b"\x00\x01"),  # File Meta Information Version
        element(0x00020002, "UI", sop_class_uid.encode("ascii")),
        element(0x00020003, "UI", sop_instance_uid.encode("ascii")),
        element(0x00020010, "UI", transfer_syntax_uid.encode("ascii")),
        element(0x00020012, "UI", implementation_class_uid.encode("ascii")),
        element(0x00020013, "SH", implementation_version_name.encode("ascii")),
    ))  # fmt: skip
    return PART10_PREAMBLE + element(0x00020000, "UL", struct.pack("<L", len(group))) + group


def part10_dataset(raw: bytes) -> bytes | None:
    """The data set bytes of a Part-10 file written from :func:`part10_parts`.

    Args:
        raw: the whole file.

    Returns:
        The bytes after the preamble and File Meta header, or None when ``raw`` does not
        start with a preamble, ``DICM`` and a File Meta group length.
    """
    if len(raw) < 144 or raw[128:132] != b"DICM" or raw[132:136] != b"\x02\x00\x00\x00":
        return None
    (group_length,) = struct.unpack_from("<I", raw, 140)
    return raw[144 + group_length :]


class FolderLock:
    """One lock held in this process (threads) and across processes (``flock`` on a
    file): waiters sleep in the kernel and wake as soon as it is released.

    Args:
        path: the lock file (it and its folder are created on first use).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.thread_lock = threading.Lock()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lock.

        Raises:
            OSError: the lock file cannot be created or locked (disk full, read-only).
        """
        with self.thread_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock


class UidLocks:
    """Striped per-UID locks, within this process (threads) and across processes
    (one :class:`FolderLock` per stripe file in a folder), so that check-duplicate
    -> write -> record is atomic per SOP Instance UID for every receiver on one data folder.

    Args:
        lock_dir: folder of the lock files (created on first use).
        stripes: number of stripes; UIDs hash (crc32) onto them.
    """

    def __init__(self, lock_dir: Path, stripes: int = LOCK_STRIPES) -> None:
        self.lock_dir = lock_dir
        self._stripes = tuple(FolderLock(lock_dir / f"{stripe:02d}.lock") for stripe in range(stripes))

    def _stripe(self, uid: str) -> FolderLock:
        return self._stripes[zlib.crc32(uid.encode("ascii", "replace")) % len(self._stripes)]

    def for_uid(self, uid: str) -> threading.Lock:
        """The in-process lock of ``uid``'s stripe."""
        return self._stripe(uid).thread_lock

    def hold(self, uid: str) -> AbstractContextManager[None]:
        """Hold ``uid``'s stripe in this process and across processes.

        Raises:
            OSError: the lock file cannot be created or locked (disk full, read-only).
        """
        return self._stripe(uid).hold()


def check_data_dir(path: Path, *, create: bool = False, write: bool = True) -> bool:
    """Check that ``path`` can serve as a node's data folder.

    Args:
        path: the data folder.
        create: create it (and its parents) when missing.
        write: require write access too (``serve``), not only read access (``status``).

    Returns:
        True when the folder exists (always, when ``create``); False when it is missing.

    Raises:
        StorageError: naming ``path``: it is not a folder, cannot be created, or this
            user cannot read (and write) it.
    """
    if path.exists() and not path.is_dir():
        raise StorageError(f"data folder {path} is a file, not a folder (give --data-dir a folder)")
    if not path.exists():
        if not create:
            return False
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create data folder {path}: {exc.strerror or exc}") from exc
    mode = os.R_OK | os.X_OK | (os.W_OK if write else 0)
    if not os.access(path, mode):
        needed = "read and write" if write else "read"
        raise StorageError(f"data folder {path}: this user (uid {os.getuid()}) cannot {needed} it")
    return True


class FileStore:
    """The node's data folder.

    Args:
        data_dir: root folder; created when missing.
    """

    def __init__(self, data_dir: Path, *, fsync: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        #: Flush each file's data to stable storage before it is linked into place
        #: (``StoreSettings.fsync``); False only where losing files on power loss is fine.
        self.fsync = fsync
        self._locks = UidLocks(self.data_dir / LOCK_FOLDER)
        self._writers = FolderLock(self.data_dir / LOCK_FOLDER / WRITERS_LOCK)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the folder and the fsync flag (the pipeline's worker processes get a
        store of their own; per-process locks are not sent along)."""
        return (_open_store, (self.data_dir, self.fsync))

    def lock_instance(self, sop_instance_uid: str) -> AbstractContextManager[None]:
        """Hold ``sop_instance_uid``'s lock in this process and across processes sharing
        the data folder (``flock`` on a stripe file in ``<data_dir>/locks``).

        Raises:
            OSError: the lock file cannot be created or locked (disk full, read-only).
        """
        return self._locks.hold(sop_instance_uid)

    def lock_database_writes(self) -> AbstractContextManager[None]:
        """Hold the lock that queues the receivers' SQLite write transactions (all
        processes on this data folder).

        SQLite has one write lock per database; a writer that finds it taken retries in
        SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25... ms between tries.
        With several receiving associations that sleeping, not the work, set the pace
        (measured: half of the commits of 4 associations waited, ~11 ms each). Writers
        queued on this ``flock`` instead start the moment the previous one commits.

        Raises:
            OSError: the lock file cannot be created or locked (disk full, read-only).
        """
        return self._writers.hold()

    def _hashed(self, area: str, uid: str) -> Path:
        digest = hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()
        return self.data_dir / area / digest[:2] / digest[2:4] / f"{digest}.dcm"

    def incoming_path(self, sop_instance_uid: str) -> Path:
        """Absolute path for a received instance."""
        return self._hashed("incoming", sop_instance_uid)

    def result_path(self, sop_instance_uid: str) -> Path:
        """Absolute path for a produced result object."""
        return self._hashed(RESULTS_AREA, sop_instance_uid)

    def write_atomic(
        self,
        path: Path,
        data: bytes | memoryview | Sequence[bytes | memoryview],
        *,
        overwrite: bool = True,
    ) -> bool:
        """Write ``data`` to ``path`` all at once or not at all.

        A temporary file in the same folder is written, flushed to disk
        (``fdatasync``, unless the store was made with ``fsync=False``) and renamed over
        ``path`` (``overwrite=True``) or hard-linked to ``path`` (``overwrite=False``:
        ``link(2)`` fails when ``path`` exists, so of two processes writing the same
        path at once exactly one wins and the other's data never replaces it); then
        the folder is fsynced, so that the new name survives a power loss as well as
        the bytes (again unless ``fsync=False``). On any failure the temporary file is
        removed.

        Args:
            path: destination inside the data folder.
            data: the complete file content, or its consecutive parts (written
                in turn, never joined: no copy of a large data set).
            overwrite: replace an existing file (True) or leave it alone (False).

        Returns:
            True when ``data`` is now at ``path``; False when ``overwrite`` is False
            and ``path`` already existed (it is left unchanged).

        Raises:
            StorageError: the folder cannot be created or the write fails (disk full, ...).
        """
        self._check_inside(path)
        tmp_name: str | None = None
        try:
            _make_folder(path.parent, durable=self.fsync)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix=".tmp")
            try:
                _write_all(fd, [data] if isinstance(data, bytes | memoryview) else list(data))
                if self.fsync:
                    os.fdatasync(fd)  # the size is data too: a later read sees every byte
            finally:
                os.close(fd)
            if overwrite:
                os.replace(tmp_name, path)
                tmp_name = None
            else:
                try:
                    os.link(tmp_name, path)
                except FileExistsError:
                    return False
            if self.fsync:
                _fsync_dir(path.parent)  # the new name is on disk too, not only the bytes
            return True
        except OSError as exc:
            raise StorageError(f"cannot write {self.relative(path)}: {exc.strerror or exc}") from exc
        finally:
            if tmp_name is not None:
                Path(tmp_name).unlink(missing_ok=True)

    def relative(self, path: Path) -> str:
        """``path`` relative to the data folder (what the database stores)."""
        return str(path.resolve().relative_to(self.data_dir))

    def absolute(self, relative: str) -> Path:
        """Absolute path of a database-stored relative path.

        Raises:
            StorageError: the path would leave the data folder.
        """
        path = (self.data_dir / relative).resolve()
        self._check_inside(path)
        return path

    def remove(self, path: Path) -> None:
        """Delete a file if it exists."""
        self._check_inside(path)
        path.unlink(missing_ok=True)

    def remove_partials(self) -> int:
        """Delete temporary files left by a crash mid-write; returns how many."""
        count = 0
        for area in ("incoming", RESULTS_AREA):
            for leftover in (self.data_dir / area).glob("*/*/.partial-*.tmp"):
                leftover.unlink(missing_ok=True)
                count += 1
        return count

    def _check_inside(self, path: Path) -> None:
        resolved = path.resolve()
        if resolved != self.data_dir and self.data_dir not in resolved.parents:
            raise StorageError(f"refusing to touch {path}: outside the data folder")


#: Largest single write(2) (bytes). One multi-megabyte write costs several times the
#: CPU of the same bytes in 1 MiB writes (measured: 10 MB took 25 ms of system time
#: at once, 2.5 ms in 1 MiB pieces on the reference VM).
WRITE_CHUNK_BYTES = 1 << 20


def _write_all(fd: int, parts: list[bytes | memoryview]) -> None:
    """Write ``parts`` to ``fd`` completely, in writes of at most :data:`WRITE_CHUNK_BYTES`
    (a short write continues where it ended)."""
    for part in parts:
        view = memoryview(part).cast("B")
        offset = 0
        while offset < len(view):  # bounded: every round writes >= 1 byte or raises
            written = os.write(fd, view[offset : offset + WRITE_CHUNK_BYTES])
            if written <= 0:  # pragma: no cover - write(2) returns >= 1 or fails
                raise OSError("write makes no progress")
            offset += written
        view.release()


def _make_folder(folder: Path, *, durable: bool) -> None:
    """Create ``folder`` and its missing parents; with ``durable``, fsync the parent of
    each folder created, so that the folder's own entry survives a power loss too."""
    if folder.is_dir():
        return
    missing = [folder, *(p for p in folder.parents if not p.exists())]
    folder.mkdir(parents=True, exist_ok=True)
    if durable:
        for created in reversed(missing):
            _fsync_dir(created.parent)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a file just linked or renamed into it) to stable storage."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_store(data_dir: Path, fsync: bool) -> FileStore:
    """A :class:`FileStore` for ``data_dir`` (how a store is unpickled)."""
    return FileStore(data_dir, fsync=fsync)
