"""PNG plots for training and evaluation (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.training import metrics


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """ROC curves of one or more models on one plot.

    Args:
        curves: name -> (y_true (N,), y_prob (N,)).
        path: output PNG.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y_true, y_prob) in curves.items():
        fpr, tpr, _ = metrics.roc_curve(y_true, y_prob)
        ax.plot(fpr, tpr, label=f"{name} (AUC {metrics.roc_auc(y_true, y_prob):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_pr(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """Precision-recall curves of one or more models (name -> (y_true, y_prob))."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y_true, y_prob) in curves.items():
        precision, recall, _ = metrics.pr_curve(y_true, y_prob)
        ap = metrics.average_precision(y_true, y_prob)
        ax.step(np.r_[0.0, recall], np.r_[precision[:1], precision], where="post", label=f"{name} (AP {ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], path: Path, title: str = "") -> Path:
    """Confusion matrix heat map ((2, 2) counts, rows = truth, columns = prediction)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        colour = "white" if value > matrix.max() / 2 else "black"
        ax.text(j, i, str(int(value)), ha="center", va="center", color=colour, fontsize=12)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title or "Confusion matrix")
    return _save(fig, path)


def plot_reliability(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    path: Path,
    n_bins: int = 10,
    *,
    y_prob_before: np.ndarray | None = None,
) -> Path:
    """Reliability diagram (observed positive rate per probability bin) with the ECE.

    Args:
        y_true: (N,) 0/1 labels.
        y_prob: (N,) probabilities as reported (after calibration when there is one): bars.
        path: output PNG.
        n_bins: equal-width bins.
        y_prob_before: (N,) uncalibrated probabilities, drawn as a second curve, or None.
    """
    plt = _pyplot()
    ece, conf, acc, _counts = metrics.expected_calibration_error(y_true, y_prob, n_bins)
    fig, ax = plt.subplots(figsize=(5, 5))
    centres = (np.arange(n_bins) + 0.5) / n_bins
    after = "after calibration" if y_prob_before is not None else "observed"
    ax.bar(centres, np.nan_to_num(acc), width=1.0 / n_bins, edgecolor="black", alpha=0.5, label=f"{after} (ECE {ece:.3f})")
    shown = np.isfinite(conf)
    ax.plot(conf[shown], acc[shown], marker="o", color="C0", lw=1)
    title = f"Reliability (ECE {ece:.3f})"
    if y_prob_before is not None:
        ece_b, conf_b, acc_b, _ = metrics.expected_calibration_error(y_true, y_prob_before, n_bins)
        shown_b = np.isfinite(conf_b)
        ax.plot(conf_b[shown_b], acc_b[shown_b], marker="s", color="C3", lw=1, label=f"before calibration (ECE {ece_b:.3f})")
        title = f"Reliability (ECE {ece_b:.3f} -> {ece:.3f})"
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    ax.set(xlabel="predicted probability", ylabel="observed positive rate", title=title)
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_curves(history: Sequence[Mapping[str, float]], path: Path) -> Path:
    """Training curves: losses and validation AUC per epoch."""
    plt = _pyplot()
    epochs = [int(h["epoch"]) for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    left.plot(epochs, [h["val_loss"] for h in history], marker="o", label="val loss")
    left.set(xlabel="epoch", ylabel="BCE loss", title="Loss")
    left.legend()
    right.plot(epochs, [h["val_auc"] for h in history], marker="o", color="C2", label="val AUC")
    right.set(xlabel="epoch", ylabel="AUC", title="Validation AUC")
    right.legend()
    return _save(fig, path)
