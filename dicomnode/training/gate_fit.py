"""Fit a model's input gate (:mod:`dicomnode.inference.gate`) and write it into its folder.

``dicomnode gate fit --model NAME_OR_DIR --data DATA`` calls :func:`fit_gate`:

1. pooled pre-logits features of up to ``max_images`` training images (the training
   split the model used, re-carved with the manifest's seed and fraction), each once
   as is and ``augment_copies`` times strongly augmented (crop, rotation, CLAHE,
   contrast, gamma), so adult, PA and differently exposed chests stay in distribution;
2. the PPCA-Mahalanobis score fitted on them (Ledoit-Wolf covariance);
3. a logistic regression upright vs inverted on the same training features (the only
   negatives used in fitting: inverted training chests);
4. the threshold: the smallest score that lets ``target_acceptance`` of the grouped
   validation chests through; the acceptance is also measured two-fold (threshold from
   one half of the validation patients, measured on the other), which is the honest figure;
5. ``gate.safetensors`` and the manifest's ``gate`` section (weights untouched).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dicomnode.errors import DataError
from dicomnode.training.augment import AugmentConfig, augment_gray

if TYPE_CHECKING:
    import torch

    from dicomnode.inference.manifest import GateSpec, LoadedManifest, Preprocessing
    from dicomnode.training.datasets import DataFormat, LabeledImages

logger = logging.getLogger(__name__)

GATE_AUGMENT = AugmentConfig(
    clahe_p=0.5, flip_p=0.5, rotate_deg=12.0, crop_scale=(0.5, 1.0), crop_ratio=(0.75, 1.33),
    brightness=0.12, contrast=0.35, gamma=0.45,
)
"""Stronger than training augmentation: the gate must accept chests unlike Kermany's."""


@dataclass(frozen=True)
class GateFitConfig:
    """Options of :func:`fit_gate`.

    Attributes:
        model: model name (``models/<name>``) or manifest path.
        data: the dataset the model was trained on.
        max_images: training images used for the fit (random, seeded), before augmentation.
        augment_copies: augmented copies per training image.
        n_components: k of the PPCA covariance.
        target_acceptance: fraction of validation chests that must pass.
        batch_size: images per forward pass.
        device: ``cpu``, ``cuda``, ``auto``.
        seed: subset and augmentation seed.
        fmt: dataset format; images_dir: image folder for CSV formats.
    """

    model: str
    data: Path
    max_images: int = 1500
    augment_copies: int = 1
    n_components: int = 64
    target_acceptance: float = 0.99
    batch_size: int = 64
    device: str = "cpu"
    seed: int = 0
    fmt: DataFormat | None = None
    images_dir: Path | None = None


@dataclass
class GateFitResult:
    """What :func:`fit_gate` wrote and measured."""

    manifest_path: Path
    spec: GateSpec
    val_scores: np.ndarray = field(repr=False)


def split_params(loaded: LoadedManifest) -> tuple[float, int]:
    """(val_fraction, seed) of the split the model was trained with (default 0.15, 0)."""
    split = loaded.manifest.validation_split
    metrics = loaded.manifest.validation_metrics
    fraction = float(split.get("val_fraction", metrics.get("val_fraction", 0.15)))
    seed = int(split.get("seed", metrics.get("split_seed", 0)))
    return fraction, seed


