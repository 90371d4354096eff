"""The input gate: is this image a frontal chest radiograph of the kind the model handles?

Decided per image from the pixels, before any finding is asserted, so it holds when the
header lies. Three checks, cheapest first:

1. **Content** (pixels only): a nearly uniform image (gray std below
   ``GateSpec.min_gray_std``) or pure noise (neighbouring pixels uncorrelated, lag-1
   correlation below ``GateSpec.min_neighbour_corr``) -> ``NO_IMAGE_CONTENT``.
2. **Out-of-distribution score** on the model's own pooled pre-logits features (the
   input of its classifier, captured in the same forward pass as the prediction): the
   squared Mahalanobis distance to the training chests, divided by the feature dimension
   D, under a probabilistic-PCA covariance (top ``k`` eigenvectors of a Ledoit-Wolf
   shrunk covariance, the remaining variance spread evenly over the other ``D - k``
   directions). Score above ``GateSpec.threshold`` -> gated.
3. **Inverted grayscale**: for gated images only, one more forward pass on the inverted
   image (``1 - gray`` in display space). When the inversion passes the score threshold
   and scores lower than the original, the reason is ``INVERTED_GRAYSCALE`` (a chest with a
   wrong photometric interpretation), else ``NOT_CHEST_RADIOGRAPH``. A logistic
   regression on the same features (upright vs inverted training chests) also flags an
   inverted chest that the score alone lets through (``GateSpec.inverted_probability``).

Parameters live beside the weights (``gate.safetensors``, sha256 in the manifest's
``gate`` section); :mod:`dicomnode.training.gate_fit` fits them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import torch
from torch import nn

from dicomnode.domain import GateVerdict, NotAssessedReason
from dicomnode.errors import InferenceError, ModelError
from dicomnode.inference.manifest import GateSpec, LoadedManifest, Preprocessing, sha256_file

logger = logging.getLogger(__name__)

GATE_FILENAME = "gate.safetensors"
GATE_METHOD: Final = "ppca-mahalanobis"

FeatureFn = Callable[[torch.Tensor], np.ndarray]
"""Maps ``(M, C, S, S)`` prepared inputs to their ``(M, D)`` float32 pooled features."""


@dataclass(frozen=True)
class GateParams:
    """Fitted arrays of the gate.

    Attributes:
        mean: ``(D,)`` float32 mean feature of the fit set.
        components: ``(D, k)`` float32 orthonormal principal directions.
        eigenvalues: ``(k,)`` float32 variances along ``components`` (all > 0).
        residual_variance: variance per direction outside the components (> 0).
        inverted_weights: ``(D,)`` float32 logistic-regression weights, upright (0) vs
            inverted (1) chest, on standardised features ``(x - mean) / scale``.
        inverted_bias: its intercept.
        scale: ``(D,)`` float32 per-feature scale used by the logistic regression.
    """

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    residual_variance: float
    inverted_weights: np.ndarray
    inverted_bias: float
    scale: np.ndarray

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.mean.shape[0])

    def score(self, features: np.ndarray) -> np.ndarray:
        """Squared PPCA-Mahalanobis distance per image, divided by D.

        About 1 for images like the fit set; grows with distance from it.

        Args:
            features: ``(N, D)`` pooled features.

        Returns:
            ``(N,)`` float64 scores.
        """
        x = np.asarray(features, dtype=np.float64) - self.mean.astype(np.float64)
        z = x @ self.components.astype(np.float64)
        inside = (z**2 / self.eigenvalues.astype(np.float64)).sum(axis=1)
        residual = (x**2).sum(axis=1) - (z**2).sum(axis=1)
        outside = np.maximum(residual, 0.0) / self.residual_variance
        return np.asarray((inside + outside) / self.dim, dtype=np.float64)

    def inverted_probability(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` probability that each image is an inverted chest (logistic regression)."""
        x = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        logit = x @ self.inverted_weights.astype(np.float64) + self.inverted_bias
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(logit, -50.0, 50.0))), dtype=np.float64)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays written to ``gate.safetensors``."""
        return {
            "mean": self.mean.astype(np.float32),
            "components": self.components.astype(np.float32),
            "eigenvalues": self.eigenvalues.astype(np.float32),
            "residual_variance": np.asarray([self.residual_variance], dtype=np.float32),
            "inverted_weights": self.inverted_weights.astype(np.float32),
            "inverted_bias": np.asarray([self.inverted_bias], dtype=np.float32),
            "scale": self.scale.astype(np.float32),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> GateParams:
        """Inverse of :meth:`to_arrays`.

        Raises:
            ModelError: a key is missing or the shapes do not fit together.
        """
        try:
            params = cls(
                mean=np.asarray(arrays["mean"], dtype=np.float32),
                components=np.asarray(arrays["components"], dtype=np.float32),
                eigenvalues=np.asarray(arrays["eigenvalues"], dtype=np.float32),
                residual_variance=float(arrays["residual_variance"][0]),
                inverted_weights=np.asarray(arrays["inverted_weights"], dtype=np.float32),
                inverted_bias=float(arrays["inverted_bias"][0]),
                scale=np.asarray(arrays["scale"], dtype=np.float32),
            )
        except (KeyError, IndexError) as exc:
            raise ModelError(f"gate parameters lack {exc}: re-fit with `dicomnode gate fit`") from exc
        d = params.dim
        k = params.eigenvalues.shape[0]
        if (
            params.components.shape != (d, k)
            or params.inverted_weights.shape != (d,)
            or params.scale.shape != (d,)
            or not (params.eigenvalues > 0).all()
            or not params.residual_variance > 0
        ):
            raise ModelError("gate parameters are inconsistent: re-fit with `dicomnode gate fit`")
        return params


def fit_ppca(features: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Fit the score's mean and covariance.

    Args:
        features: ``(N, D)`` features of in-distribution images, N > 1.
        n_components: k principal directions kept (clipped to ``D - 1``).

    Returns:
        ``(mean (D,), components (D, k), eigenvalues (k,), residual_variance)``.
    """
    from sklearn.covariance import LedoitWolf

    x = np.asarray(features, dtype=np.float64)
    d = x.shape[1]
    k = max(1, min(n_components, d - 1))
    lw = LedoitWolf(assume_centered=False).fit(x)
    values, vectors = np.linalg.eigh(lw.covariance_)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    floor = max(float(values[0]) * 1e-9, 1e-12)
    kept = np.maximum(values[:k], floor)
    residual = max(float(values[k:].mean()), floor)
    return lw.location_.astype(np.float32), vectors[:, :k].astype(np.float32), kept.astype(np.float32), residual


