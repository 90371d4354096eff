"""Engine and session factory. SQLite runs in WAL mode with foreign keys on.

SQLite commits are durable: ``synchronous=FULL`` makes every commit fsync the
write-ahead log before it returns, so a receiver's ``0x0000`` (sent after the
commit) survives a power loss. With WAL, ``synchronous=NORMAL`` would only sync at
checkpoints: fast, but the last commits can be lost (sqlite.org/pragma.html#pragma_synchronous).

The schema comes from the Alembic migrations (:mod:`dicomnode.store.migrate`):
every engine start-up upgrades the database to the newest revision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import StoreSettings
from dicomnode.errors import StorageError
from dicomnode.store.migrate import upgrade_to_head

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Execution option of a connection whose transactions only read: on SQLite they begin
#: deferred (``BEGIN``), so they neither take nor wait for the database's write lock
#: (a WAL reader sees the last committed state). ``session.connection(execution_options=READ_ONLY)``.
READ_ONLY_OPTION = "dicomnode_read_only"
READ_ONLY: dict[str, Any] = {READ_ONLY_OPTION: True}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # a commit reaches the disk (see above)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def make_engine(settings: StoreSettings, *, create: bool = True) -> Engine:
    """Create the engine for ``settings`` and bring its schema to the newest migration.

    For SQLite the data folder is created, WAL journaling with durable commits
    (``synchronous=FULL``), foreign keys and a 30 s busy timeout are set on every
    connection, and transactions start with
    ``BEGIN IMMEDIATE`` so that two writers queue instead of failing mid-way
    (``BEGIN`` on a connection with :data:`READ_ONLY`).
    A new database gets the schema from the migrations; one made before migrations
    existed is stamped as the baseline revision and upgraded (one transaction,
    several processes starting at once migrate one after the other).

    Args:
        settings: where the database is.
        create: create the folder, the database and its tables when missing (``serve``);
            False opens only an existing node database and creates nothing (``status``,
            ``retry``).

    Raises:
        StorageError: ``create`` is False and there is no node database there (or it
            cannot be opened); or the database was migrated by a newer dicomnode.
        sqlalchemy.exc.OperationalError: the database cannot be reached.
    """
    url = settings.resolved_db_url()
    if not create:
        _require_sqlite_file(url)
    if url.startswith("sqlite"):
        if create:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "isolation_level": None})
        event.listen(engine, "connect", _sqlite_pragmas)

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            read_only = conn.get_execution_options().get(READ_ONLY_OPTION, False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    else:
        engine = create_engine(url, pool_pre_ping=True)
    if not create:
        _require_tables(engine)
    try:
        upgrade_to_head(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def _require_sqlite_file(url: str) -> None:
    """Connecting to a missing SQLite file would create it: refuse first."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not Path(database).is_file():
        raise StorageError(f"no node database at {database}")


def _require_tables(engine: Engine) -> None:
    shown = engine.url.render_as_string(hide_password=True)
    try:
        has_jobs = inspect(engine).has_table("job")
    except SQLAlchemyError as exc:
        engine.dispose()
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise StorageError(f"cannot open database {shown}: {reason}") from exc
    if not has_jobs:
        engine.dispose()
        raise StorageError(f"no node database at {shown} (no dicomnode tables)")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Session factory; objects stay usable after commit (``expire_on_commit=False``)."""
    return sessionmaker(engine, expire_on_commit=False)
