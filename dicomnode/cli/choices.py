"""Closed sets of values that CLI options take, as enums: ``--help`` lists them and Typer
refuses any other value before a command runs.

``DataFormat`` and ``Split`` are the training package's own (:mod:`dicomnode.training.formats`).
The CLI imports no heavy library (STYLE.md section 4), so the sets that settings spell
as ``Literal``, ``node.ROLES`` and the conformance formats (their module imports
pydicom) are mirrored here; ``tests/unit/test_cli_choices.py`` checks that each mirror
equals its source.
"""

from __future__ import annotations

from enum import StrEnum

from dicomnode.training.formats import DataFormat, Split

__all__ = [
    "Calibration",
    "ConformanceFormat",
    "DataFormat",
    "ExplainMode",
    "LogLevel",
    "Resize",
    "Role",
    "Split",
]


class LogLevel(StrEnum):
    """``--log-level``: ``Settings.log_level``."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class ExplainMode(StrEnum):
    """``--explain``: ``ModelSettings.explain`` (Grad-CAM for every image or positives only)."""

    ALL = "all"
    POSITIVE = "positive"


class Role(StrEnum):
    """``serve --role``: :data:`dicomnode.node.ROLES`."""

    ALL = "all"
    RECEIVER = "receiver"
    WORKER = "worker"


class Resize(StrEnum):
    """``train --resize``: squash to the square input, or pad (letterbox) first."""

    SQUASH = "squash"
    PAD = "pad"


class Calibration(StrEnum):
    """``train --calibration`` / ``calibrate --method``: fitted on the validation logits."""

    TEMPERATURE = "temperature"
    PLATT = "platt"
    NONE = "none"


class ConformanceFormat(StrEnum):
    """``conformance --format``: :class:`dicomnode.conformance.OutputFormat` (that module
    imports pydicom, which ``dicomnode --help`` does not need)."""

    MD = "md"
    HTML = "html"
