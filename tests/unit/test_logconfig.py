"""Logging: at INFO the log shows dicomnode's lines; routine library records only at DEBUG."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from dicomnode import logconfig

_TOUCHED = ("", "pynetdicom", "apscheduler", "pydicom")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put back the root handlers and the levels configure() changes."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    levels = {name: logging.getLogger(name).level for name in _TOUCHED}
    yield
    root.handlers[:] = handlers
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _emit_samples() -> None:
    logging.getLogger("dicomnode.node").info("node line")
    logging.getLogger("highdicom.sr.templates").info("highdicom routine line")
    logging.getLogger("highdicom.base").warning("highdicom warning line")
    logging.getLogger("apscheduler.scheduler").warning(
        'Execution of job "batch" skipped: maximum number of running instances reached (1)'
    )
    logging.getLogger("apscheduler.executors.default").error("apscheduler error line")


@pytest.mark.usefixtures("restore_logging")
def test_info_shows_our_lines_not_library_routine(capsys: pytest.CaptureFixture[str]) -> None:
    logconfig.configure("INFO")
    _emit_samples()
    err = capsys.readouterr().err
    assert "node line" in err
    assert "highdicom warning line" in err and "apscheduler error line" in err
    assert "highdicom routine line" not in err
    assert "maximum number of running instances" not in err


@pytest.mark.usefixtures("restore_logging")
def test_debug_shows_the_demoted_records_as_debug(capsys: pytest.CaptureFixture[str]) -> None:
    logconfig.configure("DEBUG")
    _emit_samples()
    lines = capsys.readouterr().err.splitlines()
    demoted = [line for line in lines if "highdicom routine line" in line or "maximum number of running" in line]
    assert len(demoted) == 2
    assert all(" DEBUG " in line for line in demoted)
    assert any(" INFO dicomnode.node: node line" in line for line in lines)
