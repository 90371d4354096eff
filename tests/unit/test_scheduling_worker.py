"""NodeWorker.tick on a real SQLite queue in tmp_path with a tiny random-weight model.

No socket: the destination is unset (results stay in the outbox) or, for the sending
step, tests/integration/test_send_storescp.py runs the same worker against DCMTK storescp.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import DestinationSettings, OutputSettings, SchedulerSettings, StoreSettings
from dicomnode.domain import JobState, OutboxState
from dicomnode.inference.registry import resolve_manifest
from dicomnode.inference.runner import ModelRunner
from dicomnode.pipeline import PipelineOptions
from dicomnode.scheduling import NodeWorker
from dicomnode.store.db import make_engine, make_sessionmaker
from dicomnode.store.files import FileStore
from dicomnode.store.models import Job, Result
from tests.helpers import make_cxr_dataset, make_tiny_model
from tests.peers.node import store_received

T0 = datetime(2026, 1, 1, 12, 0, 0)
STABLE_S = 10.0


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> ModelRunner:
    manifest = make_tiny_model(tmp_path_factory.mktemp("model"))
    return ModelRunner.from_loaded(resolve_manifest(str(manifest)), device="cpu")


class Clock:
    """A settable naive-UTC clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def sessions(data_dir: Path) -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(StoreSettings(data_dir=data_dir)))


def make_worker(
    data_dir: Path,
    sessions: sessionmaker[Session],
    runner: ModelRunner,
    clock: Clock,
    **scheduler: object,
) -> NodeWorker:
    return NodeWorker(
        sessions,
        FileStore(data_dir),
        runner,
        SchedulerSettings(stable_after_s=STABLE_S, **scheduler),  # type: ignore[arg-type]
        DestinationSettings(),  # no host: results stay in the outbox
        "DICOMNODE",
        PipelineOptions(OutputSettings(), model_batch_size=2),
        clock=clock,
        local_clock=lambda: datetime(2026, 1, 1, 12, 0),
    )


def _jobs(sessions: sessionmaker[Session]) -> list[Job]:
    with sessions() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def _results(sessions: sessionmaker[Session]) -> list[Result]:
    with sessions() as session:
        return list(session.scalars(select(Result).order_by(Result.id)))


def test_a_quiet_study_is_processed_once(
    data_dir: Path, sessions: sessionmaker[Session], runner: ModelRunner
) -> None:
    clock = Clock(T0)
    worker = make_worker(data_dir, sessions, runner, clock)
    study = generate_uid()
    for seed in (1, 2):
        store_received(worker.files, sessions, make_cxr_dataset(study_uid=study, seed=seed), now=T0)

    early = worker.tick()  # still inside the quiet period
    assert (early.ready, early.claimed) == (0, 0)
    assert [j.state for j in _jobs(sessions)] == [JobState.RECEIVED]

    clock.now = T0 + timedelta(seconds=STABLE_S + 1)
    report = worker.tick()
    assert (report.ready, report.claimed, report.done, report.failed) == (1, 1, 1, 0)
    assert (report.sent, report.send_failed) == (0, 0)  # no destination
    [job] = _jobs(sessions)
    assert job.state == JobState.DONE
    results = _results(sessions)
    assert len(results) == 3  # a heatmap SC per image, one SR for the study
    assert {r.state for r in results} == {OutboxState.PENDING}
    assert all(worker.files.absolute(r.path).is_file() for r in results)

    again = worker.tick()  # nothing new: nothing claimed, nothing produced twice
    assert (again.ready, again.claimed, again.done) == (0, 0, 0)
    assert len(_results(sessions)) == 3


def test_outside_the_batch_window_studies_wait_ready(
    data_dir: Path, sessions: sessionmaker[Session], runner: ModelRunner
) -> None:
    clock = Clock(T0)
    worker = make_worker(data_dir, sessions, runner, clock, batch_windows=["22:00-06:00"])
    store_received(worker.files, sessions, make_cxr_dataset(study_uid=generate_uid()), now=T0)
    clock.now = T0 + timedelta(seconds=STABLE_S + 1)
    report = worker.tick()  # local time 12:00 is outside 22:00-06:00
    assert (report.ready, report.claimed) == (1, 0)
    assert [j.state for j in _jobs(sessions)] == [JobState.READY]


def test_a_study_whose_only_file_is_gone_is_skipped_with_a_reason(
    data_dir: Path, sessions: sessionmaker[Session], runner: ModelRunner
) -> None:
    clock = Clock(T0)
    worker = make_worker(data_dir, sessions, runner, clock)
    uid = store_received(worker.files, sessions, make_cxr_dataset(study_uid=generate_uid()), now=T0)
    worker.files.incoming_path(uid).unlink()
    clock.now = T0 + timedelta(seconds=STABLE_S + 1)
    report = worker.tick()
    assert (report.claimed, report.done, report.failed) == (1, 1, 0)
    [job] = _jobs(sessions)
    assert job.state == JobState.SKIPPED
    assert job.last_error  # why nothing was produced
    assert _results(sessions) == []


def test_a_backlog_is_drained_in_one_run_of_the_batch_job(
    data_dir: Path, sessions: sessionmaker[Session], runner: ModelRunner
) -> None:
    """Five ready studies, two per claim, an hour between runs: the first run claims again
    while claims come back full, so all five are done without waiting for the next run."""
    import time

    from dicomnode.scheduling import start_scheduler

    clock = Clock(T0 + timedelta(seconds=STABLE_S + 1))
    settings = {"batch_size": 2, "interval_s": 3600.0}
    worker = make_worker(data_dir, sessions, runner, clock, **settings)
    for _ in range(5):
        store_received(worker.files, sessions, make_cxr_dataset(study_uid=generate_uid()), now=T0)
    scheduler = start_scheduler(worker, SchedulerSettings(stable_after_s=STABLE_S, **settings))  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(j.state != JobState.DONE for j in _jobs(sessions)):
            time.sleep(0.1)
    finally:
        scheduler.shutdown(wait=True)
    assert [j.state for j in _jobs(sessions)] == [JobState.DONE] * 5