def features_of_grays(
    model: torch.nn.Module,
    grays: Sequence[np.ndarray] | Callable[[int], np.ndarray],
    n: int,
    pre: Preprocessing,
    *,
    device: torch.device,
    batch_size: int = 64,
    invert: bool = False,
) -> np.ndarray:
    """Pooled pre-logits features of gray images, ``(n, D)`` float32.

    Args:
        grays: a sequence of ``(H, W)`` gray images in [0, 1] or a function index -> image.
        n: number of images.
        invert: feed ``1 - gray`` instead.
    """
    import torch

    from dicomnode.inference.gate import pooled_features
    from dicomnode.inference.preprocess import gray_to_input

    get = grays if callable(grays) else grays.__getitem__
    chunks: list[np.ndarray] = []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        batch = np.empty((stop - start, pre.in_chans, pre.input_size, pre.input_size), dtype=np.float32)
        for row, i in enumerate(range(start, stop)):
            gray = get(i)
            batch[row] = gray_to_input(1.0 - gray if invert else gray, pre)
        _logits, feats = pooled_features(model, torch.from_numpy(batch).to(device))
        chunks.append(feats)
    return np.concatenate(chunks) if chunks else np.empty((0, 0), dtype=np.float32)


def inputs_of_grays(grays: Sequence[np.ndarray], pre: Preprocessing) -> np.ndarray:
    """``(N, C, S, S)`` prepared inputs of gray images."""
    from dicomnode.inference.preprocess import gray_to_input

    return np.stack([gray_to_input(g, pre) for g in grays]) if grays else np.empty((0,), np.float32)


