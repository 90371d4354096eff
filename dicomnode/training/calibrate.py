"""Calibrate, choose thresholds and report on the validation split, in one order.

``train`` (:func:`dicomnode.training.loop.finalize`) and ``dicomnode calibrate`` (post hoc,
on an existing model folder) both call :func:`choose_on_validation` and
:func:`write_validation`, so both write the same manifest and ``metrics.json`` for the
same validation logits. The order is fixed:

1. fit the calibration (temperature per label) on the validation logits;
2. calibrated probabilities = what serving reports (:func:`calibrated_probabilities`);
3. thresholds by the manifest's threshold policy on the calibrated probabilities;
4. report (AUC, accuracy, sensitivity, specificity with patient-bootstrap 95 % CIs, ECE).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.errors import DataError, ModelError
from dicomnode.inference.calibration import Calibration, calibrated_probabilities
from dicomnode.inference.manifest import ModelManifest, write_manifest
from dicomnode.training import metrics
from dicomnode.training.datasets import DataFormat, LabeledImages, Split, select_split
from dicomnode.training.temperature import CalibrationMethod, fit_calibration

logger = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.json"
NO_CALIBRATION = "none"


@dataclass
class ValidationOutcome:
    """What the validation split decided.

    Attributes:
        calibration: the fitted calibration, or None (``method="none"``).
        thresholds: one per label, chosen on the calibrated probabilities.
        probs: (N, L) float32 calibrated probabilities.
        raw_probs: (N, L) float32 ``sigmoid(logits)`` before calibration.
        report: the figures for ``metrics.json`` (flat; multi-label: mean and per-label AUC).
    """

    calibration: Calibration | None
    thresholds: tuple[float, ...]
    probs: np.ndarray
    raw_probs: np.ndarray
    report: dict[str, Any]


def choose_on_validation(
    targets: np.ndarray,
    logits: np.ndarray,
    labels: tuple[str, ...],
    policy: str,
    *,
    method: CalibrationMethod | str = "temperature",
    groups: list[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    fitted_on: str = "validation split",
) -> ValidationOutcome:
    """Calibrate on validation logits, then choose thresholds and report on calibrated probabilities.

    Args:
        targets: (N, L) 0/1 validation targets.
        logits: (N, L) raw logits of the same images.
        labels: label names (L).
        policy: threshold policy (``youden``, ``sensitivity:0.95``, ``specificity:0.9``, ``fixed:0.5``).
        method: ``temperature``, ``platt`` or ``none`` (plain sigmoid).
        groups: N patient keys for a cluster bootstrap (None: per-image bootstrap).
        n_boot: bootstrap resamples for the 95 % intervals.
        seed: bootstrap seed.
        fitted_on: description stored in the calibration.

    Returns:
        The calibration, thresholds, probabilities and report.

    Raises:
        DataError: bad shapes, unknown policy or method.
    """
    if method == NO_CALIBRATION:
        calibration: Calibration | None = None
    elif method in ("temperature", "platt"):
        calibration = fit_calibration(targets, logits, method=method, fitted_on=fitted_on)
    else:
        raise DataError(f"unknown calibration method {method!r} (temperature, platt, none)")
    probs = calibrated_probabilities(logits, calibration)
    raw = calibrated_probabilities(logits, None)
    thresholds = tuple(
        metrics.choose_threshold(targets[:, i], probs[:, i], policy)
        if 0 < targets[:, i].sum() < len(targets)
        else 0.5
        for i in range(len(labels))
    )
    report: dict[str, Any] = {"n": len(targets)}
    if len(labels) == 1:
        binary = metrics.binary_report(
            targets[:, 0], probs[:, 0], thresholds[0], n_boot=n_boot, seed=seed, groups=groups
        )
        report.update(binary.as_dict())
        report["ece_uncalibrated"] = metrics.expected_calibration_error(targets[:, 0], raw[:, 0])[0]
    else:
        report["auc"] = metrics.mean_auc(targets, probs)
        report["per_label_auc"] = metrics.per_label_auc(targets, probs, labels)
    if calibration is not None:
        report["calibration"] = calibration.model_dump()
    return ValidationOutcome(calibration, thresholds, probs, raw, report)


def validation_metrics(report: dict[str, Any], extra: dict[str, float]) -> dict[str, float]:
    """The manifest's ``validation_metrics``: the report's finite numbers plus ``extra``."""
    values = {
        k: float(v)
        for k, v in report.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }
    values.update(extra)
    return values


def write_validation(
    out: Path,
    manifest: ModelManifest,
    outcome: ValidationOutcome,
    targets: np.ndarray,
    report: dict[str, Any],
) -> None:
    """Write ``manifest.json``, ``metrics.json``, ``val_predictions.csv`` and the validation plots.

    ``val_predictions.csv`` holds the calibrated probability (what serving reports) and
    the uncalibrated one. Plots are a convenience: a plotting failure is logged, not raised.
    """
    from dicomnode.training import plots

    write_manifest(manifest, out)
    (out / METRICS_FILENAME).write_text(json.dumps(jsonable(report), indent=2) + "\n", encoding="utf-8")
    rows = "".join(
        f"{t:.0f},{p:.6f},{r:.6f}\n" for t, p, r in zip(targets[:, 0], outcome.probs[:, 0], outcome.raw_probs[:, 0])
    )
    (out / "val_predictions.csv").write_text("target,probability,uncalibrated_probability\n" + rows, encoding="utf-8")
    if len(manifest.labels) != 1:
        return
    try:
        y, p = targets[:, 0], outcome.probs[:, 0]
        curves = {manifest.name: (y, p)}
        plots.plot_roc(curves, out / "roc.png")
        plots.plot_pr(curves, out / "pr.png")
        matrix = metrics.confusion(y, p, outcome.thresholds[0]).matrix()
        plots.plot_confusion(matrix, ("normal", manifest.labels[0]), out / "confusion.png")
        before = outcome.raw_probs[:, 0] if outcome.calibration is not None else None
        plots.plot_reliability(y, p, out / "reliability.png", y_prob_before=before)
    except Exception:  # plots are a convenience; never lose a model over them
        logger.exception("could not draw the plots")


def jsonable(value: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class CalibrateResult:
    """What ``dicomnode calibrate`` changed."""

    folder: Path
    before: ModelManifest
    after: ModelManifest
    report: dict[str, Any]


def calibrate_model(
    model: str,
    data: Path,
    *,
    fmt: DataFormat = DataFormat.AUTO,
    images_dir: Path | None = None,
    method: str = "temperature",
    n_boot: int = 1000,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = False,
) -> CalibrateResult:
    """Post-hoc calibration of an existing model folder on its own validation split.

    Re-carves the manifest's grouped validation split (seed and fraction from the
    manifest), predicts logits, then runs :func:`choose_on_validation` with the
    manifest's ``threshold_policy`` and rewrites ``manifest.json``, ``metrics.json``,
    ``val_predictions.csv`` and the plots. The weights are not touched. For the same
    data, device and batch size this gives what ``train`` writes.

    Args:
        model: model name or manifest path/folder.
        data: the training data the model was trained on (its validation part is re-carved).
        fmt: dataset layout.
        images_dir: image folder of the CSV formats.
        method: ``temperature``, ``platt`` or ``none``.
        n_boot: bootstrap resamples.
        batch_size: inference batch size (training uses 64).
        device: torch device.
        progress: progress bar on stderr.

    Raises:
        ModelError: the model cannot be loaded.
        DataError: the data cannot be read, or the re-carved split does not match the manifest.
    """
    from dicomnode.inference.registry import is_cnn, load_model, resolve_manifest
    from dicomnode.training.loop import predict_probs

    loaded = resolve_manifest(model)
    manifest = loaded.manifest
    vm, split_info = manifest.validation_metrics, manifest.validation_split
    seed = int(split_info.get("seed", vm.get("split_seed", 0)))
    val_fraction = float(split_info.get("val_fraction", vm.get("val_fraction", 0.15)))
    val = select_split(data, Split.VAL, fmt=fmt, val_fraction=val_fraction, seed=seed, images_dir=images_dir)
    _check_same_split(val, manifest)
    val.cache_images = True
    torch_model = load_model(loaded, device)
    _, logits = predict_probs(
        torch_model, val, manifest.preprocessing, batch_size=batch_size, device=device,
        channels_last=is_cnn(manifest.architecture), progress=progress,
    )
    targets = _aligned_targets(val, manifest)
    outcome = choose_on_validation(
        targets, logits, manifest.labels, manifest.threshold_policy, method=method,
        groups=val.groups, n_boot=n_boot, seed=seed, fitted_on=fitted_on_text(split_info, len(val)),
    )
    previous = _previous_report(loaded.folder)
    report: dict[str, Any] = {"n": len(val)}
    if "best_epoch" in previous or "best_epoch" in vm:
        report["best_epoch"] = int(previous.get("best_epoch", vm.get("best_epoch", 0)))
    report.update(outcome.report)
    extra = {"val_fraction": val_fraction, "split_seed": float(seed)}
    updated = manifest.model_copy(
        update={
            "thresholds": outcome.thresholds,
            "calibration": outcome.calibration,
            "validation_metrics": validation_metrics(report, extra),
            "validation_split": {**split_info, "ci_method": str(report.get("ci_method", ""))},
        }
    )
    ModelManifest.model_validate(updated.model_dump())
    write_validation(loaded.folder, updated, outcome, targets, report)
    return CalibrateResult(folder=loaded.folder, before=manifest, after=updated, report=report)


def fitted_on_text(split: dict[str, Any], n: int) -> str:
    """One line saying which validation split a calibration was fitted on."""
    method = split.get("method", "validation split")
    return (
        f"validation split ({method}, seed {split.get('seed', '?')}, fraction {split.get('val_fraction', '?')}), "
        f"{n} images, minimising NLL"
    )


def _check_same_split(val: LabeledImages, manifest: ModelManifest) -> None:
    expected = manifest.validation_split.get("n_val_images", manifest.validation_metrics.get("n"))
    if expected is not None and int(float(expected)) != len(val):
        raise DataError(
            f"the re-carved validation split has {len(val)} images but the manifest's had {int(float(expected))}: "
            "pass the data the model was trained on (same --format)"
        )


def _aligned_targets(data: LabeledImages, manifest: ModelManifest) -> np.ndarray:
    from dicomnode.training.evaluate import align_labels

    return np.asarray(data.targets[:, align_labels(data, manifest.labels, manifest.name)], dtype=np.float32)


def _previous_report(folder: Path) -> dict[str, Any]:
    file = folder / METRICS_FILENAME
    if not file.is_file():
        return {}
    try:
        loaded = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {file}: {exc}") from exc
    return loaded if isinstance(loaded, dict) else {}
