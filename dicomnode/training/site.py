"""Re-pick a model's decision threshold on a site's own labelled images.

``dicomnode site-threshold`` runs the model exactly as the node serves it
(:class:`~dicomnode.inference.runner.ModelRunner`, the serving preprocessing and the
manifest's calibration) on the site's data, chooses a threshold with a policy, and
writes a copy of the model folder: the same weights (same sha256), a manifest with the
new threshold, a ``threshold_policy`` saying where it came from, a version suffix and the
site's figures (AUC, sensitivity and specificity with 95 % CIs at the new and at the
shipped threshold). The source folder is never modified; an existing output is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.errors import DataError, ModelError
from dicomnode.inference.manifest import ModelManifest, SiteValidation, sha256_file, write_manifest
from dicomnode.training import metrics
from dicomnode.training.calibrate import jsonable
from dicomnode.training.datasets import DataFormat, Split, select_split

logger = logging.getLogger(__name__)

SITE_METRICS_FILENAME = "site_metrics.json"
_FIGURES = (
    "auc", "auc_ci_low", "auc_ci_high", "accuracy", "accuracy_ci_low", "accuracy_ci_high",
    "sensitivity", "sensitivity_ci_low", "sensitivity_ci_high", "specificity",
    "specificity_ci_low", "specificity_ci_high", "precision", "ece", "threshold", "tp", "fp", "tn", "fn",
)


@dataclass
class SiteResult:
    """The written site model and its figures."""

    folder: Path
    manifest: ModelManifest
    at_new: metrics.BinaryReport
    at_source: metrics.BinaryReport


def site_slug(text: str, limit: int = 16) -> str:
    """A short ``[a-z0-9-]`` tag for the version suffix, e.g. ``"Hospital A/2025"`` -> ``"hospital-a-2025"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return slug or "site"


