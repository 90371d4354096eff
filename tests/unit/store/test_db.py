"""SQLite connection settings that the receiver's durability promise rests on."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from dicomnode.config import StoreSettings
from dicomnode.store.db import make_engine

#: PRAGMA synchronous values (sqlite.org/pragma.html#pragma_synchronous).
_FULL = 2


def test_sqlite_commits_are_durable(tmp_path: Path) -> None:
    """In WAL mode only synchronous=FULL syncs the log at every commit; NORMAL could lose
    the last commits, i.e. instances already answered 0x0000, on power loss."""
    engine = make_engine(StoreSettings(data_dir=tmp_path))
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA synchronous")).scalar() == _FULL
    finally:
        engine.dispose()


def test_read_only_connections_do_not_take_the_write_lock(tmp_path: Path) -> None:
    """The receiver's duplicate look-up must not queue behind (or block) other writers."""
    from sqlalchemy.orm import Session

    from dicomnode.store.db import READ_ONLY

    engine = make_engine(StoreSettings(data_dir=tmp_path))
    try:
        with engine.begin() as writer:  # holds the write lock (BEGIN IMMEDIATE)
            writer.execute(text("UPDATE job SET attempts = attempts"))
            with Session(engine) as session:
                session.connection(execution_options=READ_ONLY)
                assert session.execute(text("SELECT count(*) FROM instance")).scalar() == 0
    finally:
        engine.dispose()
