"""The PHI guard on the log handler (dicomnode/phi.py, installed by logconfig.configure)."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import pytest

from dicomnode import logconfig
from dicomnode.phi import redact

NAME = "Phimarkcovid0000"


@pytest.fixture
def guarded_log() -> Iterator[io.StringIO]:
    """logconfig.configure at DEBUG, its handler writing to a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logconfig.configure("DEBUG")
    buffer = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        logging.captureWarnings(False)
        root.handlers[:], level = saved
        root.setLevel(level)


def test_library_warning_is_reduced_to_its_category_and_place(
    guarded_log: io.StringIO,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f'The string "{NAME}" is unlikely to represent the intended person name', UserWarning, stacklevel=1)
    err = guarded_log.getvalue()
    assert NAME not in err
    assert "UserWarning from" in err and "text withheld" in err


def test_quoted_values_in_library_records_are_withheld(guarded_log: io.StringIO) -> None:
    # A filter on the "highdicom" logger would not see this child's records; the handler's does.
    logging.getLogger("highdicom.sr.templates").warning("value '%s' for PatientName", NAME)
    logging.getLogger("pydicom").error('Invalid value for VR DA: "19020304"')
    err = guarded_log.getvalue()
    assert NAME not in err and "19020304" not in err
    assert "value <withheld> for PatientName" in err


def test_exception_texts_in_own_records_and_tracebacks_are_withheld(
    guarded_log: io.StringIO,
) -> None:
    logger = logging.getLogger("dicomnode.pipeline")
    logger.info("skipped: BodyPartExamined 'EXTREMITY' is not a chest")  # our own text stays
    logger.error("job 7 failed: %s", ValueError(f'bad person name "{NAME}"'))
    try:
        raise ValueError(f"cannot encode '{NAME}'")
    except ValueError:
        logger.exception("job 8 failed")
    err = guarded_log.getvalue()
    assert NAME not in err
    assert "'EXTREMITY'" in err and "job 7 failed: bad person name <withheld>" in err
    assert "ValueError: cannot encode <withheld>" in err


def test_redact() -> None:
    assert redact(f"name 'A^B' and \"{NAME}\" kept: x") == "name <withheld> and <withheld> kept: x"
