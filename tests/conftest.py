"""Suite-wide fixtures: strict pydicom writing, temporary data folders, factories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom.config
import pytest

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from dicomnode.receiving.handlers import ReceiveContext


@pytest.fixture(autouse=True, scope="session")
def _strict_pydicom_writing() -> Iterator[None]:
    """Invalid values raise when written, so tests fail on invalid output."""
    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.writing_validation_mode = previous


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An empty node data folder."""
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


@pytest.fixture
def store_engine(data_dir: Path) -> Iterator[Engine]:
    """A file-backed SQLite queue database in the temporary data folder (WAL needs a file)."""
    from dicomnode.config import StoreSettings
    from dicomnode.store.db import make_engine

    engine = make_engine(StoreSettings(data_dir=data_dir))
    yield engine
    engine.dispose()


@pytest.fixture
def receive_context(data_dir: Path, store_engine: Engine) -> ReceiveContext:
    """What the C-STORE handler needs, on a fresh node data folder."""
    from dicomnode.receiving.handlers import ReceiveContext
    from dicomnode.store.db import make_sessionmaker
    from dicomnode.store.files import FileStore

    return ReceiveContext(files=FileStore(data_dir), sessionmaker=make_sessionmaker(store_engine))