def content_check(gray: np.ndarray, min_std: float, min_corr: float) -> tuple[list[str | None], np.ndarray, np.ndarray]:
    """Pixel checks for images without content.

    Args:
        gray: ``(N, S, S)`` display gray images in [0, 1] (bright = dense).
        min_std: below this gray standard deviation the image is "nearly uniform".
        min_corr: below this lag-1 neighbour correlation it is "noise-like".

    Returns:
        Per image a one-line reason or None, and the ``(N,)`` std and correlation arrays.
    """
    g = np.asarray(gray, dtype=np.float64)
    n = g.shape[0]
    flat = g.reshape(n, -1)
    std = flat.std(axis=1)
    corr = np.zeros(n)
    for axis in (1, 2):
        a = np.moveaxis(g, axis, -1)
        left = a[..., :-1].reshape(n, -1)
        right = a[..., 1:].reshape(n, -1)
        left = left - left.mean(axis=1, keepdims=True)
        right = right - right.mean(axis=1, keepdims=True)
        denom = np.sqrt((left**2).sum(axis=1) * (right**2).sum(axis=1))
        corr += np.where(denom > 0, (left * right).sum(axis=1) / np.where(denom > 0, denom, 1.0), 1.0)
    corr /= 2.0
    reasons: list[str | None] = []
    for s, c in zip(std, corr):
        if s < min_std:
            reasons.append(f"nearly uniform pixels (gray std {s:.4f} < {min_std})")
        elif c < min_corr:
            reasons.append(f"noise-like pixels (neighbour correlation {c:.2f} < {min_corr})")
        else:
            reasons.append(None)
    return reasons, std, corr


