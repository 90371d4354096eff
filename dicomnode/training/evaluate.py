"""Evaluate one or more registered models on a labelled dataset.

Each model predicts through the serving :class:`~dicomnode.inference.runner.ModelRunner`
(same preprocessing, precision, calibration and decision thresholds as ``serve``: the
probabilities are the ones the node would report); the report holds AUC,
accuracy, sensitivity and specificity with bootstrap 95% CIs (patients resampled when the
data carries a patient key),
precision, F1, the confusion counts and ECE (binary heads), or per-finding AUCs
(multi-label heads). With ``out`` set, ROC and PR curves of all models share one
plot, and each model gets a confusion matrix and a reliability diagram.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomnode.errors import DataError
from dicomnode.training import metrics
from dicomnode.training.datasets import DataFormat, LabeledImages, Split, select_split

if TYPE_CHECKING:
    from dicomnode.inference.runner import ModelRunner

logger = logging.getLogger(__name__)


@dataclass
class ModelEvaluation:
    """One model's results on one dataset."""

    name: str
    report: dict[str, Any]
    y_true: np.ndarray = field(repr=False)
    y_prob: np.ndarray = field(repr=False)


@dataclass
class EvaluationResult:
    """All models' results; ``summary()`` is the JSON ``evaluate --json`` prints."""

    data: str
    split: str
    evaluations: list[ModelEvaluation]

    def summary(self) -> dict[str, Any]:
        """One model: its flat report. Several: ``{model name: report, ...}``."""
        if len(self.evaluations) == 1:
            single: dict[str, Any] = _clean(self.evaluations[0].report)
            return single
        return {e.name: _clean(e.report) for e in self.evaluations}


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def align_labels(data: LabeledImages, labels: tuple[str, ...], model_name: str) -> np.ndarray:
    """Column indices of ``data`` for each model label.

    Raises:
        DataError: a model label is not among the data's labels.
    """
    if len(labels) == 1 and len(data.labels) == 1:
        if labels[0] != data.labels[0]:
            logger.warning(
                "model %s predicts %r, the data's positive class is %r: comparing them",
                model_name, labels[0], data.labels[0],
            )
        return np.array([0])
    columns = []
    for label in labels:
        if label not in data.labels:
            raise DataError(f"model {model_name} label {label!r} is not in the data labels {data.labels}")
        columns.append(data.labels.index(label))
    return np.asarray(columns)


def predict_dataset(
    runner: ModelRunner, data: LabeledImages, *, batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    """The probabilities the node would report for every image of ``data``.

    Images go through the serving preprocessing (``preprocess.gray_to_input`` with the
    manifest's settings) and :meth:`ModelRunner.predict` (float32, calibrated).

    Args:
        runner: the loaded model.
        data: labelled images.
        batch_size: images per forward pass.
        progress: progress bar on stderr.

    Returns:
        (N, L) float32, row ``i`` for image ``i``, columns in ``runner.labels`` order.

    Raises:
        DataError: an image cannot be read.
        InferenceError: the forward pass failed.
    """
    from dicomnode.training.loop import _bar, batch_inputs

    pre = runner.manifest.preprocessing
    out = np.empty((len(data), len(runner.labels)), dtype=np.float32)
    bar = _bar(total=len(data), desc="predict", unit="img") if progress else None
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(len(data), start + batch_size))
        predictions = runner.predict(batch_inputs(data, idx, pre, None, None))
        out[idx] = [p.probabilities for p in predictions]
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return out


