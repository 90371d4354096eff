"""Exceptions raised inside dicomnode, each mapped to one outcome at a boundary.

| exception          | boundary outcome                                             |
|--------------------|--------------------------------------------------------------|
| ConfigError        | CLI: one-line message, exit code 1                           |
| RejectedInstance   | C-STORE in: the failure status it carries (0xA900, 0xC2xx)   |
| StorageError       | C-STORE in: 0xA700 out of resources, partial file removed    |
| ModelError         | CLI / serve start-up: model cannot be found, loaded or verified |
| InferenceError     | batch job: that job FAILED with last_error, the batch goes on |
| OutputBuildError   | batch job: that job FAILED, nothing is sent                  |
| SendError          | C-STORE out: retry with backoff, then FAILED with the status |
| DataError          | train/evaluate: a dataset cannot be read; CLI exit code 1    |
"""

from __future__ import annotations


class DicomNodeError(Exception):
    """Base class of every error dicomnode raises on purpose."""


class ConfigError(DicomNodeError):
    """A configuration value is missing or invalid."""


class RejectedInstance(DicomNodeError):
    """An incoming C-STORE dataset is refused with a DIMSE failure status.

    Args:
        status: the DIMSE status to answer, e.g. ``0xC210`` or ``0xA900``.
        reason: a human-readable reason, safe to log (no PHI).
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"0x{status:04X}: {reason}")
        self.status = status
        self.reason = reason


class StorageError(DicomNodeError):
    """Writing a file or a database row failed (disk full, database locked, ...)."""


class ModelError(DicomNodeError):
    """A model cannot be resolved, built, loaded or verified against its manifest."""


class InferenceError(DicomNodeError):
    """Decoding, preprocessing, the forward pass or Grad-CAM failed for a job."""


class OutputBuildError(DicomNodeError):
    """A result object (SC, SR) could not be built or failed validation."""


class SendError(DicomNodeError):
    """A C-STORE to the destination failed (rejected, timed out, failure status)."""


class DataError(DicomNodeError):
    """A training or evaluation dataset cannot be read or is inconsistent."""
