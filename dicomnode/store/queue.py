"""Transactional queue operations on the database rows.

Every function takes an open ``Session`` and never commits: callers wrap a unit of
work in ``with sessionmaker.begin() as session:``. SQLite transactions begin
IMMEDIATE (see ``db.py``) and PostgreSQL claims use ``FOR UPDATE SKIP LOCKED``,
so several workers can share one database. Times are naive UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, Table, bindparam, exists, func, insert, select, update
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.util import identity_key

from dicomnode.domain import (
    ClaimedInstance,
    ClaimedJob,
    InstanceState,
    JobState,
    NewFinding,
    NewResult,
    NotAssessedReason,
    OutboxState,
    PriorResult,
    RefusedInstance,
    ResultKind,
)
from dicomnode.phi import redact
from dicomnode.store.models import Finding, Instance, Job, Result, Study

#: Jobs that may still take new instances of their study.
_OPEN_STATES = (JobState.RECEIVED, JobState.READY)


def utcnow() -> datetime:
    """Current time as naive UTC (how the database stores times)."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class OutboxItem:
    """A result waiting to be sent."""

    result_id: int
    job_id: int
    kind: ResultKind
    sop_instance_uid: str
    path: str
    attempts: int


@dataclass(frozen=True)
class StatusSummary:
    """What ``dicomnode status`` shows."""

    jobs: dict[str, int]
    instances: dict[str, int]
    results: dict[str, int]
    pending_sends: list[dict[str, object]] = field(default_factory=list)
    recent_failures: list[dict[str, object]] = field(default_factory=list)
    recent_skips: list[dict[str, object]] = field(default_factory=list)
    skipped_studies: list[dict[str, object]] = field(default_factory=list)
    #: Repeated SOP Instance UIDs (``store.duplicates.DuplicateCounts`` as a dict), filled
    #: by the CLI from the data folder.
    duplicates: dict[str, object] = field(default_factory=dict)


def instance_exists(session: Session, sop_instance_uid: str) -> bool:
    """True when an instance with this SOP Instance UID was already recorded.

    One indexed ``SELECT`` (SQLAlchemy Core; no ORM object is loaded).
    """
    return session.execute(_INSTANCE_EXISTS, {"uid": sop_instance_uid}).first() is not None


def open_job(session: Session, study_instance_uid: str) -> Job | None:
    """The study's newest job still waiting to be claimed (RECEIVED or READY), if any."""
    return session.scalars(_newest_open_job(Job), {"uid": study_instance_uid}).first()


def _newest_open_job(*columns: Any) -> Select[Any]:
    """``SELECT columns`` of the newest RECEIVED or READY job of study ``:uid``."""
    return (
        select(*columns)
        .where(Job.study_instance_uid == bindparam("uid"), Job.state.in_(_OPEN_STATES))
        .order_by(Job.id.desc())
        .limit(1)
    )


_STUDY: Table = Study.__table__  # type: ignore[assignment]  # a Table at run time
_JOB: Table = Job.__table__  # type: ignore[assignment]
_INSTANCE: Table = Instance.__table__  # type: ignore[assignment]
# Core statements of record_instance, built once (SQLAlchemy caches their compiled form).
_INSTANCE_EXISTS = select(_INSTANCE.c.sop_instance_uid).where(
    _INSTANCE.c.sop_instance_uid == bindparam("uid")
)
_TOUCH_STUDY = (
    update(_STUDY)
    .where(_STUDY.c.study_instance_uid == bindparam("uid"))
    .values(last_received_at=bindparam("now"))
)
_NEW_STUDY = insert(_STUDY).values(
    study_instance_uid=bindparam("uid"),
    first_received_at=bindparam("now"),
    last_received_at=bindparam("now"),
)
_OPEN_JOB_ID = _newest_open_job(_JOB.c.id)
_TOUCH_JOB = (
    update(_JOB)
    .where(_JOB.c.id == bindparam("job_id"))
    .values(state=JobState.RECEIVED, last_instance_at=bindparam("now"), ready_at=None)
)
_NEW_JOB = insert(_JOB).values(
    study_instance_uid=bindparam("uid"),
    state=JobState.RECEIVED,
    attempts=0,
    created_at=bindparam("now"),
    last_instance_at=bindparam("now"),
)


