"""Classification metrics (numpy only; the tests check them against scikit-learn).

Conventions: ``y_true`` is a (N,) array of 0/1 labels, ``y_score`` a (N,) array of
probabilities (or any monotone score); a sample is called positive when
``y_score >= threshold``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


def _resample_indices(
    n: int, groups: Sequence[str] | None, n_boot: int, seed: int
) -> Iterator[np.ndarray]:
    """``n_boot`` bootstrap index arrays: images with replacement, or whole patients.

    Without groups this draws exactly what :func:`bootstrap_auc_ci` always drew
    (``rng.integers(0, n, n)`` per resample). With groups it draws as many patients as
    there are, with replacement, and takes all images of each (a cluster bootstrap).
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(n_boot):
            yield rng.integers(0, n, n)
        return
    if len(groups) != n:
        raise DataError(f"{len(groups)} group keys for {n} samples")
    _, unit_of = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    order = np.argsort(unit_of, kind="stable")
    counts = np.bincount(unit_of)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    members = [order[a : a + c] for a, c in zip(starts, counts)]
    for _ in range(n_boot):
        chosen = rng.integers(0, counts.size, counts.size)
        yield np.concatenate([members[g] for g in chosen])


def bootstrap_cis(
    y_true: np.ndarray,
    y_score: np.ndarray,
    threshold: float,
    *,
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of AUC, accuracy, sensitivity and specificity.

    One set of resamples serves all four figures (accuracy, sensitivity and specificity
    at ``threshold``). Resamples with one class only are skipped (AUC, sensitivity and
    specificity are undefined there). With ``groups`` (one patient key per image) whole
    patients are resampled, so images of one patient stay together (cluster bootstrap);
    without, images are resampled and the AUC interval equals :func:`bootstrap_auc_ci`.

    Args:
        y_true: (N,) 0/1 labels.
        y_score: (N,) probabilities.
        threshold: decision threshold (``score >= threshold`` is positive).
        groups: N patient keys, or None for a per-image bootstrap.
        n_boot: number of resamples.
        alpha: 0.05 gives 95 % intervals.
        seed: ``numpy.random.default_rng`` seed.

    Returns:
        ``{"auc": (low, high), "accuracy": ..., "sensitivity": ..., "specificity": ...}``;
        NaN bounds when no resample had both classes.

    Raises:
        DataError: lengths differ.
    """
    t, s = _as_binary(y_true, y_score)
    pred = s >= threshold
    values: dict[str, list[float]] = {"auc": [], "accuracy": [], "sensitivity": [], "specificity": []}
    for idx in _resample_indices(t.size, groups, n_boot, seed):
        tb = t[idx]
        n_pos = float(tb.sum())
        if not 0 < n_pos < tb.size:
            continue
        pb = pred[idx]
        pos = tb == 1
        values["auc"].append(roc_auc(tb, s[idx]))
        values["accuracy"].append(float(np.mean(pb == pos)))
        values["sensitivity"].append(float(np.sum(pb & pos)) / n_pos)
        values["specificity"].append(float(np.sum(~pb & ~pos)) / (tb.size - n_pos))
    out: dict[str, tuple[float, float]] = {}
    for key, samples in values.items():
        if samples:
            low, high = np.percentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)])
            out[key] = (float(low), float(high))
        else:
            out[key] = (float("nan"), float("nan"))
    return out


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


def specificity_threshold(y_true: np.ndarray, y_score: np.ndarray, target: float) -> float:
    """Lowest threshold whose specificity is at least ``target`` (specificity-first use)."""
    if not 0.0 < target <= 1.0:
        raise DataError(f"target specificity must lie in (0, 1], got {target}")
    fpr, _, thresholds = roc_curve(y_true, y_score)
    ok = np.flatnonzero(1.0 - fpr >= target - 1e-12)
    best = int(ok[-1]) if ok.size else 0
    return _between(thresholds, max(best, 1)) if best > 0 else _above(thresholds)


def _above(thresholds: np.ndarray) -> float:
    """A threshold just above the highest score (nothing called positive), clipped to [0, 1]."""
    top = float(thresholds[1]) if thresholds.size > 1 else 1.0
    return float(min(np.nextafter(top, np.inf), 1.0))


def _between(thresholds: np.ndarray, index: int) -> float:
    value = float(thresholds[index])
    if index + 1 < thresholds.size:
        value = (value + float(thresholds[index + 1])) / 2.0
    return float(min(max(value, 0.0), 1.0))


def choose_threshold(y_true: np.ndarray, y_score: np.ndarray, policy: str) -> float:
    """Apply a threshold policy: ``youden``, ``sensitivity:0.95``, ``specificity:0.9`` or ``fixed:0.5``.

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
    if policy.startswith("specificity:"):
        try:
            target = float(policy.split(":", 1)[1])
        except ValueError as exc:
            raise DataError(f"bad threshold policy {policy!r}") from exc
        return specificity_threshold(y_true, y_score, target)
    raise DataError(
        f"unknown threshold policy {policy!r} (youden, sensitivity:0.95, specificity:0.9, fixed:0.5)"
    )


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
    accuracy_ci_low: float = float("nan")
    accuracy_ci_high: float = float("nan")
    sensitivity_ci_low: float = float("nan")
    sensitivity_ci_high: float = float("nan")
    specificity_ci_low: float = float("nan")
    specificity_ci_high: float = float("nan")
    n_groups: int = 0
    ci_method: str = ""

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
    groups: Sequence[str] | None = None,
) -> BinaryReport:
    """All binary metrics at ``threshold`` (probabilities in [0, 1]) with bootstrap 95 % CIs.

    Args:
        y_true: (N,) 0/1 labels.
        y_prob: (N,) probabilities.
        threshold: decision threshold.
        n_boot: bootstrap resamples (0: no intervals).
        seed: bootstrap seed.
        groups: N patient keys: the intervals resample patients (cluster bootstrap);
            None: they resample images.
    """
    t, p = _as_binary(y_true, y_prob)
    c = confusion(t, p, threshold)
    sens = _ratio(c.tp, c.tp + c.fn)
    spec = _ratio(c.tn, c.tn + c.fp)
    prec = _ratio(c.tp, c.tp + c.fp)
    f1 = _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)
    nan = (float("nan"), float("nan"))
    cis = bootstrap_cis(t, p, threshold, groups=groups, n_boot=n_boot, seed=seed) if n_boot > 0 else {}
    n_groups = len(set(groups)) if groups is not None else 0
    if n_boot <= 0:
        ci_method = "none"
    elif groups is not None:
        ci_method = f"percentile bootstrap over {n_groups} patients (cluster), {n_boot} resamples, seed {seed}"
    else:
        ci_method = f"percentile bootstrap over images (no patient key), {n_boot} resamples, seed {seed}"
    return BinaryReport(
        auc=roc_auc(t, p),
        auc_ci_low=cis.get("auc", nan)[0],
        auc_ci_high=cis.get("auc", nan)[1],
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
        accuracy_ci_low=cis.get("accuracy", nan)[0],
        accuracy_ci_high=cis.get("accuracy", nan)[1],
        sensitivity_ci_low=cis.get("sensitivity", nan)[0],
        sensitivity_ci_high=cis.get("sensitivity", nan)[1],
        specificity_ci_low=cis.get("specificity", nan)[0],
        specificity_ci_high=cis.get("specificity", nan)[1],
        n_groups=n_groups,
        ci_method=ci_method,
    )


def per_label_auc(targets: np.ndarray, probs: np.ndarray, labels: tuple[str, ...]) -> dict[str, float]:
    """AUC per finding of a multi-label head ((N, L) targets and probabilities)."""
    return {name: roc_auc(targets[:, i], probs[:, i]) for i, name in enumerate(labels)}


def mean_auc(targets: np.ndarray, probs: np.ndarray) -> float:
    """Mean of the defined per-label AUCs (NaN labels ignored)."""
    values = [roc_auc(targets[:, i], probs[:, i]) for i in range(targets.shape[1])]
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
