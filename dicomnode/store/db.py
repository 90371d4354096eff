"""Engine and session factory. SQLite runs in WAL mode with foreign keys on.

The schema comes from the Alembic migrations (:mod:`dicomnode.store.migrate`):
every engine start-up upgrades the database to the newest revision.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import StoreSettings
from dicomnode.store.migrate import upgrade_to_head

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def make_engine(settings: StoreSettings) -> Engine:
    """Create the engine for ``settings`` and bring its schema to the newest migration.

    For SQLite the data folder is created, WAL journaling, foreign keys and a
    30 s busy timeout are set on every connection, and transactions start with
    ``BEGIN IMMEDIATE`` so that two writers queue instead of failing mid-way.
    A new database gets the schema from the migrations; one made before migrations
    existed is stamped as the baseline revision and upgraded (one transaction,
    several processes starting at once migrate one after the other).

    Raises:
        StorageError: the database was migrated by a newer dicomnode.
        sqlalchemy.exc.OperationalError: the database cannot be reached.
    """
    url = settings.resolved_db_url()
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "isolation_level": None})
        event.listen(engine, "connect", _sqlite_pragmas)

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    else:
        engine = create_engine(url, pool_pre_ping=True)
    try:
        upgrade_to_head(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Session factory; objects stay usable after commit (``expire_on_commit=False``)."""
    return sessionmaker(engine, expire_on_commit=False)