def inputs_to_gray(inputs: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Undo the normalisation of prepared inputs: ``(N, C, S, S)`` -> ``(N, S, S)`` gray in [0, 1]."""
    x = np.asarray(inputs[:, 0], dtype=np.float32)
    gray: np.ndarray = np.clip(x * np.float32(pre.std[0]) + np.float32(pre.mean[0]), 0.0, 1.0)
    return gray


def invert_inputs(inputs: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """The prepared inputs of the inverted images (``1 - gray`` in display space).

    Args:
        inputs: ``(N, C, S, S)`` normalised as ``(gray - mean_c) / std_c``.

    Returns:
        Same shape, dtype and device: ``(1 - gray - mean_c) / std_c``.
    """
    mean = torch.tensor(pre.mean, dtype=inputs.dtype, device=inputs.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=inputs.dtype, device=inputs.device).view(1, -1, 1, 1)
    gray = inputs * std + mean
    return (1.0 - gray - mean) / std


@contextmanager
def capture_pre_logits(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Capture the classifier's input (pooled pre-logits features) during forward passes.

    A forward pre-hook on ``model.get_classifier()`` (timm) appends a detached float32
    ``(N, D)`` copy per pass to the yielded list; the hook is removed on exit.

    Raises:
        ModelError: the model has no ``get_classifier()`` module.
    """
    head = classifier_of(model)
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[object, ...]) -> None:
        value = args[0] if args else None
        if isinstance(value, torch.Tensor):
            captured.append(value.detach().float().flatten(1))

    handle = head.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def classifier_of(model: nn.Module) -> nn.Module:
    """The module whose input is the pooled features (timm ``get_classifier()``).

    Raises:
        ModelError: the model has none.
    """
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module) or isinstance(head, nn.Identity):
        raise ModelError(
            f"{type(model).__name__} has no classifier module (timm get_classifier()); "
            "the input gate needs one"
        )
    return head


