"""Post-hoc probability calibration stored in the manifest and applied wherever probabilities are made.

A model outputs one logit ``z`` per label. Without calibration its probability is
``sigmoid(z)``; with a :class:`Calibration` it is ``sigmoid(z / T + b)`` per label
(temperature scaling: ``b = 0``; Platt scaling: ``T`` and ``b`` both fitted). Serving
(:class:`~dicomnode.inference.runner.ModelRunner`), training and evaluation all call
:func:`calibrated_probabilities`, so the three report the same numbers for the same logits.

Fitting lives in :mod:`dicomnode.training.temperature` (numpy/scipy; no torch here).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Calibration(BaseModel):
    """How logits become calibrated probabilities, and what the fit achieved.

    Attributes:
        method: ``"temperature"`` (one temperature per label, biases 0) or ``"platt"``
            (temperature and bias per label).
        temperatures: one temperature per label, > 0 (1 = unchanged).
        biases: one logit offset per label, added after dividing by the temperature.
        fitted_on: what the parameters were fitted on, e.g. the grouped validation split.
        n: number of images the fit used.
        nll_before: per label, mean binary cross-entropy (nats) of ``sigmoid(z)``.
        nll_after: per label, the same for the calibrated probabilities.
        ece_before: per label, expected calibration error (10 equal-width bins) before.
        ece_after: per label, the same after calibration.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["temperature", "platt"] = "temperature"
    temperatures: tuple[float, ...] = Field(min_length=1)
    biases: tuple[float, ...] = ()
    fitted_on: str = ""
    n: int = Field(default=0, ge=0)
    nll_before: tuple[float, ...] = ()
    nll_after: tuple[float, ...] = ()
    ece_before: tuple[float, ...] = ()
    ece_after: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Calibration:
        k = len(self.temperatures)
        if any(not (t > 0 and np.isfinite(t)) for t in self.temperatures):
            raise ValueError("temperatures must be finite and > 0")
        if self.biases and len(self.biases) != k:
            raise ValueError("one bias per temperature is required")
        if self.method == "temperature" and any(b != 0.0 for b in self.biases):
            raise ValueError("temperature scaling has no bias; use method 'platt'")
        for name in ("nll_before", "nll_after", "ece_before", "ece_after"):
            values = getattr(self, name)
            if values and len(values) != k:
                raise ValueError(f"{name} needs one value per label ({k})")
        return self

    def offsets(self) -> tuple[float, ...]:
        """The per-label biases (zeros when none are stored)."""
        return self.biases or tuple(0.0 for _ in self.temperatures)


def calibrated_probabilities(logits: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    """Probabilities of a batch of logits, calibrated when the manifest says so.

    Args:
        logits: ``(N, L)`` logits (any float dtype), L = number of labels.
        calibration: the manifest's calibration, or None for plain ``sigmoid(z)``.

    Returns:
        ``(N, L)`` float32 probabilities in [0, 1], computed in float64.

    Raises:
        ValueError: ``logits`` is not 2-D, or its label count differs from the calibration's.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, L), got shape {z.shape}")
    if calibration is not None:
        if len(calibration.temperatures) != z.shape[1]:
            raise ValueError(
                f"calibration has {len(calibration.temperatures)} temperatures for {z.shape[1]} labels"
            )
        z = z / np.asarray(calibration.temperatures, dtype=np.float64) + np.asarray(
            calibration.offsets(), dtype=np.float64
        )
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)
