"""Classification metrics (numpy only; the tests check them against scikit-learn).

Conventions: ``y_true`` is a (N,) array of 0/1 labels, ``y_score`` a (N,) array of
probabilities (or any monotone score); a sample is called positive when
``y_score >= threshold``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dicomnode.errors import DataError


def _as_binary(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if t.shape != s.shape:
        raise DataError(f"labels {t.shape} and scores {s.shape} differ in length")
    return t, s


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties).

    Returns:
        AUC in [0, 1], or NaN when only one class is present.
    """
    t, s = _as_binary(y_true, y_score)
    n_pos = float(t.sum())
    n_neg = float(t.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # mid-ranks for ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    mid = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(mid, counts)
    u = ranks[t == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points at every distinct score.

    Returns:
        (fpr, tpr, thresholds), each (K+1,), thresholds decreasing; the first point is
        (0, 0) at threshold +inf (as in scikit-learn without dropping intermediate points).
    """
    t, s = _as_binary(y_true, y_score)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, t_sorted = s[order], t[order]
    distinct = np.flatnonzero(np.diff(s_sorted)) if s.size else np.empty(0, dtype=np.int64)
    ends = np.r_[distinct, s.size - 1] if s.size else np.empty(0, dtype=np.int64)
    tps = np.cumsum(t_sorted)[ends]
    fps = (ends + 1) - tps
    n_pos, n_neg = max(t.sum(), 1e-12), max(t.size - t.sum(), 1e-12)
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thresholds = np.r_[np.inf, s_sorted[ends]]
    return fpr, tpr, thresholds


def pr_curve(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall points at every distinct score (recall increasing).

    Returns:
        (precision, recall, thresholds), thresholds decreasing.
    """
    t, s = _as_binary(y_true, y_score)
    _, tpr, thresholds = roc_curve(t, s)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, t_sorted = s[order], t[order]
    ends = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    tps = np.cumsum(t_sorted)[ends]
    precision = tps / (ends + 1)
    return precision, tpr[1:], thresholds[1:]


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Average precision (step-wise area under the PR curve, as scikit-learn)."""
    precision, recall, _ = pr_curve(y_true, y_score)
    if recall.size == 0 or not np.isfinite(recall).all():
        return float("nan")
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class Confusion:
    """Confusion matrix counts at one threshold."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def matrix(self) -> np.ndarray:
        """(2, 2) int64, rows = truth (neg, pos), columns = prediction (neg, pos)."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]], dtype=np.int64)


def confusion(y_true: np.ndarray, y_score: np.ndarray, threshold: float) -> Confusion:
    """Counts with ``y_score >= threshold`` called positive."""
    t, s = _as_binary(y_true, y_score)
    pred = s >= threshold
    pos = t == 1
    return Confusion(
        tp=int(np.sum(pred & pos)),
        fp=int(np.sum(pred & ~pos)),
        tn=int(np.sum(~pred & ~pos)),
        fn=int(np.sum(~pred & pos)),
    )


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def expected_calibration_error(
    y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """ECE over equal-width probability bins.

    Returns:
        (ece, bin_confidence, bin_accuracy, bin_count), the arrays (n_bins,) with NaN for
        empty bins; ``bin_accuracy`` is the observed positive rate of the bin.
    """
    t, p = _as_binary(y_true, y_prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins).astype(np.float64)
    conf = np.bincount(which, weights=p, minlength=n_bins)
    acc = np.bincount(which, weights=t, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf_mean = np.where(counts > 0, conf / counts, np.nan)
        acc_mean = np.where(counts > 0, acc / counts, np.nan)
    mask = counts > 0
    ece = float(np.sum(counts[mask] * np.abs(conf_mean[mask] - acc_mean[mask])) / max(t.size, 1))
    return ece, conf_mean, acc_mean, counts


def bootstrap_auc_ci(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the ROC AUC.

    Resamples the N cases with replacement ``n_boot`` times (resamples with one class
    only are skipped) and returns the ``alpha/2`` and ``1 - alpha/2`` percentiles.

    Returns:
        (low, high); NaN when no resample had both classes.
    """
    t, s = _as_binary(y_true, y_score)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, t.size, t.size)
        tb = t[idx]
        if 0 < tb.sum() < tb.size:
            values.append(roc_auc(tb, s[idx]))
    if not values:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def youden_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 (Youden's J).

    Returns the midpoint between the chosen score and the next lower distinct score,
    so small score shifts do not flip the boundary case; clipped to [0, 1].
    """
    fpr, tpr, thresholds = roc_curve(y_true, y_score)
    j = tpr - fpr
    j[0] = -np.inf  # the +inf threshold calls nothing positive
    best = int(np.argmax(j))
    return _between(thresholds, best)


def sensitivity_threshold(y_true: np.ndarray, y_score: np.ndarray, target: float) -> float:
    """Highest threshold whose sensitivity is at least ``target`` (recall-first screens)."""
    if not 0.0 < target <= 1.0:
        raise DataError(f"target sensitivity must lie in (0, 1], got {target}")
    _, tpr, thresholds = roc_curve(y_true, y_score)
    ok = np.flatnonzero(tpr >= target - 1e-12)
    best = int(ok[0]) if ok.size else len(thresholds) - 1
    return _between(thresholds, max(best, 1))


def _between(thresholds: np.ndarray, index: int) -> float:
    value = float(thresholds[index])
    if index + 1 < thresholds.size:
        value = (value + float(thresholds[index + 1])) / 2.0
    return float(min(max(value, 0.0), 1.0))


def choose_threshold(y_true: np.ndarray, y_score: np.ndarray, policy: str) -> float:
    """Apply a threshold policy: ``youden``, ``sensitivity:0.95`` or ``fixed:0.5``.

    Raises:
        DataError: unknown policy, or a single-class validation set.
    """
    t, _ = _as_binary(y_true, y_score)
    if policy.startswith("fixed:"):
        return float(policy.split(":", 1)[1])
    if t.sum() == 0 or t.sum() == t.size:
        raise DataError("threshold choice needs both classes in the validation data")
    if policy == "youden":
        return youden_threshold(y_true, y_score)
    if policy.startswith("sensitivity:"):
        try:
            target = float(policy.split(":", 1)[1])
        except ValueError as exc:
            raise DataError(f"bad threshold policy {policy!r}") from exc
        return sensitivity_threshold(y_true, y_score, target)
    raise DataError(f"unknown threshold policy {policy!r} (youden, sensitivity:0.95, fixed:0.5)")


@dataclass(frozen=True)
class BinaryReport:
    """Metrics of one binary head on one dataset at one threshold."""

    auc: float
    auc_ci_low: float
    auc_ci_high: float
    average_precision: float
    accuracy: float
    sensitivity: float
    specificity: float
    precision: float
    f1: float
    ece: float
    threshold: float
    n: int
    n_positive: int
    tp: int
    fp: int
    tn: int
    fn: int

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready; NaN stays float NaN)."""
        return asdict(self)


def binary_report(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> BinaryReport:
    """All binary metrics at ``threshold`` (probabilities in [0, 1])."""
    t, p = _as_binary(y_true, y_prob)
    c = confusion(t, p, threshold)
    sens = _ratio(c.tp, c.tp + c.fn)
    spec = _ratio(c.tn, c.tn + c.fp)
    prec = _ratio(c.tp, c.tp + c.fp)
    f1 = _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)
    low, high = bootstrap_auc_ci(t, p, n_boot=n_boot, seed=seed) if n_boot > 0 else (float("nan"),) * 2
    return BinaryReport(
        auc=roc_auc(t, p),
        auc_ci_low=low,
        auc_ci_high=high,
        average_precision=average_precision(t, p),
        accuracy=_ratio(c.tp + c.tn, c.n),
        sensitivity=sens,
        specificity=spec,
        precision=prec,
        f1=f1,
        ece=expected_calibration_error(t, p)[0],
        threshold=float(threshold),
        n=c.n,
        n_positive=int(t.sum()),
        tp=c.tp,
        fp=c.fp,
        tn=c.tn,
        fn=c.fn,
    )


def per_label_auc(targets: np.ndarray, probs: np.ndarray, labels: tuple[str, ...]) -> dict[str, float]:
    """AUC per finding of a multi-label head ((N, L) targets and probabilities)."""
    return {name: roc_auc(targets[:, i], probs[:, i]) for i, name in enumerate(labels)}


def mean_auc(targets: np.ndarray, probs: np.ndarray) -> float:
    """Mean of the defined per-label AUCs (NaN labels ignored)."""
    values = [roc_auc(targets[:, i], probs[:, i]) for i in range(targets.shape[1])]
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