def site_threshold(
    model: str,
    data_path: Path,
    out: Path,
    *,
    policy: str = "youden",
    fmt: DataFormat = DataFormat.AUTO,
    images_dir: Path | None = None,
    site_name: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = False,
) -> SiteResult:
    """Choose a binary model's threshold on site data and write a copy of the model with it.

    Args:
        model: model name or manifest path/folder (the source; never modified).
        data_path: the site's labelled images, any layout ``train`` reads.
        out: new model folder; must not exist.
        policy: ``youden``, ``sensitivity:0.95``, ``specificity:0.9`` (``fixed:`` is refused:
            it needs no data).
        fmt: dataset layout.
        images_dir: image folder of the CSV formats.
        site_name: tag for the version suffix (default: the ``out`` folder name).
        n_boot: bootstrap resamples (patients when the data has a patient key).
        seed: bootstrap seed.
        batch_size: images per forward pass.
        device: torch device for the model.
        progress: progress bar on stderr.

    Returns:
        The new folder, its manifest and the figures at both thresholds.

    Raises:
        DataError: ``out`` exists, the data has one class only, the policy is unknown,
            or the data's labels do not fit the model.
        ModelError: the model cannot be loaded or is not binary.
    """
    from dicomnode.inference.registry import resolve_manifest
    from dicomnode.inference.runner import ModelRunner
    from dicomnode.training.evaluate import align_labels, predict_dataset

    if out.exists():
        raise DataError(f"{out} already exists: site-threshold writes a new model folder and never overwrites one")
    if policy.startswith("fixed:"):
        raise DataError("a fixed threshold needs no site data: set model.thresholds in the node's config instead")
    loaded = resolve_manifest(model)
    source = loaded.manifest
    if source.task != "binary":
        raise ModelError(f"site-threshold supports binary models; {source.name!r} is {source.task}")
    data = select_split(data_path, Split.ALL, fmt=fmt, images_dir=images_dir)
    column = int(align_labels(data, source.labels, source.name)[0])
    y = np.asarray(data.targets[:, column], dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise DataError(
            f"site data has one class only ({y.size - n_pos} negative, {n_pos} {source.labels[0]}): "
            "a threshold needs labelled images of both classes"
        )
    metrics.choose_threshold(np.array([0.0, 1.0]), np.array([0.2, 0.8]), policy)  # reject a bad policy early
    runner = ModelRunner.from_loaded(loaded, device=device)
    probs = predict_dataset(runner, data, batch_size=batch_size, progress=progress)[:, 0]
    new_threshold = metrics.choose_threshold(y, probs, policy)
    at_new = metrics.binary_report(y, probs, new_threshold, n_boot=n_boot, seed=seed, groups=data.groups)
    at_source = metrics.binary_report(y, probs, source.thresholds[0], n_boot=n_boot, seed=seed, groups=data.groups)
    tag = site_slug(site_name or out.name)
    description = f"{data.description}; patient key: {data.group_source}"
    site = SiteValidation(
        data=description,
        policy=policy,
        n=int(y.size),
        n_positive=n_pos,
        n_groups=at_new.n_groups,
        ci_method=at_new.ci_method,
        source_version=source.version,
        source_thresholds=source.thresholds,
        at_new_threshold=_figures(at_new),
        at_source_threshold=_figures(at_source),
    )
    manifest = source.model_copy(
        update={
            "version": f"{source.version}+site.{tag}",
            "thresholds": (new_threshold,),
            "threshold_policy": f"site: {policy} on {data.description}, n={y.size}",
            "site_validation": site,
        }
    )
    ModelManifest.model_validate(manifest.model_dump())
    _write_copy(loaded.weights_path, out, manifest, y, probs, at_new, at_source)
    return SiteResult(folder=out, manifest=manifest, at_new=at_new, at_source=at_source)


def _figures(report: metrics.BinaryReport) -> dict[str, float]:
    values = report.as_dict()
    return {k: float(values[k]) for k in _FIGURES if np.isfinite(float(values[k]))}


def _write_copy(
    weights: Path,
    out: Path,
    manifest: ModelManifest,
    y: np.ndarray,
    probs: np.ndarray,
    at_new: metrics.BinaryReport,
    at_source: metrics.BinaryReport,
) -> None:
    """Write the new folder beside ``out`` and rename it into place (no half-written model)."""
    from dicomnode.training import plots

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        shutil.copy2(weights, tmp / manifest.weights)
        if sha256_file(tmp / manifest.weights) != manifest.weights_sha256:
            raise ModelError(f"the copy of {weights} does not match the manifest's sha256")
        if manifest.gate is not None:  # the input gate travels with the model
            shutil.copy2(weights.parent / manifest.gate.file, tmp / manifest.gate.file)
        write_manifest(manifest, tmp)
        payload: dict[str, Any] = {
            "model": manifest.name,
            "version": manifest.version,
            "policy": manifest.site_validation.policy if manifest.site_validation else "",
            "at_new_threshold": at_new.as_dict(),
            "at_source_threshold": at_source.as_dict(),
        }
        (tmp / SITE_METRICS_FILENAME).write_text(json.dumps(jsonable(payload), indent=2) + "\n", encoding="utf-8")
        (tmp / "site_predictions.csv").write_text(
            "target,probability\n" + "".join(f"{t:.0f},{p:.6f}\n" for t, p in zip(y, probs)), encoding="utf-8"
        )
        try:
            plots.plot_roc({f"{manifest.name} (site)": (y, probs)}, tmp / "site_roc.png")
            plots.plot_confusion(
                metrics.confusion(y, probs, at_new.threshold).matrix(),
                ("normal", manifest.labels[0]), tmp / "site_confusion.png",
            )
            plots.plot_reliability(y, probs, tmp / "site_reliability.png")
        except Exception:  # plots are a convenience
            logger.exception("could not draw the site plots")
        if out.exists():
            raise DataError(f"{out} appeared while writing: not overwriting it")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
