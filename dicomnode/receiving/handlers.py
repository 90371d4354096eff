"""C-STORE and C-ECHO handlers: validate the header, persist the file, queue it, answer.

pynetdicom calls these in the association's thread, so they do only cheap work:
no pixel decoding and never inference. Each step's failure maps to one DIMSE status
(STYLE.md section 6); the codes are :class:`~dicomnode.receiving.statuses.Status`:

====================================================  =======================================
what happened                                         status
====================================================  =======================================
data set cannot be parsed / broken encapsulation /    0xC210 cannot understand
  encoding differs from the transfer syntax
native pixel data length does not fit the dimensions  0xC222 cannot understand
text value over its VR's length / control characters  0xC224 cannot understand
SOP Instance/Class, Study or Series UID missing       0xC220 cannot understand
one of those UIDs is not a valid UID                  0xC221 cannot understand
command UIDs differ from the data set's               0xA900 data set does not match SOP class
SOP class of the data set is not one we take          0x0122 SOP class not supported
not a chest / not usable (``validation.classify``)    0x0000, stored, Instance row SKIPPED
deflated data set inflating past ``max_dataset_bytes``  0xC223 cannot understand
file or database write fails                          0xA700 out of resources, file removed
free space below ``store.min_free_bytes``              0xA700 out of resources, nothing written
same SOP Instance UID again                           0x0000, first copy kept, nothing changes
unexpected error in this module                       0x0110 processing failure
====================================================  =======================================

Only an instance that is on disk (fsynced, linked into place) and recorded in a
committed transaction is answered 0x0000. Logs carry the SOP Instance UID and the
calling AE title, never patient data.

Duplicates (same SOP Instance UID): the first recorded copy wins, always. A
repeat with the same data set bytes is logged at INFO; one whose bytes differ
(other pixels, other header, or only another transfer syntax) is logged at
WARNING with both sizes; both kinds are counted in :class:`ReceiveCounters` (this
process) and in the data folder's ``duplicates.json`` (all receivers, shown by
``dicomnode status`` with the time of the last one); neither changes
the stored file, the database or the results. Check-write-record runs under a
per-UID lock that holds across processes (``flock`` on ``<data_dir>/locks``), so
two receivers sharing a data folder cannot both store one UID, and the file is
linked into place without ever replacing another process's file.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import metrics
from dicomnode.domain import InstanceState
from dicomnode.errors import RejectedInstance, StorageError
from dicomnode.receiving.statuses import Status
from dicomnode.receiving.validation import (
    STORAGE_SOP_CLASSES,
    Accept,
    Verdict,
    check_structure,
    classify,
    safe_text,
)
from dicomnode.store import duplicates, queue
from dicomnode.store.files import FileStore
from dicomnode.store.space import low_disk
from dicomnode.uid import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, is_valid_uid

if TYPE_CHECKING:
    from pynetdicom.events import Event

logger = logging.getLogger(__name__)

_LOCK_STRIPES: Final = 64
_INFLATE_CHUNK: Final = 4 * 1024 * 1024
#: Folder (under the data folder) of the per-UID lock files shared by receivers.
LOCK_FOLDER: Final = "locks"


#: Default for ``ReceiveContext.max_dataset_bytes`` (``DicomSettings.max_dataset_bytes``).
DEFAULT_MAX_DATASET_BYTES: Final = 256 * 1024 * 1024


class _UidLocks:
    """Striped per-UID locks, within this process (threads) and across processes
    (``flock`` on one of ``stripes`` lock files), so that check-duplicate -> write ->
    record is atomic per SOP Instance UID for every receiver on one data folder."""

    def __init__(self, stripes: int = _LOCK_STRIPES) -> None:
        self._locks = tuple(threading.Lock() for _ in range(stripes))

    def _stripe(self, uid: str) -> int:
        return zlib.crc32(uid.encode("ascii", "replace")) % len(self._locks)

    def for_uid(self, uid: str) -> threading.Lock:
        """The in-process lock of ``uid``'s stripe."""
        return self._locks[self._stripe(uid)]

    @contextmanager
    def hold(self, uid: str, lock_dir: Path) -> Iterator[None]:
        """Hold ``uid``'s stripe in this process and across processes.

        Raises:
            OSError: the lock file cannot be created or locked (disk full, read-only).
        """
        stripe = self._stripe(uid)
        with self._locks[stripe]:
            lock_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_dir / f"{stripe:02d}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock


@dataclass
class ReceiveCounters:
    """Counts of notable outcomes since the receiver started (in memory, logged).

    Attributes:
        duplicates: repeats of an already stored SOP Instance UID, same bytes.
        conflicting_duplicates: repeats whose data set bytes differ from the stored copy.
    """

    duplicates: int = 0
    conflicting_duplicates: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, conflicting: bool) -> int:
        """Count one duplicate; returns the running total of its kind."""
        with self._lock:
            if conflicting:
                self.conflicting_duplicates += 1
                return self.conflicting_duplicates
            self.duplicates += 1
            return self.duplicates