def threshold_for(scores: np.ndarray, target: float) -> float:
    """Smallest threshold with at least ``target`` of ``scores`` at or below it."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    k = max(1, math.ceil(target * ordered.size))
    return float(ordered[k - 1])


def two_fold_acceptance(scores: np.ndarray, groups: Sequence[str] | None, target: float) -> float:
    """Acceptance when the threshold comes from one half of the patients and is measured on the other."""
    n = scores.size
    keys = list(groups) if groups is not None else [str(i) for i in range(n)]
    import hashlib

    half = np.array([int(hashlib.sha1(k.encode()).hexdigest(), 16) % 2 for k in keys])
    passed = 0
    total = 0
    for fold in (0, 1):
        fit, test = scores[half == fold], scores[half != fold]
        if fit.size == 0 or test.size == 0:
            continue
        thr = threshold_for(fit, target)
        passed += int((test <= thr).sum())
        total += test.size
    return passed / total if total else float("nan")


def _gray_getter(data: LabeledImages, indices: np.ndarray, rng: np.random.Generator | None, max_side: int) -> Callable[[int], np.ndarray]:
    def get(i: int) -> np.ndarray:
        gray = data.gray(int(indices[i]))
        if rng is not None:
            gray = augment_gray(gray, rng, GATE_AUGMENT, max_side=max_side)
        return gray

    return get


def fit_gate(config: GateFitConfig) -> GateFitResult:
    """Fit the gate of ``config.model`` on ``config.data`` and write it into the model folder.

    Raises:
        ModelError: the model cannot be loaded.
        DataError: the data cannot be read or the split is empty.
    """
    from sklearn.linear_model import LogisticRegression

    from dicomnode.inference.gate import (
        GATE_FILENAME,
        GATE_METHOD,
        GateParams,
        InputGate,
        fit_ppca,
        write_params,
    )
    from dicomnode.inference.manifest import GateSpec, write_manifest
    from dicomnode.inference.registry import load_model, resolve_manifest
    from dicomnode.inference.runner import select_device
    from dicomnode.training.datasets import DataFormat, Split, select_split

    loaded = resolve_manifest(config.model)
    manifest = loaded.manifest
    pre = manifest.preprocessing
    device = select_device(config.device)
    model = load_model(loaded, device, verify_sha256=True)
    fraction, seed = split_params(loaded)
    fmt = config.fmt or DataFormat.AUTO
    train = select_split(config.data, Split.TRAIN, fmt=fmt, val_fraction=fraction, seed=seed, images_dir=config.images_dir)
    val = select_split(config.data, Split.VAL, fmt=fmt, val_fraction=fraction, seed=seed, images_dir=config.images_dir)
    if len(train) == 0 or len(val) == 0:
        raise DataError("the gate needs training and validation images")
    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.choice(len(train), size=min(config.max_images, len(train)), replace=False))
    max_side = 2 * pre.input_size
    kw = {"device": device, "batch_size": config.batch_size}
    logger.info("gate: features of %d training images (+%d augmented copies)", chosen.size, config.augment_copies)
    parts = [features_of_grays(model, _gray_getter(train, chosen, None, max_side), chosen.size, pre, **kw)]  # type: ignore[arg-type]
    inverted_parts = [features_of_grays(model, _gray_getter(train, chosen, None, max_side), chosen.size, pre, invert=True, **kw)]  # type: ignore[arg-type]
    for _ in range(config.augment_copies):
        get = _gray_getter(train, chosen, rng, max_side)
        augmented = [get(i) for i in range(chosen.size)]
        parts.append(features_of_grays(model, augmented, chosen.size, pre, **kw))  # type: ignore[arg-type]
        inverted_parts.append(features_of_grays(model, augmented, chosen.size, pre, invert=True, **kw))  # type: ignore[arg-type]
    fit_features = np.concatenate(parts)
    inverted_features = np.concatenate(inverted_parts)
    mean, components, eigenvalues, residual = fit_ppca(fit_features, config.n_components)
    scale = fit_features.std(axis=0).astype(np.float32) + np.float32(1e-6)
    lr_x = (np.concatenate([fit_features, inverted_features]) - mean) / scale
    lr_y = np.concatenate([np.zeros(len(fit_features)), np.ones(len(inverted_features))])
    lr = LogisticRegression(C=0.05, max_iter=3000).fit(lr_x, lr_y)
    params = GateParams(
        mean=mean, components=components, eigenvalues=eigenvalues, residual_variance=residual,
        inverted_weights=lr.coef_[0].astype(np.float32), inverted_bias=float(lr.intercept_[0]), scale=scale,
    )

    logger.info("gate: features of %d validation images", len(val))
    val_features = features_of_grays(model, val.gray, len(val), pre, **kw)  # type: ignore[arg-type]
    val_scores = params.score(val_features)
    threshold = threshold_for(val_scores, config.target_acceptance)
    folder = loaded.folder
    sha = write_params(params, folder / GATE_FILENAME)
    spec = GateSpec(
        method=GATE_METHOD, file=GATE_FILENAME, sha256=sha, threshold=threshold,
        feature_dim=params.dim, n_components=int(eigenvalues.shape[0]),
        fit_set=(
            f"{train.description}: training split (val_fraction {fraction}, seed {seed}), "
            f"{chosen.size} images + {config.augment_copies} strongly augmented copies each "
            f"(seed {config.seed}); inverted copies for the inverted-grayscale regression"
        ),
        n_fit=int(fit_features.shape[0]), target_acceptance=config.target_acceptance,
        n_val=len(val),
    )
    # measured acceptance with every check (content, score, inverted-chest regression)
    gate = InputGate(params, spec, pre)
    accepted = 0
    for start in range(0, len(val), config.batch_size):
        idx = range(start, min(len(val), start + config.batch_size))
        inputs = inputs_of_grays([val.gray(i) for i in idx], pre)
        accepted += sum(v.assessable for v in gate.first_pass(inputs, val_features[start : start + len(idx)]))
    spec = spec.model_copy(update={
        "val_acceptance": accepted / len(val),
        "validation": {
            "val_acceptance_score_only": float((val_scores <= threshold).mean()),
            "val_acceptance_two_fold": two_fold_acceptance(val_scores, val.groups, config.target_acceptance),
            "val_score_median": float(np.median(val_scores)),
            "fit_score_median": float(np.median(params.score(fit_features))),
        },
    })
    updated = manifest.model_copy(update={"gate": spec})
    path = write_manifest(updated, folder)
    logger.info("gate written: %s (threshold %.3f, validation acceptance %.4f)", folder / GATE_FILENAME, threshold, spec.val_acceptance)
    return GateFitResult(manifest_path=path, spec=spec, val_scores=val_scores)
