"""Queue state machine: receive -> stable -> claim -> done/failed -> sent, on a real SQLite file."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.domain import (
    ClaimedJob,
    InstanceState,
    JobState,
    NewResult,
    NotAssessedReason,
    OutboxState,
    PriorResult,
    ResultKind,
)
from dicomnode.store import queue
from dicomnode.store.models import Instance, Job, Result

T0 = datetime(2026, 1, 1, 12, 0, 0)


def _record(session: Session, sop: str, study: str = "1.2.3", *, state: InstanceState = InstanceState.ACCEPTED,
            now: datetime = T0) -> bool:
    return queue.record_instance(
        session,
        study_instance_uid=study,
        series_instance_uid=study + ".1",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        path=f"incoming/{sop}.dcm",
        state=state,
        skip_reason=None if state == InstanceState.ACCEPTED else "not a chest",
        calling_ae_title="MODALITY",
        now=now,
    )


def _job_states(sessions: sessionmaker[Session]) -> list[JobState]:
    with sessions() as session:
        return [job.state for job in session.scalars(select(Job).order_by(Job.id))]


def test_duplicate_instance_is_recorded_once(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        assert _record(session, "1.2.3.1.1") is True
        assert _record(session, "1.2.3.1.1") is False
    with sessions() as session:
        assert len(session.scalars(select(Instance)).all()) == 1
        assert len(session.scalars(select(Job)).all()) == 1


def test_study_becomes_ready_only_after_quiet_period(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        _record(session, "1.2.3.1.1", now=T0)
        _record(session, "1.2.3.1.2", now=T0 + timedelta(seconds=8))
    with sessions.begin() as session:
        assert queue.mark_stable(session, stable_after_s=10, now=T0 + timedelta(seconds=12)) == []
    with sessions.begin() as session:
        assert queue.mark_stable(session, stable_after_s=10, now=T0 + timedelta(seconds=18)) == [1]
    assert _job_states(sessions) == [JobState.READY]


def test_study_with_only_skipped_instances_is_skipped(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        _record(session, "1.2.3.1.1", state=InstanceState.SKIPPED)
    with sessions.begin() as session:
        assert queue.mark_stable(session, stable_after_s=1, now=T0 + timedelta(seconds=2)) == []
    assert _job_states(sessions) == [JobState.SKIPPED]


def test_instance_after_claim_opens_a_new_job(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        _record(session, "1.2.3.1.1")
        queue.mark_stable(session, stable_after_s=1, now=T0 + timedelta(seconds=2))
        claims = queue.claim_batch(session, limit=5, now=T0 + timedelta(seconds=2), worker="w")
    assert [c.job_id for c in claims] == [1]
    assert [i.sop_instance_uid for i in claims[0].instances] == ["1.2.3.1.1"]
    with sessions.begin() as session:
        _record(session, "1.2.3.1.2", now=T0 + timedelta(seconds=3))
    assert _job_states(sessions) == [JobState.RUNNING, JobState.RECEIVED]


def test_claim_is_exclusive_and_skips_skipped_instances(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        _record(session, "1.2.3.1.1")
        _record(session, "1.2.3.1.2", state=InstanceState.SKIPPED)
        queue.mark_stable(session, stable_after_s=1, now=T0 + timedelta(seconds=2))
    with sessions.begin() as session:
        first = queue.claim_batch(session, limit=5, now=T0 + timedelta(seconds=3), worker="a")
    with sessions.begin() as session:
        second = queue.claim_batch(session, limit=5, now=T0 + timedelta(seconds=3), worker="b")
    assert len(first) == 1 and second == []
    assert [i.sop_instance_uid for i in first[0].instances] == ["1.2.3.1.1"]


def _ready_and_claim(sessions: sessionmaker[Session], now: datetime) -> ClaimedJob:
    with sessions.begin() as session:
        _record(session, "1.2.3.1.1", now=now)
        queue.mark_stable(session, stable_after_s=1, now=now + timedelta(seconds=2))
        return queue.claim_batch(session, limit=1, now=now + timedelta(seconds=2), worker="w")[0]


def test_failure_backs_off_then_fails_after_max_attempts(sessions: sessionmaker[Session]) -> None:
    claim = _ready_and_claim(sessions, T0)
    with sessions.begin() as session:
        state = queue.fail_job(session, claim, "boom", max_attempts=2, backoff_s=30, now=T0 + timedelta(seconds=3))
    assert state == JobState.READY
    with sessions.begin() as session:
        assert queue.claim_batch(session, limit=1, now=T0 + timedelta(seconds=10), worker="w") == []
    with sessions.begin() as session:
        again = queue.claim_batch(session, limit=1, now=T0 + timedelta(seconds=40), worker="w")
    assert len(again) == 1
    with sessions.begin() as session:
        state = queue.fail_job(session, again[0], "boom again", max_attempts=2, backoff_s=30, now=T0 + timedelta(seconds=41))
    assert state == JobState.FAILED
    with sessions() as session:
        job = session.get(Job, claim.job_id)
        assert job is not None and job.attempts == 2 and job.last_error == "boom again"


def test_expired_lease_requeues_and_stale_claim_cannot_complete(sessions: sessionmaker[Session]) -> None:
    claim = _ready_and_claim(sessions, T0)
    with sessions.begin() as session:
        assert queue.requeue_expired(session, lease_s=60, now=T0 + timedelta(seconds=30)) == 0
        assert queue.requeue_expired(session, lease_s=60, now=T0 + timedelta(seconds=120)) == 1
    with sessions.begin() as session:
        reclaimed = queue.claim_batch(session, limit=1, now=T0 + timedelta(seconds=121), worker="w2")
    result = NewResult(ResultKind.FINDINGS_SR, "9.9.9", "1.2.840.10008.5.1.4.1.1.88.33", "results/x.dcm")
    with sessions.begin() as session:
        assert queue.complete_job(session, claim, [result], now=T0 + timedelta(seconds=122)) is False
        assert queue.complete_job(session, reclaimed[0], [result], now=T0 + timedelta(seconds=122)) is True
    with sessions() as session:
        assert len(session.scalars(select(Result)).all()) == 1


def test_outbox_retry_then_sent_marks_job_sent(sessions: sessionmaker[Session]) -> None:
    claim = _ready_and_claim(sessions, T0)
    results = [
        NewResult(ResultKind.HEATMAP_SC, "9.9.1", "1.2.840.10008.5.1.4.1.1.7", "results/a.dcm"),
        NewResult(ResultKind.FINDINGS_SR, "9.9.2", "1.2.840.10008.5.1.4.1.1.88.33", "results/b.dcm"),
    ]
    with sessions.begin() as session:
        assert queue.complete_job(session, claim, results, now=T0 + timedelta(seconds=5))
    with sessions.begin() as session:
        due = queue.due_results(session, now=T0 + timedelta(seconds=5), limit=10)
        assert [d.sop_instance_uid for d in due] == ["9.9.1", "9.9.2"]
        state = queue.mark_result_failed(session, due[0].result_id, "peer down", max_attempts=3, backoff_s=10,
                                         backoff_max_s=60, now=T0 + timedelta(seconds=5))
        assert state == OutboxState.PENDING
        queue.mark_result_sent(session, due[1].result_id, now=T0 + timedelta(seconds=5))
    with sessions() as session:
        summary = queue.status_summary(session)
    assert summary.jobs == {"done": 1}
    assert summary.pending_sends[0]["last_error"] == "peer down"
    with sessions.begin() as session:
        assert queue.due_results(session, now=T0 + timedelta(seconds=10), limit=10) == []
        due = queue.due_results(session, now=T0 + timedelta(seconds=16), limit=10)
        queue.mark_result_sent(session, due[0].result_id, now=T0 + timedelta(seconds=16))
    assert _job_states(sessions) == [JobState.SENT]


def test_send_failure_exhausts_to_failed_and_retry_resets(sessions: sessionmaker[Session]) -> None:
    claim = _ready_and_claim(sessions, T0)
    result = NewResult(ResultKind.FINDINGS_SR, "9.9.2", "1.2.840.10008.5.1.4.1.1.88.33", "results/b.dcm")
    with sessions.begin() as session:
        queue.complete_job(session, claim, [result], now=T0)
        item = queue.due_results(session, now=T0, limit=1)[0]
        assert queue.mark_result_failed(session, item.result_id, "0xA700", max_attempts=1, backoff_s=1,
                                        backoff_max_s=1, now=T0) == OutboxState.FAILED
    with sessions() as session:
        assert queue.status_summary(session).recent_failures[0]["error"] == "0xA700"
    with sessions.begin() as session:
        report = queue.retry_failed(session, now=T0)
        assert (report.jobs, report.failed_sends, report.pending_sends) == ([], 1, 0)
        assert len(queue.due_results(session, now=T0, limit=5)) == 1


def test_retry_requeues_failed_jobs_and_makes_backed_off_sends_due(sessions: sessionmaker[Session]) -> None:
    claim = _ready_and_claim(sessions, T0)
    with sessions.begin() as session:
        assert queue.fail_job(session, claim, "decode error", max_attempts=1, backoff_s=1, now=T0) == JobState.FAILED
        _record(session, "1.2.9.1", study="1.2.9", now=T0)
        queue.mark_stable(session, stable_after_s=1, now=T0 + timedelta(seconds=5))
        other = queue.claim_batch(session, limit=1, now=T0 + timedelta(seconds=5), worker="w")[0]
        result = NewResult(ResultKind.FINDINGS_SR, "9.9.3", "1.2.840.10008.5.1.4.1.1.88.33", "results/c.dcm")
        queue.complete_job(session, other, [result], now=T0)
        item = queue.due_results(session, now=T0, limit=1)[0]
        queue.mark_result_failed(session, item.result_id, "peer down", max_attempts=5, backoff_s=600,
                                 backoff_max_s=600, now=T0)
        assert queue.due_results(session, now=T0, limit=5) == []
    with sessions.begin() as session:
        report = queue.retry_failed(session, now=T0 + timedelta(seconds=1))
    assert report.jobs == [(claim.job_id, claim.study_instance_uid)]
    assert (report.failed_sends, report.pending_sends) == (0, 1)
    with sessions.begin() as session:
        job = session.get(Job, claim.job_id)
        assert job is not None and job.state == JobState.READY and job.attempts == 0
        assert [c.job_id for c in queue.claim_batch(session, limit=5, now=T0 + timedelta(seconds=1), worker="w")] == [
            claim.job_id
        ]
        assert len(queue.due_results(session, now=T0 + timedelta(seconds=1), limit=5)) == 1


@pytest.mark.parametrize("limit", [1, 3])
def test_claim_respects_limit_and_order(sessions: sessionmaker[Session], limit: int) -> None:
    with sessions.begin() as session:
        for n in range(4):
            _record(session, f"1.2.{n}.1", study=f"1.2.{n}", now=T0 + timedelta(seconds=n))
        queue.mark_stable(session, stable_after_s=1, now=T0 + timedelta(seconds=10))
        claims = queue.claim_batch(session, limit=limit, now=T0 + timedelta(seconds=10), worker="w")
    assert [c.study_instance_uid for c in claims] == [f"1.2.{n}" for n in range(limit)]


def test_claims_of_dead_local_workers_are_requeued_at_once(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        for n in range(3):
            _record(session, f"1.2.{n}.1", study=f"1.2.{n}")
        queue.mark_stable(session, stable_after_s=1, now=T0 + timedelta(seconds=2))
        queue.claim_batch(session, limit=1, now=T0 + timedelta(seconds=2), worker="here:111")
        queue.claim_batch(session, limit=1, now=T0 + timedelta(seconds=2), worker="here:222")
        queue.claim_batch(session, limit=1, now=T0 + timedelta(seconds=2), worker="elsewhere:111")
    with sessions.begin() as session:
        count = queue.requeue_orphaned(session, host="here", is_alive=lambda pid: pid == 222)
    assert count == 1
    with sessions() as session:
        owners = {job.claimed_by for job in session.scalars(select(Job)) if job.state == JobState.RUNNING}
    assert owners == {"here:222", "elsewhere:111"}


def test_later_job_claims_the_whole_study_and_the_latest_report(sessions: sessionmaker[Session]) -> None:
    claim = _ready_and_claim(sessions, T0)
    sr = NewResult(ResultKind.FINDINGS_SR, "1.2.3.9.1", "1.2.840.10008.5.1.4.1.1.88.33", "results/sr1.dcm")
    with sessions.begin() as session:
        _record(session, "1.2.3.1.2", now=T0 + timedelta(seconds=3))  # a new job: the first is RUNNING
        _record(session, "1.2.3.1.3", state=InstanceState.SKIPPED, now=T0 + timedelta(seconds=3))
        queue.mark_stable(session, stable_after_s=1, now=T0 + timedelta(seconds=5))
        # the earlier job of the study is still RUNNING: the later one waits
        assert queue.claim_batch(session, limit=5, now=T0 + timedelta(seconds=5), worker="w") == []
    with sessions.begin() as session:
        assert queue.complete_job(session, claim, [sr], now=T0 + timedelta(seconds=6))
    with sessions.begin() as session:
        (later,) = queue.claim_batch(session, limit=5, now=T0 + timedelta(seconds=7), worker="w")
    assert [i.sop_instance_uid for i in later.instances] == ["1.2.3.1.1", "1.2.3.1.2"]
    (refused,) = later.refused
    assert (refused.sop_instance_uid, refused.reason, refused.detail) == ("1.2.3.1.3", "header_not_accepted", "not a chest")
    assert later.predecessor == PriorResult("1.2.3.9.1", sr.sop_class_uid, sr.path)
    # the same result UID recorded again (an unchanged SC) is not duplicated
    with sessions.begin() as session:
        assert queue.complete_job(session, later, [sr], now=T0 + timedelta(seconds=8))
    with sessions() as session:
        assert len(session.scalars(select(Result)).all()) == 1


def test_study_without_assessable_image_is_skipped_with_its_reason(sessions: sessionmaker[Session]) -> None:
    claim = _ready_and_claim(sessions, T0)
    with sessions.begin() as session:
        queue.skip_instance(session, "1.2.3.1.1", queue.skip_reason_text(NotAssessedReason.UNDECODABLE, "bad JPEG"))
        queue.complete_job(session, claim, [], now=T0 + timedelta(seconds=3), skip_reason="no assessable image in the study: 1 x undecodable")
    with sessions() as session:
        summary = queue.status_summary(session)
    assert summary.skipped_studies == [
        {"job_id": 1, "study_instance_uid": "1.2.3", "reason": "no assessable image in the study: 1 x undecodable"}
    ]
    assert summary.recent_skips[0]["reason"] == "undecodable: bad JPEG"
    assert queue.parse_skip_reason("undecodable: bad JPEG") == (NotAssessedReason.UNDECODABLE, "bad JPEG")
