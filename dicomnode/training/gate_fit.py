"""Fit a model's input gate (:mod:`dicomnode.inference.gate`) and write it into its folder.

``dicomnode gate fit --model NAME_OR_DIR --data DATA`` calls :func:`fit_gate`:

1. pooled pre-logits features of up to ``max_images`` training images (the training
   split the model used, re-carved with the manifest's seed and fraction), each once
   as is and ``augment_copies`` times strongly augmented (crop, rotation, CLAHE,
   contrast, gamma), so adult, PA and differently exposed chests stay in distribution;
2. the PPCA-Mahalanobis score fitted on them (Ledoit-Wolf covariance);
3. the layout score (standardised ``layout_size`` thumbnails) fitted on the same images;
   no negative image is used in fitting;
4. the thresholds: both at the same validation quantile, the smallest that lets
   ``target_acceptance`` of the grouped validation chests pass every check (content,
   both scores, inversion); the acceptance is also measured two-fold (quantile chosen on
   one half of the validation patients, measured on the other), the honest figure;
5. ``gate.safetensors`` and the manifest's ``gate`` section (weights untouched).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
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
        n_components: k of the feature PPCA covariance; None = ``min(64, max(8, D // 12))``
            (64 for EfficientNet-Lite0's 1280 features, 16 for ViT-Tiny's 192).
        layout_size: thumbnail side of the layout score; layout_components: its k.
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
    n_components: int | None = None
    layout_size: int = 24
    layout_components: int = 8
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


def quantile_for(acceptance: Callable[[float], float], target: float) -> float:
    """Smallest quantile q in [target, 1] (steps of 0.0005) with ``acceptance(q) >= target``."""
    for q in np.arange(target, 1.0, 0.0005):
        if acceptance(float(q)) >= target:
            return float(q)
    return 1.0


def _halves(groups: Sequence[str] | None, n: int) -> np.ndarray:
    """0/1 per image, by a hash of its patient key (stable across runs)."""
    import hashlib

    keys = list(groups) if groups is not None else [str(i) for i in range(n)]
    return np.array([int(hashlib.sha1(k.encode()).hexdigest(), 16) % 2 for k in keys])


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
    from dicomnode.inference.gate import (
        GATE_FILENAME,
        GATE_METHOD,
        GateParams,
        InputGate,
        PpcaScore,
        content_check,
        inputs_to_gray,
        layout_vectors,
        write_params,
    )
    from dicomnode.inference.loading import select_device
    from dicomnode.inference.manifest import GateSpec, write_manifest
    from dicomnode.inference.registry import load_model, resolve_manifest
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
    originals = [train.gray(int(i)) for i in chosen]
    copies = [originals]
    for _ in range(config.augment_copies):
        get = _gray_getter(train, chosen, rng, max_side)
        copies.append([get(i) for i in range(chosen.size)])
    parts: list[np.ndarray] = []
    layout_parts: list[np.ndarray] = []
    for grays in copies:
        parts.append(features_of_grays(model, grays, len(grays), pre, **kw))  # type: ignore[arg-type]
        layout_parts.append(layout_vectors(inputs_to_gray(inputs_of_grays(grays, pre), pre), config.layout_size))
    fit_features = np.concatenate(parts)
    d = int(fit_features.shape[1])
    n_components = config.n_components or min(64, max(8, d // 12))
    fit_layout = np.concatenate(layout_parts)
    params = GateParams(
        features=PpcaScore.fit(fit_features, n_components),
        layout=PpcaScore.fit(fit_layout, config.layout_components),
    )
    logger.info("gate: features of %d validation images", len(val))
    val_grays = [val.gray(i) for i in range(len(val))]
    val_features = features_of_grays(model, val_grays, len(val), pre, **kw)  # type: ignore[arg-type]
    val_inputs = inputs_of_grays(val_grays, pre)
    probe = GateSpec(
        sha256="0" * 64, threshold=1.0, feature_dim=params.dim, n_components=n_components,
        layout_threshold=1.0, layout_size=config.layout_size, layout_components=config.layout_components,
    )
    feat, lay, lay_inv = InputGate(params, probe, pre).scores(val_inputs, val_features)
    content, _std, _corr = content_check(inputs_to_gray(val_inputs, pre), probe.min_gray_std, probe.min_neighbour_corr)
    usable = np.array([r is None for r in content])
    # upright chests fit better than their inversion (ratio < 1); keep 1.0 unless the
    # validation chests say otherwise (data without a consistent layout)
    inverted_ratio = max(1.0, 1.05 * float(np.quantile(lay / np.maximum(lay_inv, 1e-12), 0.999)))

    def accepted_at(q: float, rows: np.ndarray, ref: np.ndarray) -> float:
        tf, tl = float(np.quantile(feat[ref], q)), float(np.quantile(lay[ref], q))
        ok = usable & (feat <= tf) & (lay <= tl) & ~((lay_inv <= tl) & (lay > inverted_ratio * lay_inv))
        return float(ok[rows].mean())

    everything = np.ones(len(val), dtype=bool)
    q = quantile_for(lambda q_: accepted_at(q_, everything, everything), config.target_acceptance)
    feature_threshold, layout_threshold = float(np.quantile(feat, q)), float(np.quantile(lay, q))
    half = _halves(val.groups, len(val))
    two_fold = []
    for fold in (0, 1):
        ref, rows = half == fold, half != fold
        q_fold = quantile_for(partial(accepted_at, rows=ref, ref=ref), config.target_acceptance)
        two_fold.append(accepted_at(q_fold, rows, ref) * rows.sum())
    folder = loaded.folder
    sha = write_params(params, folder / GATE_FILENAME)
    spec = GateSpec(
        method=GATE_METHOD, file=GATE_FILENAME, sha256=sha, threshold=feature_threshold,
        feature_dim=params.dim, n_components=int(params.features.eigenvalues.shape[0]),
        layout_threshold=layout_threshold, layout_size=config.layout_size,
        layout_components=int(params.layout.eigenvalues.shape[0]), inverted_ratio=inverted_ratio,
        fit_set=(
            f"{train.description}: training split (val_fraction {fraction}, seed {seed}), "
            f"{chosen.size} images + {config.augment_copies} strongly augmented copies each (seed {config.seed})"
        ),
        n_fit=int(fit_features.shape[0]), target_acceptance=config.target_acceptance, n_val=len(val),
    )
    verdicts = InputGate(params, spec, pre).judge(val_inputs, val_features)
    spec = spec.model_copy(update={
        "val_acceptance": sum(v.assessable for v in verdicts) / len(val),
        "validation": {
            "val_quantile": q,
            "val_acceptance_two_fold": float(sum(two_fold) / len(val)),
            "val_feature_score_median": float(np.median(feat)),
            "val_layout_score_median": float(np.median(lay)),
        },
    })
    updated = manifest.model_copy(update={"gate": spec})
    path = write_manifest(updated, folder)
    logger.info("gate written: %s (validation acceptance %.4f)", folder / GATE_FILENAME, spec.val_acceptance)
    return GateFitResult(manifest_path=path, spec=spec)
