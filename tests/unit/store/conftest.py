"""Store fixtures: a file-backed SQLite queue in tmp_path (WAL needs a file)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import StoreSettings
from dicomnode.store.db import make_engine, make_sessionmaker


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(StoreSettings(data_dir=tmp_path / "node"))
    yield make_sessionmaker(engine)
    engine.dispose()
