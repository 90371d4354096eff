"""Closed sets of values that CLI options take, as enums: ``--help`` lists them and Typer
refuses any other value before a command runs.

The CLI imports no heavy library (STYLE.md section 4), so the sets whose home module
imports torch or numpy (``training.datasets``) or that settings spell as ``Literal``
are mirrored here; ``tests/unit/test_cli_choices.py`` checks that each mirror equals
its source.
"""

from __future__ import annotations

from enum import StrEnum


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


class DataFormat(StrEnum):
    """``--format`` of the training commands: :class:`dicomnode.training.datasets.DataFormat`."""

    AUTO = "auto"
    FOLDER = "folder"
    MEDMNIST = "medmnist"
    RSNA = "rsna"
    NIH = "nih"


class Split(StrEnum):
    """``evaluate --split``: :class:`dicomnode.training.datasets.Split`."""

    ALL = "all"
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


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