def record_instance(
    session: Session,
    *,
    study_instance_uid: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    sop_class_uid: str,
    path: str,
    state: InstanceState,
    skip_reason: str | None,
    calling_ae_title: str,
    now: datetime,
) -> bool:
    """Record a received instance and attach it to its study's open job.

    The open job is the study's RECEIVED or READY job; a READY job goes back to
    RECEIVED so the study's quiet period starts again. When the study has no open
    job (none yet, or the last one was claimed already) a new RECEIVED job is made.

    Runs as five or six SQLAlchemy Core statements (no ORM unit of work: this is the
    receiver's per-instance cost); study or job objects this session already holds
    are expired, so the ORM reads the new values afterwards.

    Returns:
        True when recorded; False when the SOP Instance UID is already known
        (a duplicate: nothing changes, one instance, one result set).
    """
    if instance_exists(session, sop_instance_uid):  # autoflushes the session's pending changes
        return False
    connection = session.connection()
    study = {"uid": study_instance_uid, "now": now}
    if connection.execute(_TOUCH_STUDY, study).rowcount == 0:
        connection.execute(_NEW_STUDY, study)
    job_id = connection.execute(_OPEN_JOB_ID, {"uid": study_instance_uid}).scalar()
    if job_id is None:
        inserted = connection.execute(_NEW_JOB, study).inserted_primary_key
        job_id = int(inserted[0]) if inserted is not None else None
        if job_id is None:  # pragma: no cover - every supported dialect returns the key
            raise RuntimeError("the database did not return the new job's id")
    else:
        connection.execute(_TOUCH_JOB, {"job_id": job_id, "now": now})
    connection.execute(
        insert(_INSTANCE),
        {
            "sop_instance_uid": sop_instance_uid,
            "study_instance_uid": study_instance_uid,
            "series_instance_uid": series_instance_uid,
            "sop_class_uid": sop_class_uid,
            "path": path,
            "state": state,
            "skip_reason": skip_reason,
            "calling_ae_title": calling_ae_title,
            "received_at": now,
            "job_id": job_id,
        },
    )
    _expire_cached(session, (Study, study_instance_uid), (Job, job_id))
    return True


def _expire_cached(session: Session, *keys: tuple[type, object]) -> None:
    """Expire the ORM objects of these (model, primary key) rows if the session holds them
    (they were changed by Core statements behind the ORM's back)."""
    for model, key in keys:
        cached = session.identity_map.get(identity_key(model, key))
        if cached is not None:
            session.expire(cached)


def mark_stable(session: Session, *, stable_after_s: float, now: datetime) -> list[int]:
    """Move RECEIVED jobs quiet for ``stable_after_s`` seconds to READY.

    A job with no accepted instance goes to SKIPPED instead (its instances' skip
    reasons say why).

    Returns:
        ids of the jobs that became READY.
    """
    cutoff = now - timedelta(seconds=stable_after_s)
    jobs = session.scalars(
        select(Job).where(Job.state == JobState.RECEIVED, Job.last_instance_at <= cutoff).order_by(Job.id)
    ).all()
    ready: list[int] = []
    for job in jobs:
        accepted = session.scalar(
            select(func.count())
            .select_from(Instance)
            .where(Instance.job_id == job.id, Instance.state == InstanceState.ACCEPTED)
        )
        if accepted:
            job.state = JobState.READY
            job.ready_at = now
            ready.append(job.id)
        else:
            job.state = JobState.SKIPPED
            job.last_error = "no usable chest radiograph in the study"
            job.finished_at = now
    return ready


