"""Logging set-up, called once by the CLI (``serve``, ``train``); never at import."""

from __future__ import annotations

import logging
import sys


class _ContextFormatter(logging.Formatter):
    """Appends ``job_id`` / ``study_instance_uid`` when a record carries them."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [
            f"{key}={getattr(record, key)}" for key in ("job_id", "study_instance_uid") if hasattr(record, key)
        ]
        return f"{text} [{' '.join(extras)}]" if extras else text


def configure(level: str = "INFO") -> None:
    """Log to stderr at ``level``; pynetdicom is kept one step quieter unless DEBUG.

    Python warnings are routed into logging (``logging.captureWarnings``), and the
    one handler carries the PHI guard (:class:`dicomnode.phi.PhiGuard`), so every
    record and warning of every library passes it before it is written.
    """
    from dicomnode.phi import PhiGuard

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(PhiGuard())
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # pydicom warns about invalid values quoting them ("Invalid value for VR DA: '<birth date>'"):
    # such lines can carry PHI, so only its errors are logged.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
