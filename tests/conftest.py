"""Suite-wide fixtures: strict pydicom writing, temporary data folders, factories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom.config
import pytest


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