def requeue_expired(session: Session, *, lease_s: float, now: datetime) -> int:
    """Return RUNNING jobs whose lease expired (a crashed worker) to READY.

    Returns:
        how many jobs were re-queued.
    """
    cutoff = now - timedelta(seconds=lease_s)
    result = session.execute(
        update(Job)
        .where(Job.state == JobState.RUNNING, Job.claimed_at < cutoff)
        .values(state=JobState.READY, claimed_at=None, claimed_by=None, last_error="lease expired; re-queued")
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def requeue_orphaned(session: Session, *, host: str, is_alive: Callable[[int], bool]) -> int:
    """Return RUNNING jobs claimed by dead processes of ``host`` to READY at once.

    Claims are tagged ``"<host>:<pid>"``. A worker that restarts after a crash need
    not wait for the lease of its predecessor's claims to expire; claims of other
    hosts (or of live processes) are left to the lease.

    Returns:
        how many jobs were re-queued.
    """
    jobs = session.scalars(
        select(Job).where(Job.state == JobState.RUNNING, Job.claimed_by.like(f"{host}:%"))
    ).all()
    count = 0
    for job in jobs:
        pid_text = (job.claimed_by or "").rpartition(":")[2]
        if pid_text.isdigit() and not is_alive(int(pid_text)):
            job.state = JobState.READY
            job.claimed_at = None
            job.claimed_by = None
            job.last_error = "worker process died; re-queued"
            count += 1
    return count


def skip_reason_text(reason: NotAssessedReason, detail: str) -> str:
    """The Instance.skip_reason recorded by the batch: ``"<reason>: <detail>"``."""
    return f"{reason.value}: {detail}"


def parse_skip_reason(text: str | None) -> tuple[NotAssessedReason, str]:
    """Inverse of :func:`skip_reason_text`; any other text is a receive-time header refusal."""
    value = text or ""
    head, sep, rest = value.partition(": ")
    if sep:
        try:
            return NotAssessedReason(head), rest
        except ValueError:
            pass
    return NotAssessedReason.HEADER_NOT_ACCEPTED, value


def claim_batch(session: Session, *, limit: int, now: datetime, worker: str) -> list[ClaimedJob]:
    """Atomically claim up to ``limit`` READY jobs (oldest first) for ``worker``.

    Jobs whose retry time (``not_before``) lies in the future are left alone, and so are
    jobs of a study whose earlier job is still READY or RUNNING (the later job must see
    the earlier one's results to supersede them).
    """
    earlier = aliased(Job)
    query = (
        select(Job)
        .where(Job.state == JobState.READY, (Job.not_before.is_(None)) | (Job.not_before <= now))
        .where(
            ~exists().where(
                earlier.study_instance_uid == Job.study_instance_uid,
                earlier.id < Job.id,
                earlier.state.in_((JobState.READY, JobState.RUNNING)),
            )
        )
        .order_by(Job.ready_at, Job.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    claimed: list[ClaimedJob] = []
    for job in session.scalars(query).all():
        job.state = JobState.RUNNING
        job.claimed_at = now
        job.claimed_by = worker
        claimed.append(_claimed_job(session, job, now))
    session.flush()
    return claimed


def _claimed_job(session: Session, job: Job, now: datetime) -> ClaimedJob:
    """The whole study as of now: its instances (all jobs) and its latest findings SR."""
    rows = session.scalars(
        select(Instance)
        .where(Instance.study_instance_uid == job.study_instance_uid, Instance.job_id <= job.id)
        .order_by(Instance.received_at, Instance.sop_instance_uid)
    ).all()
    study = session.get(Study, job.study_instance_uid)
    if study is not None and study.files_purged_at is not None:  # their files were removed (store.purge)
        rows = [i for i in rows if i.received_at > study.files_purged_at]
    accepted = tuple(ClaimedInstance(i.sop_instance_uid, i.path) for i in rows if i.state == InstanceState.ACCEPTED)
    refused = tuple(
        RefusedInstance(i.sop_instance_uid, i.sop_class_uid, i.series_instance_uid, i.path, *parse_skip_reason(i.skip_reason))
        for i in rows
        if i.state == InstanceState.SKIPPED
    )
    prior = session.scalars(
        select(Result)
        .join(Job, Result.job_id == Job.id)
        .where(
            Job.study_instance_uid == job.study_instance_uid,
            Job.id < job.id,
            Result.kind == ResultKind.FINDINGS_SR,
        )
        .order_by(Result.id.desc())
        .limit(1)
    ).first()
    return ClaimedJob(
        job_id=job.id,
        study_instance_uid=job.study_instance_uid,
        claimed_at=now,
        instances=accepted,
        refused=refused,
        predecessor=PriorResult(prior.sop_instance_uid, prior.sop_class_uid, prior.path) if prior else None,
    )


def _owned_running_job(session: Session, claim: ClaimedJob) -> Job | None:
    job = session.get(Job, claim.job_id)
    if job is None or job.state != JobState.RUNNING or job.claimed_at != claim.claimed_at:
        return None
    return job


def recorded_result_uids(session: Session, sop_instance_uids: Sequence[str]) -> set[str]:
    """Which of these SOP Instance UIDs already have a Result row (of any job)."""
    if not sop_instance_uids:
        return set()
    return set(session.scalars(select(Result.sop_instance_uid).where(Result.sop_instance_uid.in_(list(sop_instance_uids)))).all())


def complete_job(
    session: Session,
    claim: ClaimedJob,
    results: Sequence[NewResult],
    *,
    now: datetime,
    skip_reason: str | None = None,
    findings: Sequence[NewFinding] = (),
) -> bool:
    """Record a claimed job's results (outbox rows) and findings, and mark it DONE.

    Args:
        session: open transaction.
        claim: the job as claimed.
        results: produced objects, already written.
        now: naive UTC.
        skip_reason: why the job produced nothing (it becomes SKIPPED).
        findings: per image and label what the job concluded (``finding`` rows).

    A result whose SOP Instance UID an earlier job already recorded (a heatmap SC of an
    image re-analysed for a superseding report: same content, same UID) is not recorded
    again. No results: the job becomes SKIPPED with ``skip_reason``.

    Returns:
        False when the claim is no longer ours (the lease expired and the job was
        re-queued or re-claimed): nothing is recorded, so results exist once.
    """
    job = _owned_running_job(session, claim)
    if job is None:
        return False
    known = recorded_result_uids(session, [r.sop_instance_uid for r in results])
    for item in results:
        if item.sop_instance_uid in known:
            continue
        session.add(
            Result(
                job_id=job.id,
                kind=item.kind,
                sop_instance_uid=item.sop_instance_uid,
                sop_class_uid=item.sop_class_uid,
                path=item.path,
                state=OutboxState.PENDING,
                created_at=now,
                next_attempt_at=now,
            )
        )
    for finding in findings:
        session.add(
            Finding(
                job_id=job.id,
                study_instance_uid=job.study_instance_uid,
                sop_instance_uid=finding.sop_instance_uid,
                label=finding.label,
                probability=finding.probability,
                threshold=finding.threshold,
                decision=finding.decision,
                not_assessed_reason=finding.not_assessed_reason.value if finding.not_assessed_reason else None,
                detail=finding.detail,
                model_name=finding.model_name,
                model_version=finding.model_version,
                sr_sop_instance_uid=finding.sr_sop_instance_uid,
                sc_sop_instance_uid=finding.sc_sop_instance_uid,
                created_at=now,
            )
        )
    job.state = JobState.DONE if results else JobState.SKIPPED
    job.finished_at = now
    job.attempts += 1
    if not results:
        job.last_error = skip_reason or job.last_error or "no image of the study could be used"
    else:
        job.last_error = None
    session.flush()
    return True


def skip_instance(session: Session, sop_instance_uid: str, reason: str) -> None:
    """Mark an instance SKIPPED (found unusable during the batch) with a reason."""
    instance = session.get(Instance, sop_instance_uid)
    if instance is not None:
        instance.state = InstanceState.SKIPPED
        instance.skip_reason = reason


def fail_job(
    session: Session,
    claim: ClaimedJob,
    error: str,
    *,
    max_attempts: int,
    backoff_s: float,
    now: datetime,
) -> JobState | None:
    """Count a failed attempt: back to READY after a backoff, or FAILED when exhausted.

    The backoff doubles with each attempt: ``backoff_s * 2**(attempts-1)``.

    Returns:
        the job's new state, or None when the claim is no longer ours.
    """
    job = _owned_running_job(session, claim)
    if job is None:
        return None
    job.attempts += 1
    job.last_error = error[:2000]
    job.claimed_at = None
    job.claimed_by = None
    if job.attempts >= max_attempts:
        job.state = JobState.FAILED
        job.finished_at = now
    else:
        job.state = JobState.READY
        job.not_before = now + timedelta(seconds=backoff_s * 2 ** (job.attempts - 1))
    return job.state


def due_results(session: Session, *, now: datetime, limit: int) -> list[OutboxItem]:
    """PENDING results whose next attempt is due, oldest first."""
    rows = session.scalars(
        select(Result)
        .where(Result.state == OutboxState.PENDING, Result.next_attempt_at <= now)
        .order_by(Result.job_id, Result.id)
        .limit(limit)
    ).all()
    return [OutboxItem(r.id, r.job_id, r.kind, r.sop_instance_uid, r.path, r.attempts) for r in rows]


def mark_result_sent(session: Session, result_id: int, *, now: datetime) -> None:
    """The destination acknowledged a result; the job becomes SENT with its last result."""
    result = session.get(Result, result_id)
    if result is None:
        return
    result.state = OutboxState.SENT
    result.sent_at = now
    result.attempts += 1
    result.last_error = None
    session.flush()
    unsent = session.scalar(
        select(func.count())
        .select_from(Result)
        .where(Result.job_id == result.job_id, Result.state != OutboxState.SENT)
    )
    if not unsent:
        job = session.get(Job, result.job_id)
        if job is not None and job.state == JobState.DONE:
            job.state = JobState.SENT


def mark_result_failed(
    session: Session,
    result_id: int,
    error: str,
    *,
    max_attempts: int,
    backoff_s: float,
    backoff_max_s: float,
    now: datetime,
) -> OutboxState:
    """Count a failed send: retry later with a doubling backoff, or FAILED when exhausted."""
    result = session.get(Result, result_id)
    if result is None:
        return OutboxState.FAILED
    result.attempts += 1
    result.last_error = error[:2000]
    if result.attempts >= max_attempts:
        result.state = OutboxState.FAILED
    else:
        delay = min(backoff_s * 2 ** (result.attempts - 1), backoff_max_s)
        result.next_attempt_at = now + timedelta(seconds=delay)
    return result.state


@dataclass(frozen=True)
class RetryReport:
    """What :func:`retry_failed` re-queued.

    Attributes:
        jobs: ``(job id, Study Instance UID)`` of the FAILED jobs now READY.
        failed_sends: FAILED results back in the outbox (PENDING, attempts reset).
        pending_sends: PENDING results waiting for a backoff that are now due.
    """

    jobs: list[tuple[int, str]]
    failed_sends: int
    pending_sends: int


def retry_failed(session: Session, *, now: datetime) -> RetryReport:
    """Operator action: FAILED jobs back to READY, FAILED and backed-off sends due now.

    Jobs and results start again with ``attempts = 0`` (a full set of tries);
    ``last_error`` is kept until the next attempt replaces it. Safe while a node runs
    on the same database: FAILED rows are claimed by no worker, and a running sender
    only reads ``next_attempt_at`` when it looks for due results.
    """
    jobs = session.scalars(select(Job).where(Job.state == JobState.FAILED).order_by(Job.id)).all()
    for job in jobs:
        job.state = JobState.READY
        job.attempts = 0
        job.ready_at = now
        job.not_before = None
        job.claimed_at = None
        job.claimed_by = None
        job.finished_at = None
    failed = session.execute(
        update(Result)
        .where(Result.state == OutboxState.FAILED)
        .values(state=OutboxState.PENDING, attempts=0, next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    backed_off = session.execute(
        update(Result)
        .where(Result.state == OutboxState.PENDING, Result.next_attempt_at > now)
        .values(next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return RetryReport(
        jobs=[(job.id, job.study_instance_uid) for job in jobs],
        failed_sends=int(getattr(failed, "rowcount", 0) or 0),
        pending_sends=int(getattr(backed_off, "rowcount", 0) or 0),
    )


def _counts(session: Session, column: object) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).group_by(column)).all()  # type: ignore[call-overload]
    return {str(state.value if hasattr(state, "value") else state): int(n) for state, n in rows}


def status_summary(session: Session, *, recent: int = 10) -> StatusSummary:
    """Counts per state, the pending outbox with reasons, recent failures and skips.

    Stored error texts and skip reasons may embed a library's exception message, which
    can quote a header value: they are shown through :func:`dicomnode.phi.redact`.
    """
    pending = session.scalars(
        select(Result).where(Result.state == OutboxState.PENDING).order_by(Result.id).limit(recent)
    ).all()
    failed_jobs = session.scalars(
        select(Job).where(Job.state == JobState.FAILED).order_by(Job.finished_at.desc()).limit(recent)
    ).all()
    failed_results = session.scalars(
        select(Result).where(Result.state == OutboxState.FAILED).order_by(Result.id.desc()).limit(recent)
    ).all()
    skipped = session.scalars(
        select(Instance).where(Instance.state == InstanceState.SKIPPED).order_by(Instance.received_at.desc()).limit(recent)
    ).all()
    skipped_jobs = session.scalars(
        select(Job).where(Job.state == JobState.SKIPPED).order_by(Job.id.desc()).limit(recent)
    ).all()
    failures: list[dict[str, object]] = [
        {"what": "job", "job_id": j.id, "study_instance_uid": j.study_instance_uid, "attempts": j.attempts, "error": _shown(j.last_error)}
        for j in failed_jobs
    ]
    failures += [
        {"what": "send", "job_id": r.job_id, "sop_instance_uid": r.sop_instance_uid, "attempts": r.attempts, "error": _shown(r.last_error)}
        for r in failed_results
    ]
    return StatusSummary(
        jobs=_counts(session, Job.state),
        instances=_counts(session, Instance.state),
        results=_counts(session, Result.state),
        pending_sends=[
            {
                "job_id": r.job_id,
                "kind": r.kind.value,
                "sop_instance_uid": r.sop_instance_uid,
                "attempts": r.attempts,
                "next_attempt_at": r.next_attempt_at.isoformat(timespec="seconds"),
                "last_error": _shown(r.last_error),
            }
            for r in pending
        ],
        recent_failures=failures,
        recent_skips=[
            {"sop_instance_uid": i.sop_instance_uid, "study_instance_uid": i.study_instance_uid, "reason": _shown(i.skip_reason)}
            for i in skipped
        ],
        skipped_studies=[
            {"job_id": j.id, "study_instance_uid": j.study_instance_uid, "reason": _shown(j.last_error)}
            for j in skipped_jobs
        ],
    )


def _shown(text: str | None) -> str | None:
    """A stored error text or reason as ``dicomnode status`` may show it (quoted parts withheld)."""
    return None if text is None else redact(text)