@dataclass(frozen=True)
class ReceiveContext:
    """What the C-STORE handler needs, built once by ``serve`` and passed to the SCP.

    Attributes:
        files: the data folder where received Part-10 files are written.
        sessionmaker: factory of database sessions (``store.db.make_sessionmaker``).
        clock: current time as naive UTC (the database convention), injectable for tests.
        max_dataset_bytes: largest data set taken, after inflating a deflated one
            (``start_scp`` sets it from ``DicomSettings.max_dataset_bytes``).
        counters: duplicate counts of this process.
        min_free_bytes: below this much free space in the data folder every C-STORE is
            answered 0xA700 and nothing is written (``store.min_free_bytes``; 0 = off).
    """

    files: FileStore
    sessionmaker: sessionmaker[Session]
    clock: Callable[[], datetime] = queue.utcnow
    max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES
    min_free_bytes: int = 0
    counters: ReceiveCounters = field(default_factory=ReceiveCounters, compare=False)
    _locks: _UidLocks = field(default_factory=_UidLocks, repr=False, compare=False)


@dataclass(frozen=True)
class _Header:
    """The few header values the handler needs, validated."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str


def handle_echo(event: Event) -> Status:
    """Answer a C-ECHO (Verification) with success.

    Args:
        event: pynetdicom ``EVT_C_ECHO`` event.

    Returns:
        ``0x0000``.
    """
    logger.debug("C-ECHO from %s", _calling_ae(event))
    return Status.SUCCESS


def handle_store(event: Event, context: ReceiveContext) -> Status:
    """Validate, persist and queue one received instance; return its DIMSE status.

    Bound as ``(evt.EVT_C_STORE, handle_store, [context])``. Never raises: every
    failure becomes a status (see the module docstring table).

    Args:
        event: pynetdicom ``EVT_C_STORE`` event (request, context, association).
        context: the data folder, session factory and clock.

    Returns:
        The DIMSE status: ``0x0000`` once the file is durable and recorded (also for
        skipped instances and duplicates), otherwise a failure status.
    """
    status = _handle_store(event, context)
    metrics.count_cstore_status(status)
    return status


def _handle_store(event: Event, context: ReceiveContext) -> Status:
    calling_ae = _calling_ae(event)
    try:
        try:
            ds, header = _read_header(event, context)
        except RejectedInstance as exc:
            logger.warning(
                "refused C-STORE %s from %s: 0x%04X %s",
                _command_uid(event),
                calling_ae,
                exc.status,
                exc.reason,
            )
            return Status(exc.status)
        if _refuse_low_disk(context, header.sop_instance_uid, calling_ae):
            return Status.OUT_OF_RESOURCES
        verdict = classify(ds)
        return _persist(event, context, header, verdict, calling_ae)
    except Exception:
        logger.exception("unexpected error storing %s from %s", _command_uid(event), calling_ae)
        return Status.PROCESSING_FAILURE


def _refuse_low_disk(context: ReceiveContext, uid: str, calling_ae: str) -> bool:
    """True (and logged) when the data folder is below ``context.min_free_bytes`` of free space."""
    problem = low_disk(context.files.data_dir, context.min_free_bytes)
    if problem is None:
        return False
    logger.error("refused C-STORE %s from %s: 0xA700 %s", uid, calling_ae, problem)
    return True


def _read_header(event: Event, context: ReceiveContext) -> tuple[Dataset, _Header]:
    """Parse the data set and check its identifying UIDs against the command.

    Raises:
        RejectedInstance: with the status to answer.
    """
    transfer_syntax = UID(event.context.transfer_syntax)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        _check_inflated_size(event, context.max_dataset_bytes)
    try:
        ds = event.dataset
    except Exception as exc:
        raise RejectedInstance(
            Status.CANNOT_UNDERSTAND, f"data set cannot be decoded ({type(exc).__name__})"
        ) from exc
    check_structure(ds, transfer_syntax)

    header = _Header(
        sop_class_uid=_required_uid(ds, "SOPClassUID"),
        sop_instance_uid=_required_uid(ds, "SOPInstanceUID"),
        study_instance_uid=_required_uid(ds, "StudyInstanceUID"),
        series_instance_uid=_required_uid(ds, "SeriesInstanceUID"),
    )
    request = event.request
    command_instance = getattr(request, "AffectedSOPInstanceUID", None)
    command_class = getattr(request, "AffectedSOPClassUID", None)
    if str(command_instance or "") != header.sop_instance_uid:
        raise RejectedInstance(
            Status.MISMATCH, "Affected SOP Instance UID differs from the data set's"
        )
    if str(command_class or "") != header.sop_class_uid:
        raise RejectedInstance(
            Status.MISMATCH, "Affected SOP Class UID differs from the data set's"
        )
    if header.sop_class_uid != str(event.context.abstract_syntax):
        raise RejectedInstance(
            Status.MISMATCH, "SOP Class UID differs from the presentation context's"
        )
    if header.sop_class_uid not in STORAGE_SOP_CLASSES:
        raise RejectedInstance(
            Status.SOP_CLASS_NOT_SUPPORTED, f"SOP class {header.sop_class_uid} is not taken"
        )
    return ds, header


def _check_inflated_size(event: Event, limit: int) -> None:
    """Inflate a deflated data set in bounded steps before pydicom does it unbounded.

    pynetdicom inflates with one ``zlib.decompress`` call, so a few hundred KiB of
    deflated zeros would become gigabytes. Here at most ``limit`` bytes are
    produced and the data set is refused if more would follow.

    Raises:
        RejectedInstance: ``0xC223`` when it inflates past ``limit``, ``0xC210``
            when the deflate stream is corrupt.
    """
    raw = getattr(event.request, "DataSet", None)
    payload: bytes = raw.getvalue() if raw is not None and hasattr(raw, "getvalue") else b""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending: bytes = payload
    total = 0
    try:
        while True:  # bounded: each round consumes input or ends
            total += len(inflater.decompress(pending, _INFLATE_CHUNK))
            if total > limit:
                raise RejectedInstance(
                    Status.DATASET_TOO_LARGE,
                    f"deflated data set of {len(payload)} bytes inflates past max_dataset_bytes ({limit})",
                )
            pending = inflater.unconsumed_tail
            if not pending:
                break
        total += len(inflater.flush())
    except zlib.error as exc:
        raise RejectedInstance(Status.CANNOT_UNDERSTAND, "deflated data set is corrupt") from exc
    if total > limit:
        raise RejectedInstance(
            Status.DATASET_TOO_LARGE,
            f"deflated data set of {len(payload)} bytes inflates past max_dataset_bytes ({limit})",
        )


def _required_uid(ds: Dataset, keyword: str) -> str:
    """A present, single-valued, valid UID attribute.

    Raises:
        RejectedInstance: ``0xC220`` when missing or empty, ``0xC221`` when invalid.
    """
    value: Any = ds.get(keyword)
    if value is None or value == "":
        raise RejectedInstance(Status.MISSING_UID, f"{keyword} is missing")
    if not is_valid_uid(value):
        length = len(value) if isinstance(value, str) else "multi-valued"
        raise RejectedInstance(
            Status.INVALID_UID, f"{keyword} is not a valid UID (length {length})"
        )
    return str(value)


def _persist(
    event: Event, context: ReceiveContext, header: _Header, verdict: Verdict, calling_ae: str
) -> Status:
    """Write the received bytes and record the instance; the status to answer."""
    uid = header.sop_instance_uid
    try:
        with context._locks.hold(uid, context.files.data_dir / LOCK_FOLDER):
            return _persist_locked(event, context, header, verdict, calling_ae)
    except OSError as exc:  # the lock file cannot be created or locked
        logger.error("cannot lock %s from %s: %s", uid, calling_ae, type(exc).__name__)
        return Status.OUT_OF_RESOURCES


def _persist_locked(
    event: Event, context: ReceiveContext, header: _Header, verdict: Verdict, calling_ae: str
) -> Status:
    """:func:`_persist` with the UID's lock held (in this process and across processes)."""
    uid = header.sop_instance_uid
    path = context.files.incoming_path(uid)
    try:
        with context.sessionmaker() as session:
            duplicate = queue.instance_exists(session, uid)
    except (SQLAlchemyError, OSError) as exc:
        logger.error("database unavailable for %s from %s: %s", uid, calling_ae, type(exc).__name__)
        return Status.OUT_OF_RESOURCES
    if duplicate:
        _log_duplicate(event, context, path, uid, calling_ae)
        return Status.SUCCESS

    # The raw bytes as received (no re-encoding), behind a fresh File Meta header.
    parts = _file_parts(event)
    try:
        if not context.files.write_atomic(path, parts, overwrite=False):
            # A file but no row: left by a crash between writing and committing (no
            # receiver is mid-write, we hold the UID's lock). Never acknowledged, so
            # this copy replaces it.
            logger.warning("replacing the unrecorded file of %s left by an earlier crash", uid)
            context.files.write_atomic(path, parts)
    except StorageError as exc:
        logger.error("cannot store %s from %s: %s", uid, calling_ae, exc)
        return Status.OUT_OF_RESOURCES
    finally:
        for part in parts:
            if isinstance(part, memoryview):
                part.release()  # the received buffer is resizable again
        del parts

    accepted = isinstance(verdict, Accept)
    skip_reason = None if isinstance(verdict, Accept) else verdict.reason
    try:
        with context.sessionmaker.begin() as session:
            created = queue.record_instance(
                session,
                study_instance_uid=header.study_instance_uid,
                series_instance_uid=header.series_instance_uid,
                sop_instance_uid=uid,
                sop_class_uid=header.sop_class_uid,
                path=context.files.relative(path),
                state=InstanceState.ACCEPTED if accepted else InstanceState.SKIPPED,
                skip_reason=skip_reason,
                calling_ae_title=calling_ae,
                now=context.clock(),
            )
    except BaseException as exc:
        _discard(context, path, uid)
        if isinstance(exc, SQLAlchemyError | OSError):
            logger.error("cannot record %s from %s: %s", uid, calling_ae, type(exc).__name__)
            return Status.OUT_OF_RESOURCES
        raise

    if not created:
        # A receiver on another host (no shared lock) recorded it between our check and insert.
        logger.info("duplicate %s from %s: recorded concurrently", uid, calling_ae)
    elif accepted:
        logger.info("stored %s from %s", uid, calling_ae)
    else:
        logger.info("stored %s from %s, skipped: %s", uid, calling_ae, skip_reason)
    return Status.SUCCESS


