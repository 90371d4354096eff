"""PostgreSQL: migrations, concurrent claims, and one receiver + two workers on one database.

Each test gets a fresh database in one throw-away cluster per module
(:mod:`tests.integration.postgres`). The multi-node test runs real
``dicomnode serve --role receiver|worker`` processes sharing a data folder and
the database, sends studies with DCMTK ``storescu``, SIGKILLs one worker while
it works, and counts what a DCMTK ``storescp`` destination received.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import StoreSettings
from dicomnode.domain import InstanceState, JobState
from dicomnode.store import queue
from dicomnode.store.db import make_engine, make_sessionmaker
from dicomnode.store.migrate import current_revision, head_revision, schema_diff
from dicomnode.store.models import Base, Job
from tests.helpers import REPO_ROOT, free_port, make_cxr_dataset, make_tiny_model
from tests.integration.peers import run_storescp, start_node, stop_process, storescu, wait_until
from tests.integration.postgres import Postgres, run_postgres
from tests.peers.node import assert_schema_at_head

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

T0 = datetime(2026, 1, 1, 12, 0, 0)
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.22"}


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with run_postgres() as server:
        yield server


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    """SQLAlchemy URL of a new, empty database."""
    return postgres.create_database()


@pytest.fixture
def pg_engine(pg_url: str, tmp_path: Path) -> Iterator[Engine]:
    """The node's engine on a fresh database (schema from the migrations)."""
    engine = make_engine(StoreSettings(data_dir=tmp_path / "node", db_url=pg_url))
    yield engine
    engine.dispose()


def _ready_jobs(sessions: sessionmaker[Session], count: int) -> set[int]:
    """``count`` one-image studies whose jobs are READY."""
    with sessions.begin() as session:
        for n in range(count):
            uid = f"1.2.826.0.1.3680043.10.1.{n}"
            queue.record_instance(
                session, study_instance_uid=uid, series_instance_uid=f"{uid}.1", sop_instance_uid=f"{uid}.1.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", path=f"in/{n}.dcm", state=InstanceState.ACCEPTED,
                skip_reason=None, calling_ae_title="SCU", now=T0,
            )  # fmt: skip
    with sessions.begin() as session:
        return set(queue.mark_stable(session, stable_after_s=1, now=T0 + timedelta(seconds=5)))


# --- migrations --------------------------------------------------------------------------


def test_migrations_head_matches_the_models_on_postgres(pg_engine: Engine) -> None:
    with pg_engine.connect() as connection:
        assert current_revision(connection) == head_revision()
        assert schema_diff(connection) == []


def test_pre_alembic_postgres_database_is_stamped_and_keeps_working(pg_url: str, tmp_path: Path) -> None:
    old = create_engine(pg_url)
    # how the node made its tables before migrations (the baseline's tables: later revisions add ``finding``)
    Base.metadata.create_all(old, tables=[Base.metadata.tables[n] for n in ("study", "job", "instance", "result")])
    with sessionmaker(old).begin() as session:
        queue.record_instance(
            session, study_instance_uid="1.2.3", series_instance_uid="1.2.3.1", sop_instance_uid="1.2.3.1.1",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", path="in/a.dcm", state=InstanceState.ACCEPTED,
            skip_reason=None, calling_ae_title="SCU", now=T0,
        )  # fmt: skip
    with old.begin() as connection:  # as the baseline had it (0003 adds the column)
        connection.execute(text("ALTER TABLE study DROP COLUMN files_purged_at"))
    old.dispose()
    engine = make_engine(StoreSettings(data_dir=tmp_path / "node", db_url=pg_url))
    try:
        assert_schema_at_head(engine)
        sessions = make_sessionmaker(engine)
        with sessions.begin() as session:
            queue.mark_stable(session, stable_after_s=1, now=T0 + timedelta(seconds=5))
            claims = queue.claim_batch(session, limit=4, now=T0 + timedelta(seconds=5), worker="h:1")
        assert [c.study_instance_uid for c in claims] == ["1.2.3"]
    finally:
        engine.dispose()


