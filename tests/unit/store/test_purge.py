"""dicomnode.store.purge: which studies lose their files, what is removed, what is kept."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.domain import InstanceState
from dicomnode.store import queue
from dicomnode.store.files import FileStore
from dicomnode.store.models import Instance, Result, Study
from dicomnode.store.purge import find_purgeable, purge
from tests.unit.store.studies import FILE_BYTES, Stage, make_study

T0 = datetime(2026, 1, 1, 12, 0, 0)
LATER = T0 + timedelta(days=31)


@pytest.fixture
def files(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "node")


def _paths(sessions: sessionmaker[Session], files: FileStore, study: str) -> list[Path]:
    with sessions() as session:
        rows = [i.path for i in session.scalars(select(Instance).where(Instance.study_instance_uid == study))]
        rows += [r.path for r in session.scalars(select(Result).where(Result.job.has(study_instance_uid=study)))]
    return [files.absolute(p) for p in rows]


def test_delivered_study_older_than_the_age_loses_its_files_and_keeps_its_rows(
    sessions: sessionmaker[Session], files: FileStore
) -> None:
    study = make_study(sessions, files, stage="sent", now=T0, images=2)
    paths = _paths(sessions, files, study)
    assert len(paths) == 5 and all(p.is_file() for p in paths)  # 2 images, 2 SC, 1 SR

    (done,) = purge(sessions, files, older_than=timedelta(days=30), now=LATER, delivered_only=True)

    assert done.study_instance_uid == study and done.size_bytes == 5 * FILE_BYTES and len(done.paths) == 5
    assert not any(p.exists() for p in paths)
    with sessions() as session:
        row = session.get(Study, study)
        assert row is not None and row.files_purged_at == LATER
        assert len(session.scalars(select(Instance)).all()) == 2
    assert purge(sessions, files, older_than=timedelta(0), now=LATER, delivered_only=True) == []


def test_younger_study_is_kept(sessions: sessionmaker[Session], files: FileStore) -> None:
    make_study(sessions, files, stage="sent", now=T0)
    with sessions() as session:
        assert find_purgeable(session, files, older_than=timedelta(days=30), now=T0 + timedelta(days=29),
                              delivered_only=True) == []  # fmt: skip


@pytest.mark.parametrize("stage", ["received", "ready", "running", "failed", "send_failed", "done"])
def test_unfinished_or_undelivered_studies_keep_their_files(
    sessions: sessionmaker[Session], files: FileStore, stage: Stage
) -> None:
    study = make_study(sessions, files, stage=stage, now=T0)
    assert purge(sessions, files, older_than=timedelta(0), now=LATER, delivered_only=True) == []
    assert all(p.is_file() for p in _paths(sessions, files, study))


def test_without_destination_processed_studies_go_but_failed_ones_stay(
    sessions: sessionmaker[Session], files: FileStore
) -> None:
    processed = make_study(sessions, files, stage="done", now=T0)
    failed = make_study(sessions, files, stage="failed", now=T0)
    running = make_study(sessions, files, stage="running", now=T0)
    chosen = purge(sessions, files, older_than=timedelta(0), now=LATER, delivered_only=False)
    assert [c.study_instance_uid for c in chosen] == [processed]
    assert all(p.is_file() for s in (failed, running) for p in _paths(sessions, files, s))


def test_dry_run_changes_nothing(sessions: sessionmaker[Session], files: FileStore) -> None:
    study = make_study(sessions, files, stage="sent", now=T0)
    with sessions() as session:
        (found,) = find_purgeable(session, files, older_than=timedelta(0), now=LATER, delivered_only=True)
    assert found.study_instance_uid == study and found.size_bytes == 3 * FILE_BYTES
    assert all(p.is_file() for p in _paths(sessions, files, study))
    with sessions() as session:
        row = session.get(Study, study)
        assert row is not None and row.files_purged_at is None


def test_limit_bounds_one_run_oldest_first(sessions: sessionmaker[Session], files: FileStore) -> None:
    old = make_study(sessions, files, stage="sent", now=T0)
    make_study(sessions, files, stage="sent", now=T0 + timedelta(hours=1))
    chosen = purge(sessions, files, older_than=timedelta(0), now=LATER, delivered_only=True, limit=1)
    assert [c.study_instance_uid for c in chosen] == [old]


def test_an_image_after_the_purge_is_analysed_without_the_removed_ones(
    sessions: sessionmaker[Session], files: FileStore
) -> None:
    study = make_study(sessions, files, stage="sent", now=T0)
    purge(sessions, files, older_than=timedelta(0), now=LATER, delivered_only=True)
    with sessions.begin() as session:
        queue.record_instance(
            session, study_instance_uid=study, series_instance_uid=study + ".1", sop_instance_uid=study + ".99",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1", path="incoming/late.dcm", state=InstanceState.ACCEPTED,
            skip_reason=None, calling_ae_title="MODALITY", now=LATER + timedelta(seconds=1),
        )  # fmt: skip
        queue.mark_stable(session, stable_after_s=1, now=LATER + timedelta(seconds=5))
        (claim,) = queue.claim_batch(session, limit=1, now=LATER + timedelta(seconds=5), worker="test:1")
    assert [i.sop_instance_uid for i in claim.instances] == [study + ".99"]
    assert claim.predecessor is not None  # the earlier SR is still superseded (its row stays)