def _file_parts(event: Event) -> list[bytes | memoryview]:
    """The Part-10 file of the received data set as two parts, without copying it:
    preamble + ``DICM`` + a fresh File Meta header (with the node's Implementation Class
    UID and Version Name), then a view of the data set bytes
    exactly as received (what ``event.encoded_dataset()`` joins into one copy)."""
    from pynetdicom.dsutils import encode_file_meta

    meta = event.file_meta
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID  # we write the file, not pynetdicom
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    header = b"\x00" * 128 + b"DICM" + encode_file_meta(meta)
    stream = getattr(event.request, "DataSet", None)
    if isinstance(stream, io.BytesIO):
        return [header, stream.getbuffer()]
    return [header, event.encoded_dataset(include_meta=False)]


def _log_duplicate(
    event: Event, context: ReceiveContext, path: Path, uid: str, calling_ae: str
) -> None:
    """Log and count a repeat of a stored instance (the first copy always wins)."""
    incoming = event.encoded_dataset(include_meta=False)
    try:
        stored = _dataset_part(path.read_bytes())
    except OSError:
        stored = None
    conflicting = stored != incoming
    try:
        duplicates.count_duplicate(
            context.files.data_dir, conflicting=conflicting, now=context.clock()
        )
    except OSError as exc:  # the counts are a report; the store itself succeeded
        logger.error("cannot count the duplicate %s: %s", uid, type(exc).__name__)
    if not conflicting:
        total = context.counters.count(conflicting=False)
        logger.info(
            "duplicate %s from %s: identical to the stored copy, kept the first (%d since start)",
            uid,
            calling_ae,
            total,
        )
        return
    total = context.counters.count(conflicting=True)
    logger.warning(
        "duplicate %s from %s with DIFFERENT content (%d bytes, stored copy %s bytes): "
        "kept the first copy (%d conflicting duplicates since start)",
        uid,
        calling_ae,
        len(incoming),
        "unreadable" if stored is None else len(stored),
        total,
    )


