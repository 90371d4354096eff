"""Remove the files of finished studies, keep their rows (``dicomnode purge``, ``store.retention``).

A study's files (received instances and produced SC/SR objects) may go when all of
its work is over and its results reached the destination:

- every job of the study is SENT or SKIPPED (or DONE, when no destination is
  configured: its results stay in the outbox and nothing will send them);
- no result of the study is FAILED, nor PENDING while a destination is configured;
- nothing happened to it (instance received, job finished, result sent) for
  ``older_than``.

Jobs that are received, ready, running or failed, and sends that are pending or
failed, keep the whole study's files. The rows stay (the page, API, ``results``
and metrics still show the study); ``study.files_purged_at`` records when the
files went. The time is set in the same transaction that picks the studies, and
the files are removed after it commits, so a job claimed later does not read a
removed file: :func:`dicomnode.store.queue.claim_batch` leaves out instances
received before ``files_purged_at``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from dicomnode.domain import JobState, OutboxState
from dicomnode.errors import StorageError
from dicomnode.store.files import FileStore
from dicomnode.store.models import Job, Study

__all__ = ["PurgeCandidate", "find_purgeable", "purge"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgeCandidate:
    """A study whose files may be removed.

    Attributes:
        study_instance_uid: the study.
        last_activity: naive UTC time of its last received instance, finished job or sent result.
        paths: its files, relative to the data folder (received and produced).
        size_bytes: their total size in bytes (files already missing count 0).
    """

    study_instance_uid: str
    last_activity: datetime
    paths: tuple[str, ...]
    size_bytes: int


def _finished_states(delivered_only: bool) -> frozenset[JobState]:
    states = {JobState.SENT, JobState.SKIPPED}
    if not delivered_only:
        states.add(JobState.DONE)
    return frozenset(states)


def _blocking_results(delivered_only: bool) -> frozenset[OutboxState]:
    return frozenset({OutboxState.FAILED, OutboxState.PENDING} if delivered_only else {OutboxState.FAILED})


def _last_activity(study: Study, jobs: Sequence[Job]) -> datetime:
    moments = [study.last_received_at]
    moments += [j.finished_at for j in jobs if j.finished_at is not None]
    moments += [r.sent_at for j in jobs for r in j.results if r.sent_at is not None]
    return max(moments)


def _size(files: FileStore, relative: str) -> int:
    try:
        return files.absolute(relative).stat().st_size
    except (OSError, StorageError):
        return 0


def find_purgeable(
    session: Session,
    files: FileStore,
    *,
    older_than: timedelta,
    now: datetime,
    delivered_only: bool,
    limit: int | None = None,
) -> list[PurgeCandidate]:
    """The studies whose files may be removed now (see the module docstring), oldest first.

    Args:
        session: open session.
        files: the data folder (file sizes are read from it).
        older_than: minimum quiet time of a study.
        now: naive UTC.
        delivered_only: True when a destination is configured: only delivered results count.
        limit: at most this many studies (None: all).
    """
    cutoff = now - older_than
    finished = _finished_states(delivered_only)
    blocking = _blocking_results(delivered_only)
    studies = session.scalars(
        select(Study)
        .where(Study.files_purged_at.is_(None), Study.last_received_at <= cutoff)
        .order_by(Study.last_received_at, Study.study_instance_uid)
    ).all()
    found: list[PurgeCandidate] = []
    for study in studies:
        jobs = session.scalars(
            select(Job)
            .where(Job.study_instance_uid == study.study_instance_uid)
            .options(selectinload(Job.results), selectinload(Job.instances))
            .order_by(Job.id)
        ).all()
        if not jobs or any(j.state not in finished for j in jobs):
            continue
        if any(r.state in blocking for j in jobs for r in j.results):
            continue
        last = _last_activity(study, jobs)
        if last > cutoff:
            continue
        paths = tuple(dict.fromkeys([i.path for j in jobs for i in j.instances] + [r.path for j in jobs for r in j.results]))
        found.append(PurgeCandidate(study.study_instance_uid, last, paths, sum(_size(files, p) for p in paths)))
        if limit is not None and len(found) >= limit:
            break
    return found


def purge(
    sessions: sessionmaker[Session],
    files: FileStore,
    *,
    older_than: timedelta,
    now: datetime,
    delivered_only: bool,
    limit: int | None = None,
) -> list[PurgeCandidate]:
    """Mark the purgeable studies (``files_purged_at = now``) in one transaction, then remove their files.

    Args:
        sessions: session factory of the queue database.
        files: the data folder.
        older_than: minimum quiet time of a study.
        now: naive UTC.
        delivered_only: True when a destination is configured.
        limit: at most this many studies per call (None: all).

    Returns:
        the studies whose files were removed, with what was removed.
    """
    with sessions.begin() as session:
        chosen = find_purgeable(
            session, files, older_than=older_than, now=now, delivered_only=delivered_only, limit=limit
        )
        for candidate in chosen:
            study = session.get(Study, candidate.study_instance_uid)
            if study is not None:
                study.files_purged_at = now
    for candidate in chosen:
        for relative in candidate.paths:
            try:
                files.remove(files.absolute(relative))
            except (OSError, StorageError) as exc:
                logger.warning("purge: cannot remove %s of study %s: %s", relative, candidate.study_instance_uid, exc)
        logger.info("purged %d file(s), %d bytes, of study %s",
                    len(candidate.paths), candidate.size_bytes, candidate.study_instance_uid)
    return chosen
