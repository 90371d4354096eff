"""Logging set-up, called once by the CLI (``serve``, ``train``); never at import.

At INFO the log shows dicomnode's own lines. Libraries that report routine work at
INFO or WARNING are demoted to DEBUG by :class:`DemoteFilter` (see :data:`DEMOTED`):
their records still appear, as DEBUG, with ``--log-level DEBUG``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass


class _ContextFormatter(logging.Formatter):
    """Appends ``job_id`` / ``study_instance_uid`` when a record carries them."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [
            f"{key}={getattr(record, key)}" for key in ("job_id", "study_instance_uid") if hasattr(record, key)
        ]
        return f"{text} [{' '.join(extras)}]" if extras else text


@dataclass(frozen=True)
class Demotion:
    """Records of ``logger`` (and its children) at most ``up_to`` that become DEBUG.

    Args:
        logger: logger name, e.g. ``"highdicom"``; its children match too.
        up_to: highest level demoted (``logging.INFO``, ``logging.WARNING``).
        containing: only records whose message contains this text; None = all.
    """

    logger: str
    up_to: int
    containing: str | None = None

    def matches(self, record: logging.LogRecord) -> bool:
        """True when this rule demotes ``record``."""
        if record.levelno > self.up_to:
            return False
        if record.name != self.logger and not record.name.startswith(self.logger + "."):
            return False
        return self.containing is None or self.containing in record.getMessage()


#: Routine library records shown only at DEBUG.
DEMOTED: tuple[Demotion, ...] = (
    # highdicom logs each step of building an object at INFO (one line per module and image).
    Demotion("highdicom", logging.INFO),
    # The batch job runs longer than its interval: APScheduler skips a run and warns, but
    # max_instances=1 with coalesce=True makes the skip the intended behaviour.
    Demotion("apscheduler", logging.WARNING, "maximum number of running instances"),
    Demotion("apscheduler", logging.WARNING, "was missed by"),
)


class DemoteFilter(logging.Filter):
    """Handler filter: relabel matching records as DEBUG, then drop them below ``level``.

    A handler filter (not a logger filter) because logger filters do not apply to the
    records of child loggers (``highdicom.sr.templates``).

    Args:
        level: the handler's threshold (``logging.INFO`` ...).
        rules: which records to demote.
    """

    def __init__(self, level: int, rules: tuple[Demotion, ...] = DEMOTED) -> None:
        super().__init__()
        self.level = level
        self.rules = rules

    def filter(self, record: logging.LogRecord) -> bool:
        """Demote a matching record; keep it only when DEBUG records are shown."""
        if any(rule.matches(record) for rule in self.rules):
            record.levelno = logging.DEBUG
            record.levelname = logging.getLevelName(logging.DEBUG)
        return record.levelno >= self.level


def configure(level: str = "INFO") -> None:
    """Log to stderr at ``level``; routine library records are demoted (see :data:`DEMOTED`).

    pynetdicom is kept at WARNING unless ``level`` is DEBUG; APScheduler logs only
    warnings (its INFO lines come once per run); pydicom logs only errors (its warnings
    can quote values). Demoted warnings still pass the logger levels, so they show as
    DEBUG records at DEBUG. Python warnings are routed into logging
    (``logging.captureWarnings``), and the one handler carries the PHI guard
    (:class:`dicomnode.phi.PhiGuard`), so every record and warning of every library
    passes it before it is written.
    """
    from dicomnode.phi import PhiGuard

    numeric = logging.getLevelName(level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(DemoteFilter(numeric))
    handler.addFilter(PhiGuard())
    # Re-arm: a caller that restored ``warnings.showwarning`` (``warnings.catch_warnings``)
    # leaves logging believing it still captures; off-then-on installs the hook again.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.NOTSET if level == "DEBUG" else logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    if level != "DEBUG":  # dicomnode.store.migrate logs the upgrades it runs
        logging.getLogger("alembic").setLevel(logging.WARNING)
    # pydicom warns about invalid values quoting them ("Invalid value for VR DA: '<birth date>'"):
    # such lines can carry PHI, so only its errors are logged.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
