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

The handler reads as three steps:

1. **inspect** (:func:`_inspect`): the header only, through
   :mod:`~dicomnode.receiving.validation` (which headers are refused, with which
   status, and which are stored but skipped); nothing is written.
2. **persist** (:func:`_persist`): under the UID's lock
   (:meth:`~dicomnode.store.files.FileStore.lock_instance`), the Part-10 file
   (:func:`~dicomnode.store.files.part10_header`, then the data set bytes as received)
   is written, fsynced and linked into place (its folder fsynced), then the instance
   is recorded in one committed transaction (SQLite: ``synchronous=FULL``, queued
   behind the other receivers' on :meth:`~dicomnode.store.files.FileStore.lock_database_writes`).
3. **answer** (:func:`_answer`): the status, counted in the metrics.

Between inspect and persist, :func:`_check_resources` may refuse an instance
before anything is written (the hook for resource checks such as free disk space).

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

import io
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import metrics
from dicomnode.domain import InstanceState
from dicomnode.errors import RejectedInstance, StorageError
from dicomnode.receiving.statuses import Status
from dicomnode.receiving.validation import (
    Accept,
    InstanceHeader,
    Verdict,
    check_command,
    check_inflated_size,
    classify,
    read_header,
    safe_text,
)
from dicomnode.store import duplicates, queue
from dicomnode.store.db import READ_ONLY
from dicomnode.store.files import FileStore, part10_dataset, part10_header
from dicomnode.store.space import low_disk
from dicomnode.uid import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

if TYPE_CHECKING:
    from pynetdicom.events import Event

logger = logging.getLogger(__name__)

#: Default for ``ReceiveContext.max_dataset_bytes`` (``DicomSettings.max_dataset_bytes``).
DEFAULT_MAX_DATASET_BYTES: Final = 256 * 1024 * 1024


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
        files: the data folder where received Part-10 files are written (it also
            holds the per-UID locks).
        sessionmaker: factory of database sessions (``store.db.make_sessionmaker``).
        clock: current time as naive UTC (the database convention), injectable for tests.
        max_dataset_bytes: largest data set taken, after inflating a deflated one
            (``start_scp`` sets it from ``DicomSettings.max_dataset_bytes``).
        counters: duplicate counts of this process.
        min_free_bytes: below this much free space in the data folder every C-STORE is
            answered 0xA700 and nothing is written (``store.min_free_bytes``; 0 = off).
        queue_writes: queue the instance-recording transactions of every receiver on
            the data folder on a lock (:meth:`FileStore.lock_database_writes`) instead
            of SQLite's sleeping busy handler; True for SQLite, False for PostgreSQL
            (row locks, concurrent commits).
    """

    files: FileStore
    sessionmaker: sessionmaker[Session]
    clock: Callable[[], datetime] = queue.utcnow
    max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES
    min_free_bytes: int = 0
    queue_writes: bool = True
    counters: ReceiveCounters = field(default_factory=ReceiveCounters, compare=False)


@dataclass(frozen=True)
class _Inspected:
    """What :func:`_inspect` learnt from a received data set's header."""

    header: InstanceHeader
    verdict: Verdict


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
    """Inspect, persist and answer one received instance; return its DIMSE status.

    Bound as ``(evt.EVT_C_STORE, handle_store, [context])``. Never raises: every
    failure becomes a status (see the module docstring table).

    Args:
        event: pynetdicom ``EVT_C_STORE`` event (request, context, association).
        context: the data folder, session factory and clock.

    Returns:
        The DIMSE status: ``0x0000`` once the file is durable and recorded (also for
        skipped instances and duplicates), otherwise a failure status.
    """
    calling_ae = _calling_ae(event)
    try:
        try:
            inspected = _inspect(event, context)
        except RejectedInstance as exc:
            logger.warning(
                "refused C-STORE %s from %s: 0x%04X %s",
                _command_uid(event),
                calling_ae,
                exc.status,
                exc.reason,
            )
            return _answer(Status(exc.status))
        refusal = _check_resources(context, inspected.header, calling_ae)
        if refusal is not None:
            return _answer(refusal)
        return _answer(_persist(event, context, inspected, calling_ae))
    except Exception:
        logger.exception("unexpected error storing %s from %s", _command_uid(event), calling_ae)
        return _answer(Status.PROCESSING_FAILURE)


def _inspect(event: Event, context: ReceiveContext) -> _Inspected:
    """Step 1: read the header (never the pixels) and decide what to do with it.

    Raises:
        RejectedInstance: with the status to answer; nothing is written.
    """
    transfer_syntax = UID(event.context.transfer_syntax)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        raw = getattr(event.request, "DataSet", None)
        payload: bytes = raw.getvalue() if raw is not None and hasattr(raw, "getvalue") else b""
        check_inflated_size(payload, context.max_dataset_bytes)
    try:
        ds: Dataset = event.dataset
    except Exception as exc:
        raise RejectedInstance(
            Status.CANNOT_UNDERSTAND, f"data set cannot be decoded ({type(exc).__name__})"
        ) from exc
    header = read_header(ds, transfer_syntax)
    check_command(
        header,
        command_sop_class_uid=getattr(event.request, "AffectedSOPClassUID", None),
        command_sop_instance_uid=getattr(event.request, "AffectedSOPInstanceUID", None),
        context_sop_class_uid=event.context.abstract_syntax,
    )
    return _Inspected(header=header, verdict=classify(ds))


def _check_resources(
    context: ReceiveContext, header: InstanceHeader, calling_ae: str
) -> Status | None:
    """Hook between inspect and persist: a status that refuses the instance before
    anything is written, or None to go on.

    ``0xA700`` (Out of Resources) when the data folder has less than
    ``store.min_free_bytes`` free (logged with the reason, no patient data).
    """
    problem = low_disk(context.files.data_dir, context.min_free_bytes)
    if problem is None:
        return None
    logger.error("refused C-STORE %s from %s: 0xA700 %s", header.sop_instance_uid, calling_ae, problem)
    return Status.OUT_OF_RESOURCES


def _answer(status: Status) -> Status:
    """Step 3: count the status in the metrics and hand it to pynetdicom."""
    metrics.count_cstore_status(status)
    return status


def _persist(
    event: Event, context: ReceiveContext, inspected: _Inspected, calling_ae: str
) -> Status:
    """Step 2: write the received bytes and record the instance; the status to answer."""
    uid = inspected.header.sop_instance_uid
    try:
        with context.files.lock_instance(uid):
            return _persist_locked(event, context, inspected, calling_ae)
    except OSError as exc:  # the lock file cannot be created or locked
        logger.error("cannot lock %s from %s: %s", uid, calling_ae, type(exc).__name__)
        return Status.OUT_OF_RESOURCES


def _persist_locked(
    event: Event, context: ReceiveContext, inspected: _Inspected, calling_ae: str
) -> Status:
    """:func:`_persist` with the UID's lock held (in this process and across processes)."""
    header = inspected.header
    uid = header.sop_instance_uid
    path = context.files.incoming_path(uid)
    try:
        with context.sessionmaker() as session:
            session.connection(execution_options=READ_ONLY)  # no write lock for a look-up
            duplicate = queue.instance_exists(session, uid)
    except (SQLAlchemyError, OSError) as exc:
        logger.error("database unavailable for %s from %s: %s", uid, calling_ae, type(exc).__name__)
        return Status.OUT_OF_RESOURCES
    if duplicate:
        _log_duplicate(event, context, path, uid, calling_ae)
        return Status.SUCCESS

    # The raw bytes as received (no re-encoding), behind a fresh File Meta header.
    parts = _file_parts(event, header)
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

    verdict = inspected.verdict
    accepted = isinstance(verdict, Accept)
    skip_reason = None if isinstance(verdict, Accept) else verdict.reason
    relative = context.files.relative(path)
    try:
        with _writing(context), context.sessionmaker.begin() as session:
            created = queue.record_instance(
                session,
                study_instance_uid=header.study_instance_uid,
                series_instance_uid=header.series_instance_uid,
                sop_instance_uid=uid,
                sop_class_uid=header.sop_class_uid,
                path=relative,
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


def _writing(context: ReceiveContext) -> AbstractContextManager[None]:
    """The database-writers lock when ``context.queue_writes``, else nothing."""
    return context.files.lock_database_writes() if context.queue_writes else nullcontext()


def _file_parts(event: Event, header: InstanceHeader) -> list[bytes | memoryview]:
    """The Part-10 file of the received data set, without copying it: a fresh File Meta
    header (:func:`~dicomnode.store.files.part10_header`: the node's Implementation
    Class UID and Version Name, the data set's SOP Class and Instance UIDs, which
    :func:`~dicomnode.receiving.validation.check_command` found equal to the command's,
    and the context's transfer syntax), then a view of the data set bytes exactly as
    received (what ``event.encoded_dataset()`` joins into one copy)."""
    meta = part10_header(
        sop_class_uid=header.sop_class_uid,
        sop_instance_uid=header.sop_instance_uid,
        transfer_syntax_uid=str(event.context.transfer_syntax),
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
    )
    stream = getattr(event.request, "DataSet", None)
    if isinstance(stream, io.BytesIO):
        return [meta, stream.getbuffer()]
    return [meta, event.encoded_dataset(include_meta=False)]


def _log_duplicate(
    event: Event, context: ReceiveContext, path: Path, uid: str, calling_ae: str
) -> None:
    """Log and count a repeat of a stored instance (the first copy always wins)."""
    incoming = event.encoded_dataset(include_meta=False)
    try:
        stored = part10_dataset(path.read_bytes())
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
