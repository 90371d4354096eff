"""Fit post-hoc calibration (temperature or Platt scaling) on held-out logits.

Temperature scaling (Guo et al. 2017) divides each label's logit by one temperature
``T`` chosen to minimise the negative log-likelihood on the validation split; Platt
scaling also fits an offset ``b`` (``sigmoid(z / T + b)``), which can undo the prior
shift that a ``pos_weight`` loss leaves. Both are monotone per label, so AUC and the
ranking of images do not change; thresholds must be re-chosen on the calibrated
probabilities. Minimised with scipy's L-BFGS-B over ``log T`` (and ``b``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from dicomnode.errors import DataError
from dicomnode.inference.calibration import Calibration, calibrated_probabilities
from dicomnode.training import metrics

CalibrationMethod = Literal["temperature", "platt"]
_LOG_T_BOUNDS = (float(np.log(0.01)), float(np.log(100.0)))
_BIAS_BOUNDS = (-20.0, 20.0)


def binary_nll(y_true: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy (nats) of ``sigmoid(logits)`` against 0/1 labels, (N,) each."""
    t = np.asarray(y_true, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    if t.size == 0:
        return float("nan")
    return float(np.mean(np.logaddexp(0.0, z) - t * z))


def fit_scaling(
    y_true: np.ndarray, logits: np.ndarray, method: CalibrationMethod = "temperature"
) -> tuple[float, float]:
    """Temperature (and bias for Platt) minimising the NLL of one label.

    Args:
        y_true: (N,) 0/1 labels with both classes present.
        logits: (N,) raw logits.
        method: ``temperature`` (bias fixed at 0) or ``platt``.

    Returns:
        (temperature > 0, bias); the temperature lies in [0.01, 100].

    Raises:
        DataError: one class only, or no data.
    """
    from scipy.optimize import minimize  # type: ignore[import-untyped]

    t = np.asarray(y_true, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    if t.size != z.size:
        raise DataError(f"{t.size} labels for {z.size} logits")
    if t.size == 0 or t.sum() == 0 or t.sum() == t.size:
        raise DataError("calibration needs both classes in the validation data")

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        inv_t = np.exp(-params[0])
        bias = params[1] if params.size > 1 else 0.0
        s = z * inv_t + bias
        p = 0.5 * (1.0 + np.tanh(0.5 * s))
        residual = (p - t) / t.size
        grad_log_t = -float(np.sum(residual * z * inv_t))
        grad = [grad_log_t] + ([float(np.sum(residual))] if params.size > 1 else [])
        return float(np.mean(np.logaddexp(0.0, s) - t * s)), np.asarray(grad)

    start = np.zeros(2 if method == "platt" else 1)
    bounds = [_LOG_T_BOUNDS] + ([_BIAS_BOUNDS] if method == "platt" else [])
    result = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds, options={"gtol": 1e-10, "ftol": 1e-14})
    params = np.asarray(result.x, dtype=np.float64)
    return float(np.exp(params[0])), float(params[1]) if method == "platt" else 0.0


def fit_calibration(
    targets: np.ndarray,
    logits: np.ndarray,
    *,
    method: CalibrationMethod = "temperature",
    fitted_on: str = "",
) -> Calibration:
    """Fit one temperature (and bias) per label and record NLL and ECE before and after.

    A label whose validation targets hold one class only keeps ``T = 1, b = 0``.

    Args:
        targets: (N, L) 0/1 targets.
        logits: (N, L) raw logits of the same images.
        method: ``temperature`` or ``platt``.
        fitted_on: description of the data, stored in the manifest.

    Returns:
        The calibration for the manifest.

    Raises:
        DataError: shapes differ, or no image.
    """
    y = np.asarray(targets, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    if y.shape != z.shape or y.ndim != 2 or y.shape[0] == 0:
        raise DataError(f"targets {y.shape} and logits {z.shape} must be the same non-empty (N, L)")
    temps: list[float] = []
    biases: list[float] = []
    for i in range(y.shape[1]):
        if 0 < y[:, i].sum() < y.shape[0]:
            temperature, bias = fit_scaling(y[:, i], z[:, i], method)
        else:
            temperature, bias = 1.0, 0.0
        temps.append(temperature)
        biases.append(bias)
    draft = Calibration(
        method=method,
        temperatures=tuple(temps),
        biases=tuple(biases) if method == "platt" else (),
    )
    after = calibrated_probabilities(z, draft)
    before = calibrated_probabilities(z, None)
    scaled = z / np.asarray(temps) + np.asarray(biases)
    return draft.model_copy(
        update={
            "fitted_on": fitted_on,
            "n": int(y.shape[0]),
            "nll_before": tuple(binary_nll(y[:, i], z[:, i]) for i in range(y.shape[1])),
            "nll_after": tuple(binary_nll(y[:, i], scaled[:, i]) for i in range(y.shape[1])),
            "ece_before": tuple(
                metrics.expected_calibration_error(y[:, i], before[:, i])[0] for i in range(y.shape[1])
            ),
            "ece_after": tuple(
                metrics.expected_calibration_error(y[:, i], after[:, i])[0] for i in range(y.shape[1])
            ),
        }
    )
