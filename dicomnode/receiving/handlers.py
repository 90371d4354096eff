"""C-STORE and C-ECHO handlers: validate the header, persist the file, queue it, answer.

pynetdicom calls these in the association's thread, so they do only cheap work:
no pixel decoding and never inference. Each step's failure maps to one DIMSE status
(STYLE.md section 6):

====================================================  =======================================
what happened                                         status
====================================================  =======================================
data set cannot be parsed / broken encapsulation      0xC210 cannot understand
native pixel data length does not fit the dimensions  0xC222 cannot understand
SOP Instance/Class, Study or Series UID missing       0xC220 cannot understand
one of those UIDs is not a valid UID                  0xC221 cannot understand
command UIDs differ from the data set's               0xA900 data set does not match SOP class
SOP class of the data set is not one we take          0x0122 SOP class not supported
not a chest / not usable (``validation.classify``)    0x0000, stored, Instance row SKIPPED
file or database write fails                          0xA700 out of resources, file removed
same SOP Instance UID again                           0x0000, first copy kept, nothing changes
unexpected error in this module                       0x0110 processing failure
====================================================  =======================================

Only an instance that is on disk (fsynced, renamed) and recorded in a committed
transaction is answered 0x0000. Logs carry the SOP Instance UID and the calling AE
title, never patient data.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.domain import InstanceState
from dicomnode.errors import RejectedInstance, StorageError
from dicomnode.receiving.validation import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_INVALID_UID,
    STATUS_MISMATCH,
    STATUS_MISSING_UID,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SOP_CLASS_NOT_SUPPORTED,
    STORAGE_SOP_CLASSES,
    Accept,
    Verdict,
    check_structure,
    classify,
    is_valid_uid,
    safe_text,
)
from dicomnode.store import queue
from dicomnode.store.files import FileStore

if TYPE_CHECKING:
    from pynetdicom.events import Event

logger = logging.getLogger(__name__)

STATUS_SUCCESS: Final = 0x0000
STATUS_PROCESSING_FAILURE: Final = 0x0110
_LOCK_STRIPES: Final = 64


class _UidLocks:
    """Striped locks so that two associations storing the same SOP Instance UID at
    once are serialised (check-duplicate -> write -> record is then atomic per UID
    within this process)."""

    def __init__(self, stripes: int = _LOCK_STRIPES) -> None:
        self._locks = tuple(threading.Lock() for _ in range(stripes))

    def for_uid(self, uid: str) -> threading.Lock:
        return self._locks[zlib.crc32(uid.encode("ascii", "replace")) % len(self._locks)]


@dataclass(frozen=True)
class ReceiveContext:
    """What the C-STORE handler needs, built once by ``serve`` and passed to the SCP.

    Attributes:
        files: the data folder where received Part-10 files are written.
        sessionmaker: factory of database sessions (``store.db.make_sessionmaker``).
        clock: current time as naive UTC (the database convention), injectable for tests.
    """

    files: FileStore
    sessionmaker: sessionmaker[Session]
    clock: Callable[[], datetime] = queue.utcnow
    _locks: _UidLocks = field(default_factory=_UidLocks, repr=False, compare=False)


@dataclass(frozen=True)
class _Header:
    """The few header values the handler needs, validated."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str


def handle_echo(event: Event) -> int:
    """Answer a C-ECHO (Verification) with success.

    Args:
        event: pynetdicom ``EVT_C_ECHO`` event.

    Returns:
        ``0x0000``.
    """
    logger.debug("C-ECHO from %s", _calling_ae(event))
    return STATUS_SUCCESS


def handle_store(event: Event, context: ReceiveContext) -> int:
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
    calling_ae = _calling_ae(event)
    try:
        try:
            ds, header = _read_header(event)
        except RejectedInstance as exc:
            logger.warning(
                "refused C-STORE %s from %s: 0x%04X %s",
                _command_uid(event),
                calling_ae,
                exc.status,
                exc.reason,
            )
            return exc.status
        verdict = classify(ds)
        return _persist(event, context, header, verdict, calling_ae)
    except Exception:
        logger.exception("unexpected error storing %s from %s", _command_uid(event), calling_ae)
        return STATUS_PROCESSING_FAILURE


def _read_header(event: Event) -> tuple[Dataset, _Header]:
    """Parse the data set and check its identifying UIDs against the command.

    Raises:
        RejectedInstance: with the status to answer.
    """
    try:
        ds = event.dataset
    except Exception as exc:
        raise RejectedInstance(
            STATUS_CANNOT_UNDERSTAND, f"data set cannot be decoded ({type(exc).__name__})"
        ) from exc
    check_structure(ds, UID(event.context.transfer_syntax))

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
            STATUS_MISMATCH, "Affected SOP Instance UID differs from the data set's"
        )
    if str(command_class or "") != header.sop_class_uid:
        raise RejectedInstance(
            STATUS_MISMATCH, "Affected SOP Class UID differs from the data set's"
        )
    if header.sop_class_uid != str(event.context.abstract_syntax):
        raise RejectedInstance(
            STATUS_MISMATCH, "SOP Class UID differs from the presentation context's"
        )
    if header.sop_class_uid not in STORAGE_SOP_CLASSES:
        raise RejectedInstance(
            STATUS_SOP_CLASS_NOT_SUPPORTED, f"SOP class {header.sop_class_uid} is not taken"
        )
    return ds, header


def _required_uid(ds: Dataset, keyword: str) -> str:
    """A present, single-valued, valid UID attribute.

    Raises:
        RejectedInstance: ``0xC220`` when missing or empty, ``0xC221`` when invalid.
    """
    value: Any = ds.get(keyword)
    if value is None or value == "":
        raise RejectedInstance(STATUS_MISSING_UID, f"{keyword} is missing")
    if not is_valid_uid(value):
        length = len(value) if isinstance(value, str) else "multi-valued"
        raise RejectedInstance(
            STATUS_INVALID_UID, f"{keyword} is not a valid UID (length {length})"
        )
    return str(value)


def _persist(
    event: Event, context: ReceiveContext, header: _Header, verdict: Verdict, calling_ae: str
) -> int:
    """Write the received bytes and record the instance; the status to answer."""
    uid = header.sop_instance_uid
    path = context.files.incoming_path(uid)
    with context._locks.for_uid(uid):
        try:
            with context.sessionmaker() as session:
                duplicate = queue.instance_exists(session, uid)
        except (SQLAlchemyError, OSError) as exc:
            logger.error(
                "database unavailable for %s from %s: %s", uid, calling_ae, type(exc).__name__
            )
            return STATUS_OUT_OF_RESOURCES
        if duplicate:
            logger.info(
                "duplicate %s from %s: already stored, kept the first copy", uid, calling_ae
            )
            return STATUS_SUCCESS

        # The raw bytes as received (no re-encoding), behind a fresh File Meta header.
        data = event.encoded_dataset(include_meta=True)
        try:
            context.files.write_atomic(path, data)
        except StorageError as exc:
            logger.error("cannot store %s from %s: %s", uid, calling_ae, exc)
            return STATUS_OUT_OF_RESOURCES
        del data

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
                return STATUS_OUT_OF_RESOURCES
            raise

    if not created:
        # Another process recorded the same UID between our check and our insert.
        logger.info("duplicate %s from %s: recorded concurrently", uid, calling_ae)
    elif accepted:
        logger.info("stored %s from %s", uid, calling_ae)
    else:
        logger.info("stored %s from %s, skipped: %s", uid, calling_ae, skip_reason)
    return STATUS_SUCCESS


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
