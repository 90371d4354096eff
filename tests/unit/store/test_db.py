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