def evaluate_models(
    models: list[str],
    data_path: Path,
    *,
    fmt: DataFormat = DataFormat.AUTO,
    split: Split = Split.ALL,
    val_fraction: float | None = None,
    seed: int | None = None,
    images_dir: Path | None = None,
    out: Path | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    n_boot: int = 1000,
    progress: bool = False,
) -> EvaluationResult:
    """Evaluate models (names or manifest paths) on ``data_path``.

    Args:
        models: model names (``default``) or manifest paths, at least one.
        data_path: dataset (image folder with class subfolders, npz, CSV).
        fmt: dataset layout (auto-detected by default).
        split: ``all`` (default), or ``train``/``val`` to re-carve the training split,
            or ``test`` when the data has its own test part.
        val_fraction: fraction of the carved validation split; default: the first
            model's manifest value (``validation_metrics.val_fraction``), else 0.15.
        seed: seed of the carved split; default: the first model's manifest value, else 0.
        images_dir: image folder for the CSV formats.
        out: folder for ``report.json``, predictions and plots (None: nothing written).
        batch_size: inference batch size.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        n_boot: bootstrap resamples for the 95 % CIs of AUC, accuracy, sensitivity and
            specificity (patients are resampled when the data carries a patient key; the
            bootstrap seed is ``seed``, as in training).
        progress: show a progress bar on stderr.

    Returns:
        Per-model reports and predictions.

    Raises:
        ConfigError: bad device.
        ModelError: a model cannot be resolved or loaded.
        DataError: the dataset cannot be read, or labels do not match.
        InferenceError: a forward pass failed.
    """
    from dicomnode.inference.registry import resolve_manifest
    from dicomnode.inference.runner import ModelRunner

    if not models:
        raise DataError("no model to evaluate")
    loaded = [resolve_manifest(m) for m in models]
    first = loaded[0].manifest.validation_metrics
    if val_fraction is None:
        val_fraction = float(first.get("val_fraction", 0.15))
    if seed is None:
        seed = int(first.get("split_seed", 0))
    data = select_split(data_path, split, fmt=fmt, val_fraction=val_fraction, seed=seed, images_dir=images_dir)
    data.cache_images = len(loaded) > 1
    logger.info("evaluating %d model(s) on %d images (%s, split %s)", len(loaded), len(data), data_path, split)
    evaluations: list[ModelEvaluation] = []
    names_seen: set[str] = set()
    for item in loaded:
        manifest = item.manifest
        name = manifest.name if manifest.name not in names_seen else f"{manifest.name}@{item.folder}"
        names_seen.add(name)
        runner = ModelRunner.from_loaded(item, device=device)
        columns = align_labels(data, manifest.labels, name)
        probs = predict_dataset(runner, data, batch_size=batch_size, progress=progress)
        targets = data.targets[:, columns]
        report: dict[str, Any] = {"model": name, "architecture": manifest.architecture}
        if len(manifest.labels) == 1:
            binary = metrics.binary_report(
                targets[:, 0], probs[:, 0], manifest.thresholds[0], n_boot=n_boot, seed=seed, groups=data.groups
            )
            report.update(binary.as_dict())
        else:
            per_label = metrics.per_label_auc(targets, probs, manifest.labels)
            report["auc"] = metrics.mean_auc(targets, probs)
            report["per_label_auc"] = per_label
            report["n"] = len(data)
            accuracy = float(np.mean((probs >= np.asarray(manifest.thresholds)) == (targets == 1)))
            report["accuracy"] = accuracy
            report["threshold"] = list(manifest.thresholds)
        report["calibrated"] = manifest.calibration is not None
        report["split"] = split.value
        if split in (Split.TRAIN, Split.VAL):
            report["val_fraction"] = val_fraction
            report["split_seed"] = seed
        evaluations.append(ModelEvaluation(name=name, report=report, y_true=targets[:, 0], y_prob=probs[:, 0]))
    result = EvaluationResult(data=str(data_path), split=split.value, evaluations=evaluations)
    if out is not None:
        write_outputs(result, out)
    return result


def write_outputs(result: EvaluationResult, out: Path) -> None:
    """``report.json``, ``predictions_<model>.csv`` and PNG plots under ``out``."""
    from dicomnode.training import plots

    out.mkdir(parents=True, exist_ok=True)
    payload = {"data": result.data, "split": result.split, "models": [_clean(e.report) for e in result.evaluations]}
    (out / "report.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    curves = {e.name: (e.y_true, e.y_prob) for e in result.evaluations}
    for e in result.evaluations:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in e.name)
        lines = "".join(f"{t:.0f},{p:.6f}\n" for t, p in zip(e.y_true, e.y_prob))
        (out / f"predictions_{safe}.csv").write_text("target,probability\n" + lines, encoding="utf-8")
        threshold = e.report.get("threshold")
        if isinstance(threshold, float):
            matrix = metrics.confusion(e.y_true, e.y_prob, threshold).matrix()
            plots.plot_confusion(matrix, ("normal", "positive"), out / f"confusion_{safe}.png", title=e.name)
            plots.plot_reliability(e.y_true, e.y_prob, out / f"reliability_{safe}.png")
    if all(0 < e.y_true.sum() < e.y_true.size for e in result.evaluations):
        plots.plot_roc(curves, out / "roc.png")
        plots.plot_pr(curves, out / "pr.png")


def format_table(result: EvaluationResult) -> str:
    """A plain-text side-by-side table of the main figures."""
    with_ci = ("auc", "accuracy", "sensitivity", "specificity")
    columns = (*with_ci, "precision", "f1", "ece", "threshold", "n")
    cell = 22
    width = max(12, *(len(e.name) + 2 for e in result.evaluations))
    lines = ["model".ljust(width) + "".join(c[:cell - 1].rjust(cell if c in with_ci else 11) for c in columns)]
    for e in result.evaluations:
        cells = []
        for c in columns:
            v = e.report.get(c)
            w = cell if c in with_ci else 11
            if isinstance(v, bool) or v is None:
                text = "-"
            elif isinstance(v, int):
                text = str(v)
            elif isinstance(v, float):
                text = f"{v:.4f}"
                low, high = e.report.get(f"{c}_ci_low"), e.report.get(f"{c}_ci_high")
                if c in with_ci and isinstance(low, float) and isinstance(high, float) and math.isfinite(low):
                    text += f" ({low:.3f}-{high:.3f})"
            else:
                text = "-"
            cells.append(text.rjust(w))
        lines.append(e.name.ljust(width) + "".join(cells))
    methods = {str(e.report.get("ci_method")) for e in result.evaluations if e.report.get("ci_method")}
    lines.extend(f"95 % CIs: {m}" for m in sorted(methods))
    return "\n".join(lines)
