"""The PHI guard: what reaches a log line or CLI output from text the node did not write.

dicomnode's own log lines name UIDs, AE titles and attribute keywords, never values.
Libraries are less careful: highdicom warns ``The string "<patient name>" is unlikely
to represent the intended person name``, pydicom ``Invalid value for VR DA:
'<birth date>'``, and their exception messages quote values the same way. So:

* a Python warning (routed to logging by :func:`logconfig.configure`) is reduced to its
  category and where it was raised; its text is withheld;
* in every other record, quoted text in a library's message, in an exception passed
  as an argument and in a traceback is withheld (:func:`redact`);
* ``dicomnode status`` passes stored error texts and skip reasons through :func:`redact`.

:class:`PhiGuard` is a *handler* filter: a filter on a logger does not see records
propagated from its child loggers, a handler filter sees every record it emits.
"""

from __future__ import annotations

import logging
import re
from pathlib import PurePath
from typing import Final

__all__ = ["WITHHELD", "PhiGuard", "redact"]

#: What replaces withheld text.
WITHHELD: Final = "<withheld>"
#: Quoted text: '...' or "..." on one line (how pydicom, highdicom and Python quote values).
_QUOTED: Final = re.compile(r"""'[^'\n]*'|"[^"\n]*\"""")
#: ``warnings.formatwarning`` output: ``path:line: Category: text``.
_WARNING: Final = re.compile(r"^(?P<path>.*?):(?P<line>\d+): (?P<category>[A-Za-z_][\w.]*): ", re.DOTALL)
_OWN_LOGGER: Final = "dicomnode"
_WARNINGS_LOGGER: Final = "py.warnings"


def redact(text: str) -> str:
    """``text`` with every quoted part ('...' or "...") replaced by ``<withheld>``."""
    return _QUOTED.sub(WITHHELD, text)


class PhiGuard(logging.Filter):
    """Handler filter that withholds library text that may quote patient data.

    Never drops a record: it rewrites the message (and the traceback text) in place.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == _WARNINGS_LOGGER:
            record.msg, record.args = _warning_summary(record.getMessage()), ()
        elif record.name != _OWN_LOGGER and not record.name.startswith(_OWN_LOGGER + "."):
            record.msg, record.args = redact(record.getMessage()), ()
        elif record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            if any(isinstance(arg, BaseException) for arg in args):
                record.args = tuple(
                    redact(str(arg)) if isinstance(arg, BaseException) else arg for arg in args
                )
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def _warning_summary(text: str) -> str:
    """``UserWarning from highdicom/sc/sop.py:123 (text withheld ...)``."""
    match = _WARNING.match(text)
    if match is None:
        return "a warning (text withheld: warnings may quote patient data)"
    where = "/".join(PurePath(match["path"]).parts[-2:])
    return (
        f"{match['category']} from {where}:{match['line']} "
        "(text withheld: library warnings may quote patient data)"
    )