def pooled_features(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """One inference-mode forward pass: ``(N, K)`` logits and ``(N, D)`` float32 features."""
    with torch.inference_mode(), capture_pre_logits(model) as captured:
        logits = model(inputs)
    if len(captured) != 1:
        raise InferenceError(f"expected one classifier call per forward pass, saw {len(captured)}")
    features: np.ndarray = captured[0].cpu().numpy()
    return logits, features


class InputGate:
    """A fitted gate with its manifest section and the model's preprocessing.

    Args:
        params: the fitted arrays.
        spec: the manifest's ``gate`` section (threshold and check limits).
        pre: the model's preprocessing (to undo the normalisation).
    """

    def __init__(self, params: GateParams, spec: GateSpec, pre: Preprocessing) -> None:
        if params.dim != spec.feature_dim:
            raise ModelError(
                f"gate file has {params.dim} features, manifest says {spec.feature_dim}: "
                "re-fit with `dicomnode gate fit`"
            )
        self.params = params
        self.spec = spec
        self.pre = pre

    @classmethod
    def load(cls, loaded: LoadedManifest, *, verify_sha256: bool = True) -> InputGate | None:
        """The gate the manifest declares, or None when it declares none.

        Raises:
            ModelError: the gate file is missing, does not match its sha256, or is inconsistent.
        """
        spec = loaded.manifest.gate
        if spec is None:
            return None
        path = loaded.folder / spec.file
        return cls(read_params(path, spec.sha256 if verify_sha256 else None), spec, loaded.manifest.preprocessing)

    def first_pass(self, inputs: np.ndarray, features: np.ndarray) -> list[GateVerdict]:
        """Verdicts from the pass that made ``features`` (no extra forward).

        Images that fail the score get ``NOT_CHEST_RADIOGRAPH`` here;
        :meth:`refine` may turn that into ``INVERTED_GRAYSCALE``.

        Args:
            inputs: ``(N, C, S, S)`` prepared inputs.
            features: ``(N, D)`` their pooled features.
        """
        spec = self.spec
        reasons, _std, _corr = content_check(inputs_to_gray(inputs, self.pre), spec.min_gray_std, spec.min_neighbour_corr)
        scores = self.params.score(features)
        p_inv = self.params.inverted_probability(features)
        verdicts: list[GateVerdict] = []
        for reason, score, p in zip(reasons, scores, p_inv):
            s = float(score)
            if reason is not None:
                verdicts.append(_gated(NotAssessedReason.NO_IMAGE_CONTENT, s, spec.threshold, reason))
            elif not math.isfinite(s) or s > spec.threshold:
                verdicts.append(
                    _gated(NotAssessedReason.NOT_CHEST_RADIOGRAPH, s, spec.threshold, f"OOD score {s:.2f} > {spec.threshold:.2f}")
                )
            elif p >= spec.inverted_probability:
                verdicts.append(
                    _gated(
                        NotAssessedReason.INVERTED_GRAYSCALE, s, spec.threshold,
                        f"inverted-chest probability {p:.2f} >= {spec.inverted_probability:.2f}",
                    )
                )
            else:
                verdicts.append(
                    GateVerdict(True, None, s, spec.threshold, f"OOD score {s:.2f} <= {spec.threshold:.2f}")
                )
        return verdicts

    def refine(self, inputs: torch.Tensor, verdicts: list[GateVerdict], features_of: FeatureFn) -> list[GateVerdict]:
        """Tell inverted chests apart among the images that failed the score.

        Runs ``features_of`` once, on the inverted images of those that failed (nothing
        when none did).

        Args:
            inputs: ``(N, C, S, S)`` prepared inputs (the same batch).
            verdicts: from :meth:`first_pass`.
            features_of: a forward pass returning pooled features.
        """
        failing = [i for i, v in enumerate(verdicts) if v.reason is NotAssessedReason.NOT_CHEST_RADIOGRAPH]
        if not failing:
            return verdicts
        index = torch.as_tensor(failing, device=inputs.device)
        inverted = features_of(invert_inputs(inputs.index_select(0, index), self.pre))
        scores = self.params.score(inverted)
        out = list(verdicts)
        for i, s_inv in zip(failing, scores):
            s = out[i].score
            if float(s_inv) <= self.spec.threshold and float(s_inv) < s:
                out[i] = _gated(
                    NotAssessedReason.INVERTED_GRAYSCALE, s, self.spec.threshold,
                    f"OOD score {s:.2f} > {self.spec.threshold:.2f}, inverted {float(s_inv):.2f}: "
                    "grayscale looks inverted (check PhotometricInterpretation)",
                )
        return out


def _gated(reason: NotAssessedReason, score: float, threshold: float, detail: str) -> GateVerdict:
    return GateVerdict(False, reason, score, threshold, detail)


def read_params(path: Path, sha256: str | None) -> GateParams:
    """Read ``gate.safetensors``, checking its sha256 when given.

    Raises:
        ModelError: missing file, sha256 mismatch or bad content.
    """
    from safetensors.numpy import load_file

    if not path.is_file():
        raise ModelError(f"gate file {path} not found: re-fit with `dicomnode gate fit`")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise ModelError(
                f"gate file {path} does not match the manifest (sha256 {actual[:12]}..., "
                f"manifest says {sha256[:12]}...): re-fit with `dicomnode gate fit`"
            )
    try:
        arrays = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"cannot read gate file {path}: {exc}") from exc
    return GateParams.from_arrays(arrays)


def write_params(params: GateParams, path: Path) -> str:
    """Write ``gate.safetensors``; returns its hex sha256."""
    from safetensors.numpy import save_file

    save_file(params.to_arrays(), str(path))
    return sha256_file(path)
