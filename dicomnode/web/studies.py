"""What the page and the API show about studies, read from the queue database.

Plain dicts ready for JSON (times as ISO 8601 UTC with a ``Z``). Stored error texts
and skip reasons go through :func:`dicomnode.phi.redact`; patient attributes
appear only when asked for (``http.show_phi``), read from the first received file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from dicomnode.domain import FindingDecision, JobState, OutboxState, ResultKind
from dicomnode.errors import StorageError
from dicomnode.phi import redact
from dicomnode.store.files import FileStore
from dicomnode.store.models import Finding, Job, Result, Study

#: Studies looked at per list request (newest first) before filters apply.
SCAN_LIMIT = 1000
#: Patient attributes shown with ``http.show_phi`` (DICOM keyword -> JSON key).
PHI_KEYWORDS = {
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "PatientBirthDate": "patient_birth_date",
    "AccessionNumber": "accession_number",
    "StudyDate": "study_date",
}


@dataclass(frozen=True)
class StudyFilter:
    """Filters of the study list.

    Attributes:
        state: only studies whose latest job is in this state.
        positive: only studies with at least one finding decided present.
        since: only studies last received at or after this naive UTC time.
        limit: at most this many studies, newest first.
    """

    state: JobState | None = None
    positive: bool = False
    since: datetime | None = None
    limit: int = 100


def iso(moment: datetime | None) -> str | None:
    """A naive UTC time as ``2026-12-04T19:30:05Z`` (None stays None)."""
    return None if moment is None else moment.isoformat(timespec="seconds") + "Z"


def _load(session: Session, where: Any, offset: int, limit: int) -> Sequence[Study]:
    query = select(Study).order_by(Study.last_received_at.desc(), Study.study_instance_uid).offset(offset).limit(limit)
    if where is not None:
        query = query.where(where)
    return session.scalars(query).all()


def _jobs_of(session: Session, study_uids: list[str]) -> dict[str, list[Job]]:
    jobs = session.scalars(
        select(Job)
        .where(Job.study_instance_uid.in_(study_uids))
        .options(selectinload(Job.results), selectinload(Job.findings), selectinload(Job.instances))
        .order_by(Job.id)
    ).all()
    by_study: dict[str, list[Job]] = {uid: [] for uid in study_uids}
    for job in jobs:
        by_study[job.study_instance_uid].append(job)
    return by_study


def timeline(study: Study, jobs: Sequence[Job]) -> dict[str, str | None]:
    """When the study was received, became ready, ran, was done and was sent (latest job)."""
    job = jobs[-1] if jobs else None
    sent: datetime | None = None
    if job is not None and job.state == JobState.SENT and job.results:
        sent = max((r.sent_at for r in job.results if r.sent_at is not None), default=None)
    done = job.finished_at if job is not None and job.state in (JobState.DONE, JobState.SENT) else None
    return {
        "received": iso(study.first_received_at),
        "last_received": iso(study.last_received_at),
        "ready": iso(job.ready_at) if job else None,
        "running": iso(job.claimed_at) if job else None,
        "done": iso(done),
        "sent": iso(sent),
        "finished": iso(job.finished_at) if job else None,
    }


def _positive(jobs: Sequence[Job]) -> bool:
    return any(f.decision == FindingDecision.PRESENT for job in jobs for f in job.findings)


def _latest_findings(jobs: Sequence[Job]) -> list[Finding]:
    """The findings of the study's latest job that recorded any (earlier ones are superseded)."""
    return next((list(j.findings) for j in reversed(jobs) if j.findings), [])