def test_processes_starting_together_migrate_the_new_database_once(pg_url: str, tmp_path: Path) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(3, timeout=30)

    def start() -> None:
        try:
            barrier.wait()
            make_engine(StoreSettings(data_dir=tmp_path / "node", db_url=pg_url)).dispose()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    engine = create_engine(pg_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head_revision()]
    finally:
        engine.dispose()


# --- claims ------------------------------------------------------------------------------


def test_open_claim_transactions_take_different_jobs_without_waiting(pg_engine: Engine) -> None:
    """FOR UPDATE SKIP LOCKED: a second claimer skips rows the first holds, it does not block."""
    sessions = make_sessionmaker(pg_engine)
    jobs = _ready_jobs(sessions, 6)
    now = T0 + timedelta(seconds=10)
    first = sessions()
    second = sessions()
    try:
        claimed_first = {c.job_id for c in queue.claim_batch(first, limit=4, now=now, worker="a:1")}
        # The first transaction is still open and holds its rows; the second must skip them.
        second.execute(text("SET LOCAL lock_timeout = '5s'"))
        claimed_second = {c.job_id for c in queue.claim_batch(second, limit=4, now=now, worker="b:2")}
        first.commit()
        second.commit()
    finally:
        first.close()
        second.close()
    assert len(claimed_first) == 4 and len(claimed_second) == 2
    assert claimed_first.isdisjoint(claimed_second)
    assert claimed_first | claimed_second == jobs
    with sessions() as session:
        owners = Counter(j.claimed_by for j in session.scalars(select(Job)))
    assert owners == {"a:1": 4, "b:2": 2}


