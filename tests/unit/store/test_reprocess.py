"""dicomnode.store.reprocess: a ready job the worker claims like a late image's, superseding the SR."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.domain import JobState, ResultKind
from dicomnode.store import queue
from dicomnode.store.files import FileStore
from dicomnode.store.models import Job, Result
from dicomnode.store.purge import purge
from dicomnode.store.reprocess import ReprocessError, reprocess_studies
from tests.unit.store.studies import make_study

T0 = datetime(2026, 1, 1, 12, 0, 0)
T1 = T0 + timedelta(hours=1)


@pytest.fixture
def files(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "node")


def test_reprocessed_study_is_claimed_whole_with_its_sr_as_predecessor(
    sessions: sessionmaker[Session], files: FileStore
) -> None:
    study = make_study(sessions, files, stage="sent", now=T0, images=2)
    with sessions.begin() as session:
        (item,) = reprocess_studies(session, [study, study], now=T1)
    assert item.created and item.study_instance_uid == study
    with sessions.begin() as session:
        (claim,) = queue.claim_batch(session, limit=8, now=T1, worker="test:1")
        sr = session.scalars(select(Result).where(Result.kind == ResultKind.FINDINGS_SR)).one()
    assert claim.job_id == item.job_id and len(claim.instances) == 2
    assert claim.predecessor is not None and claim.predecessor.sop_instance_uid == sr.sop_instance_uid


def test_a_study_already_waiting_gets_no_second_job(sessions: sessionmaker[Session], files: FileStore) -> None:
    study = make_study(sessions, files, stage="ready", now=T0)
    with sessions.begin() as session:
        (item,) = reprocess_studies(session, [study], now=T1)
    assert not item.created
    with sessions() as session:
        assert [j.state for j in session.scalars(select(Job))] == [JobState.READY]


def test_unknown_study_is_refused_and_nothing_changes(sessions: sessionmaker[Session], files: FileStore) -> None:
    study = make_study(sessions, files, stage="sent", now=T0)
    with pytest.raises(ReprocessError, match=r"no study 1\.2\.3\.4 in the node's database"), sessions.begin() as session:
        reprocess_studies(session, [study, "1.2.3.4"], now=T1)
    with sessions() as session:
        assert len(session.scalars(select(Job)).all()) == 1


def test_purged_study_is_refused(sessions: sessionmaker[Session], files: FileStore) -> None:
    study = make_study(sessions, files, stage="sent", now=T0)
    purge(sessions, files, older_than=timedelta(0), now=T1, delivered_only=True)
    with pytest.raises(ReprocessError, match="files were purged"), sessions.begin() as session:
        reprocess_studies(session, [study], now=T1)