def study_findings(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """Per label what the study's latest analysis concluded, over its images.

    A label is ``present`` when any image's decision is present, else ``absent`` when
    any image was assessed; its probability is the highest of the images. Images not
    assessed as a whole appear as one ``label: None`` entry with their reason(s).
    """
    by_label: dict[str | None, list[Finding]] = {}
    for finding in _latest_findings(jobs):
        by_label.setdefault(finding.label, []).append(finding)
    shown: list[dict[str, Any]] = []
    for label, rows in by_label.items():
        decisions = {f.decision for f in rows}
        if FindingDecision.PRESENT in decisions:
            decision = FindingDecision.PRESENT
        elif FindingDecision.ABSENT in decisions:
            decision = FindingDecision.ABSENT
        else:
            decision = FindingDecision.NOT_ASSESSED
        reasons = sorted({f.not_assessed_reason for f in rows if f.not_assessed_reason})
        shown.append({
            "label": label,
            "decision": decision.value,
            "probability": max((f.probability for f in rows if f.probability is not None), default=None),
            "not_assessed_reasons": reasons,
        })
    return shown


def delivery(jobs: Sequence[Job]) -> str:
    """The study's delivery state: ``failed``, ``pending`` (a result waits), ``sent``, or ``none`` (no result)."""
    states = {r.state for j in jobs for r in j.results}
    if OutboxState.FAILED in states:
        return "failed"
    if OutboxState.PENDING in states:
        return "pending"
    return "sent" if states else "none"


def _summary(study: Study, jobs: Sequence[Job]) -> dict[str, Any]:
    job = jobs[-1] if jobs else None
    findings = [f for j in jobs for f in j.findings]
    present = sorted({f.label for f in findings if f.decision == FindingDecision.PRESENT and f.label})
    pending = [r for j in jobs for r in j.results if r.state == OutboxState.PENDING]
    failed = [r for j in jobs for r in j.results if r.state == OutboxState.FAILED]
    top = max((f.probability for f in findings if f.probability is not None), default=None)
    return {
        "study_instance_uid": study.study_instance_uid,
        "state": job.state.value if job else None,
        "positive": bool(present),
        "present": present,
        "max_probability": top,
        "images": sum(len(j.instances) for j in jobs),
        "results_pending": len(pending),
        "results_failed": len(failed),
        "last_error": redact(job.last_error) if job and job.last_error else None,
        "timeline": timeline(study, jobs),
        "findings": study_findings(jobs),
        "models": sorted({f"{f.model_name} v{f.model_version}" for f in _latest_findings(jobs)}),
        "delivery": delivery(jobs),
        "files_purged_at": iso(study.files_purged_at),
    }


def list_studies(session: Session, filters: StudyFilter) -> list[dict[str, Any]]:
    """Recent studies, newest first, with state, positivity and timeline.

    Studies are read page by page, newest first, until ``filters.limit`` match or
    :data:`SCAN_LIMIT` were looked at.
    """
    where = Study.last_received_at >= filters.since if filters.since is not None else None
    shown: list[dict[str, Any]] = []
    page = max(filters.limit, 50)
    for offset in range(0, SCAN_LIMIT, page):
        studies = _load(session, where, offset, min(page, SCAN_LIMIT - offset))
        jobs = _jobs_of(session, [s.study_instance_uid for s in studies])
        for study in studies:
            study_jobs = jobs[study.study_instance_uid]
            if filters.state is not None and (not study_jobs or study_jobs[-1].state != filters.state):
                continue
            if filters.positive and not _positive(study_jobs):
                continue
            shown.append(_summary(study, study_jobs))
            if len(shown) >= filters.limit:
                return shown
        if len(studies) < page:
            break
    return shown


def _finding(f: Finding) -> dict[str, Any]:
    return {
        "label": f.label,
        "probability": f.probability,
        "threshold": f.threshold,
        "decision": f.decision.value,
        "not_assessed_reason": f.not_assessed_reason,
        "detail": redact(f.detail) if f.detail else None,
        "model": {"name": f.model_name, "version": f.model_version},
        "sr_sop_instance_uid": f.sr_sop_instance_uid,
        "sc_sop_instance_uid": f.sc_sop_instance_uid,
    }


def _result(r: Result) -> dict[str, Any]:
    return {
        "kind": r.kind.value,
        "sop_instance_uid": r.sop_instance_uid,
        "state": r.state.value,
        "attempts": r.attempts,
        "last_error": redact(r.last_error) if r.last_error else None,
        "next_attempt_at": iso(r.next_attempt_at) if r.state == OutboxState.PENDING else None,
        "sent_at": iso(r.sent_at),
    }


def study_detail(session: Session, study_uid: str, files: FileStore | None = None) -> dict[str, Any] | None:
    """One study: state, timeline, per image its findings and heatmap, every result's delivery.

    Args:
        session: open session.
        study_uid: the Study Instance UID.
        files: the data folder; given = patient attributes are read from the first
            received file (only when PHI may be shown).

    Returns:
        None when the study is unknown.
    """
    study = session.get(Study, study_uid)
    if study is None:
        return None
    jobs = _jobs_of(session, [study_uid])[study_uid]
    detail = _summary(study, jobs)
    results = {r.sop_instance_uid: r for job in jobs for r in job.results}
    images: list[dict[str, Any]] = []
    for job in jobs:
        for instance in job.instances:
            findings = [f for f in job.findings if f.sop_instance_uid == instance.sop_instance_uid]
            sc_labels: dict[str, str | None] = {}
            for f in findings:
                if f.sc_sop_instance_uid and f.sc_sop_instance_uid in results:
                    sc_labels.setdefault(f.sc_sop_instance_uid, f.label)
            heatmaps = [{**_result(results[uid]), "label": label} for uid, label in sc_labels.items()]
            images.append({
                "sop_instance_uid": instance.sop_instance_uid,
                "series_instance_uid": instance.series_instance_uid,
                "job_id": job.id,
                "state": instance.state.value,
                "skip_reason": redact(instance.skip_reason) if instance.skip_reason else None,
                "findings": [_finding(f) for f in findings],
                "heatmaps": heatmaps,  # one SC per positive finding (multi-label models)
                "heatmap": heatmaps[0] if heatmaps else None,  # the first; kept for API clients
            })
    detail["images"] = images
    detail["jobs"] = [
        {"job_id": j.id, "state": j.state.value, "attempts": j.attempts,
         "last_error": redact(j.last_error) if j.last_error else None,
         "created_at": iso(j.created_at), "finished_at": iso(j.finished_at)}
        for j in jobs
    ]
    detail["results"] = [_result(r) for job in jobs for r in job.results]
    detail["reports"] = [
        _result(r) for job in jobs for r in job.results if r.kind == ResultKind.FINDINGS_SR
    ]
    if files is not None:
        detail["patient"] = read_patient(files, jobs)
    return detail


def read_patient(files: FileStore, jobs: Sequence[Job]) -> dict[str, str] | None:
    """Patient attributes from the study's first received file (header only); None if unreadable."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    instances = [i for job in jobs for i in job.instances]
    if not instances:
        return None
    try:
        ds = dcmread(files.absolute(instances[0].path), stop_before_pixels=True, specific_tags=list(PHI_KEYWORDS))
    except (OSError, InvalidDicomError, StorageError):
        return None
    return {key: str(ds.get(keyword, "") or "") for keyword, key in PHI_KEYWORDS.items()}


def result_file(session: Session, files: FileStore, sop_instance_uid: str, kind: ResultKind) -> Path | None:
    """The file of a produced result of ``kind``; None when unknown."""
    result = session.scalars(
        select(Result).where(Result.sop_instance_uid == sop_instance_uid, Result.kind == kind)
    ).first()
    return files.absolute(result.path) if result is not None else None