def test_racing_workers_claim_every_job_exactly_once(pg_engine: Engine) -> None:
    sessions = make_sessionmaker(pg_engine)
    jobs = _ready_jobs(sessions, 60)
    claimed: dict[str, list[int]] = {}
    barrier = threading.Barrier(4, timeout=30)
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        mine: list[int] = []
        claimed[name] = mine
        try:
            barrier.wait()
            for _ in range(200):  # bounded: 60 jobs, 2 per claim
                with sessions.begin() as session:
                    batch = queue.claim_batch(session, limit=2, now=T0 + timedelta(seconds=10), worker=name)
                if not batch:
                    return
                mine.extend(c.job_id for c in batch)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{n}:{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    every_claim = [job for mine in claimed.values() for job in mine]
    assert sorted(every_claim) == sorted(jobs)  # each job claimed once, none left
    with sessions() as session:
        rows = session.scalars(select(Job)).all()
    assert {j.state for j in rows} == {JobState.RUNNING}
    assert all(j.id in claimed[str(j.claimed_by)] for j in rows)


# --- one receiver, two workers -----------------------------------------------------------


def _start_workers(data_dir: Path, args: list[str], logs: list[Path]) -> list[subprocess.Popen[bytes]]:
    """``dicomnode serve --role worker`` processes (no DICOM port), started together;
    returns once each has loaded its model."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for log in logs:
            with log.open("ab") as handle:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "dicomnode", "serve", "--role", "worker", "--host", "127.0.0.1",
                     "--port", str(free_port()), "--data-dir", str(data_dir), *args],
                    stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                ))  # fmt: skip
        for process, log in zip(processes, logs):
            wait_until(lambda p=process, f=log: p.poll() is not None or "loaded" in f.read_text(),  # type: ignore[misc]
                       180, f"worker {log.name}")  # fmt: skip
            if process.poll() is not None:
                raise RuntimeError(f"worker exited with {process.returncode}:\n{log.read_text()}")
    except BaseException:
        for process in processes:
            process.kill()
            process.wait(timeout=10)
        raise
    return processes


@pytest.mark.slow
@pytest.mark.dcmtk
def test_receiver_and_two_workers_deliver_every_study_once_with_a_worker_killed(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMNODE_SCHEDULER__LEASE_S", "5")  # the killed worker's claims expire quickly
    monkeypatch.setenv("DICOMNODE_DESTINATION__RETRY_BACKOFF_S", "1")
    monkeypatch.setenv("DICOMNODE_DESTINATION__RETRY_BACKOFF_MAX_S", "2")
    model = make_tiny_model(tmp_path / "model")
    data_dir = tmp_path / "shared"  # the folder every node mounts (NFS in production)
    studies = 24
    files = []
    for n in range(studies):
        path = tmp_path / "in" / f"{n}.dcm"
        path.parent.mkdir(exist_ok=True)
        make_cxr_dataset(study_uid=generate_uid(), seed=n, rows=64, cols=64).save_as(path, enforce_file_format=True)
        files.append(path)
    common = ["--db-url", pg_url, "--stable-after", "1", "--interval", "1"]
    engine = create_engine(pg_url)

    def rows(query: str, **params: object) -> list[tuple[object, ...]]:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text(query), params).all()]

    pacs_dir = tmp_path / "pacs"
    pacs_port = free_port()
    with run_storescp(pacs_dir, "PACS", pacs_port, ("+uf",)):  # a new file per delivery: repeats show
        worker_args = [*common, "--destination", f"PACS@127.0.0.1:{pacs_port}", "--model", str(model),
                       "--batch-size", "2"]  # fmt: skip
        receiver = start_node(data_dir, [*common, "--role", "receiver", "--receivers", "1"], log_name="receiver.log")
        workers = []
        try:
            workers = _start_workers(data_dir, worker_args, [tmp_path / f"worker{n}.log" for n in range(2)])
            victim, survivor = workers
            sent = storescu(receiver.port, files)
            assert sent.returncode == 0, sent.stderr
            wait_until(
                lambda: bool(rows("SELECT 1 FROM job WHERE claimed_by LIKE :tag", tag=f"%:{victim.pid}")),
                120, "the first worker to claim a job", poll_s=0.02,
            )  # fmt: skip
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            left_running = rows("SELECT count(*) FROM job WHERE state = 'running' AND claimed_by LIKE :tag",
                                tag=f"%:{victim.pid}")  # fmt: skip
            print(f"killed worker {victim.pid}; it left {left_running[0][0]} job(s) running")

            def settled() -> bool:
                open_jobs = rows("SELECT count(*) FROM job WHERE state IN ('received','ready','running','done')")
                pending = rows("SELECT count(*) FROM result WHERE state = 'pending'")
                total = rows("SELECT count(*) FROM job")
                return open_jobs == [(0,)] and pending == [(0,)] and total == [(studies,)]

            wait_until(settled, 240, "every job sent by the surviving worker")
            time.sleep(1.5)  # a few more scheduler periods: room for a duplicate to appear
            assert stop_process(survivor) == 0
            assert receiver.stop() == 0
        finally:
            for process in workers:
                stop_process(process)
            receiver.stop()
            engine.dispose()

    deliveries = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(pacs_dir.iterdir())]
    distinct = {str(ds.SOPInstanceUID): ds for ds in deliveries}
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    study_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files}
    sc_per_source = Counter(
        str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) for ds in distinct.values() if ds.SOPClassUID == SC_CLASS
    )
    sr_per_study = Counter(str(ds.StudyInstanceUID) for ds in distinct.values() if ds.SOPClassUID in SR_CLASSES)
    assert sc_per_source == Counter({uid: 1 for uid in sources})  # one SC per image
    assert sr_per_study == Counter({uid: 1 for uid in study_uids})  # one SR per study
    assert len(distinct) == 2 * studies
    repeats = len(deliveries) - len(distinct)
    print(f"deliveries: {len(deliveries)} ({repeats} repeated), distinct {len(distinct)}")
