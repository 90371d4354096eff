"""Dataset layouts and splits: closed sets shared by the training code and the CLI.

A module of its own, importing nothing heavy, so that ``dicomnode --help`` can list the
choices without importing numpy or torch (:mod:`dicomnode.training.datasets` re-exports them).
"""

from __future__ import annotations

from enum import StrEnum


class DataFormat(StrEnum):
    """Dataset layouts understood by ``--data`` (detected, or given with ``--format``)."""

    AUTO = "auto"
    FOLDER = "folder"
    MEDMNIST = "medmnist"
    RSNA = "rsna"
    NIH = "nih"


class Split(StrEnum):
    """Which part of a dataset to use."""

    ALL = "all"
    TRAIN = "train"
    VAL = "val"
    TEST = "test"
