"""Schema migrations on SQLite: new database, pre-Alembic database, head == models.

The same checks on PostgreSQL are in tests/integration/test_postgres.py.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select, text

from dicomnode.config import StoreSettings
from dicomnode.domain import InstanceState, JobState
from dicomnode.errors import StorageError
from dicomnode.store import queue
from dicomnode.store.db import make_engine, make_sessionmaker
from dicomnode.store.migrate import (
    BASELINE_REVISION,
    current_revision,
    head_revision,
    new_revision,
    schema_diff,
)
from dicomnode.store.models import Base, Job, Study
from tests.peers.node import assert_schema_at_head

NOW = datetime(2026, 1, 1, 12, 0, 0)


def _sqlite_file(data_dir: Path) -> Path:
    return data_dir / "dicomnode.sqlite3"


def test_new_database_gets_the_schema_from_the_migrations(tmp_path: Path) -> None:
    engine = make_engine(StoreSettings(data_dir=tmp_path))
    try:
        with engine.connect() as connection:
            assert current_revision(connection) == head_revision()
            assert {"study", "job", "instance", "result", "alembic_version"} <= set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def test_migrations_head_matches_the_models(tmp_path: Path) -> None:
    engine = make_engine(StoreSettings(data_dir=tmp_path))
    try:
        with engine.connect() as connection:
            assert schema_diff(connection) == []
    finally:
        engine.dispose()


def test_pre_alembic_database_is_stamped_and_keeps_working(tmp_path: Path) -> None:
    # The pre-migration start-up path: the tables straight from the models, no alembic_version.
    # (The baseline's tables only: later revisions add tables such as ``finding``.)
    old = create_engine(f"sqlite:///{_sqlite_file(tmp_path)}")
    Base.metadata.create_all(old, tables=[Base.metadata.tables[n] for n in ("study", "job", "instance", "result")])
    with old.begin() as connection:  # as the baseline had it (0003 adds the column)
        connection.execute(text("ALTER TABLE study DROP COLUMN files_purged_at"))
    with old.begin() as connection:
        connection.execute(text("INSERT INTO study (study_instance_uid, first_received_at, last_received_at) "
                                "VALUES ('1.2.3', '2026-01-01', '2026-01-01')"))
        connection.execute(
            text("INSERT INTO job (study_instance_uid, state, attempts, created_at, last_instance_at) "
                 "VALUES ('1.2.3', 'ready', 0, '2026-01-01', '2026-01-01')")
        )  # fmt: skip
    old.dispose()

    engine = make_engine(StoreSettings(data_dir=tmp_path))
    try:
        assert_schema_at_head(engine)
        sessions = make_sessionmaker(engine)
        with sessions.begin() as session:
            assert [j.state for j in session.scalars(select(Job))] == [JobState.READY]
            assert queue.record_instance(
                session, study_instance_uid="1.2.4", series_instance_uid="1.2.4.1", sop_instance_uid="1.2.4.1.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", path="x.dcm", state=InstanceState.ACCEPTED,
                skip_reason=None, calling_ae_title="SCU", now=NOW,
            )  # fmt: skip
        with sessions.begin() as session:
            claims = queue.claim_batch(session, limit=8, now=NOW, worker="test:1")
        assert [c.study_instance_uid for c in claims] == ["1.2.3"]
    finally:
        engine.dispose()


def test_queue_at_0002_is_upgraded_and_keeps_its_rows(tmp_path: Path) -> None:
    """0003 adds study.files_purged_at to a queue written by the previous release."""
    from alembic import command

    from dicomnode.store.migrate import alembic_config

    old = create_engine(f"sqlite:///{_sqlite_file(tmp_path)}")
    with old.begin() as connection:
        command.upgrade(alembic_config(connection), "0002")
        connection.execute(text("INSERT INTO study (study_instance_uid, first_received_at, last_received_at) "
                                "VALUES ('1.2.3', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
        connection.execute(text("INSERT INTO job (study_instance_uid, state, attempts, created_at, last_instance_at) "
                                "VALUES ('1.2.3', 'sent', 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
        assert "files_purged_at" not in {c["name"] for c in inspect(connection).get_columns("study")}
    old.dispose()

    engine = make_engine(StoreSettings(data_dir=tmp_path), create=False)
    try:
        with engine.connect() as connection:
            assert current_revision(connection) == head_revision() >= "0003"
            assert schema_diff(connection) == []
        with make_sessionmaker(engine)() as session:
            study = session.get(Study, "1.2.3")
            assert study is not None and study.files_purged_at is None
            assert [j.state for j in session.scalars(select(Job))] == [JobState.SENT]
    finally:
        engine.dispose()


def test_second_start_leaves_a_database_at_head_alone(tmp_path: Path) -> None:
    make_engine(StoreSettings(data_dir=tmp_path)).dispose()
    engine = make_engine(StoreSettings(data_dir=tmp_path))
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        assert versions == [head_revision()]
    finally:
        engine.dispose()


def test_database_of_a_newer_dicomnode_is_refused_with_advice(tmp_path: Path) -> None:
    make_engine(StoreSettings(data_dir=tmp_path)).dispose()
    raw = create_engine(f"sqlite:///{_sqlite_file(tmp_path)}")
    with raw.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    raw.dispose()
    with pytest.raises(StorageError, match="upgrade dicomnode"):
        make_engine(StoreSettings(data_dir=tmp_path))


def test_baseline_is_the_first_revision() -> None:
    assert BASELINE_REVISION == "0001"
    assert int(head_revision()) >= 1


def test_new_revision_refuses_when_the_models_match_head() -> None:
    with pytest.raises(StorageError, match="nothing to write"):
        new_revision("no change")


def test_cli_db_upgrade_reports_the_revision(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dicomnode.cli import app

    result = CliRunner().invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"schema revision: {head_revision()}" in result.output