def _dataset_part(raw: bytes) -> bytes | None:
    """The data set bytes of a Part-10 file we wrote (after preamble and File Meta)."""
    if len(raw) < 144 or raw[128:132] != b"DICM" or raw[132:136] != b"\x02\x00\x00\x00":
        return None
    (group_length,) = struct.unpack_from("<I", raw, 140)
    return raw[144 + group_length :]


def _discard(context: ReceiveContext, path: Path, uid: str) -> None:
    """Remove a file whose database record failed, unless the instance is known after all."""
    try:
        with context.sessionmaker() as session:
            if queue.instance_exists(session, uid):
                return
    except (SQLAlchemyError, OSError):
        pass  # cannot tell: an unrecorded file must not stay
    try:
        context.files.remove(path)
    except (StorageError, OSError) as exc:
        logger.error("cannot remove unrecorded file for %s: %s", uid, type(exc).__name__)


def _calling_ae(event: Event) -> str:
    """The peer's calling AE title, printable and at most 16 characters."""
    try:
        return safe_text(str(event.assoc.requestor.ae_title).strip(), limit=16)
    except Exception:  # noqa: BLE001 - logging aid only
        return "?"


def _command_uid(event: Event) -> str:
    """The command's Affected SOP Instance UID, sanitised for logs."""
    value = getattr(event.request, "AffectedSOPInstanceUID", None)
    return safe_text(value, limit=64) if value else "?"
