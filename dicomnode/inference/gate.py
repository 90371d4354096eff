"""The input gate: is this image a frontal chest radiograph of the kind the model handles?

Decided per image from the pixels, before any finding is asserted, so it holds when the
header lies. The checks use the batch the model already gets and the features of its
one forward pass; an extra pass runs only for images that look inverted.

1. **Content**: a nearly uniform image (gray std below ``GateSpec.min_gray_std``) or
   pure noise (lag-1 neighbour correlation below ``GateSpec.min_neighbour_corr``)
   -> ``NO_IMAGE_CONTENT``.
2. **Layout score** on the pixels: the image at the model's input size, shrunk to
   ``layout_size`` x ``layout_size`` (INTER_AREA) and standardised (zero mean, unit std),
   scored against the training chests. Rejects CT/MR/NM/US slices, documents,
   photographs and bones whatever the header says.
3. **Feature score** on the model's pooled pre-logits features (the classifier's input,
   captured in the same pass). Rejects what the model's own features find strange
   (gradients, patterns, charts, noise).
   Both scores are a squared Mahalanobis distance divided by the dimension under a
   probabilistic-PCA covariance (top ``k`` eigenvectors of a Ledoit-Wolf covariance, the
   remaining variance spread evenly); about 1 for images like the fit set.
4. **Inverted grayscale**: a standardised thumbnail's inversion is its negative, so the
   layout score of the inverted image costs nothing. When the inversion fits the
   training chests clearly better (score ratio above ``GateSpec.inverted_ratio``) and
   passes the layout threshold, one extra forward pass on the inverted image (for those
   images only) checks the model's features agree -> ``INVERTED_GRAYSCALE`` (a chest
   with a wrong photometric interpretation), whether or not the original passed.

``GateVerdict.score`` is the larger of the two scores divided by its threshold (gated
above 1.0); the detail line gives both. Parameters live beside the weights
(``gate.safetensors``, sha256 in the manifest's ``gate`` section);
:mod:`dicomnode.training.gate_fit` fits them.
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


@dataclass(frozen=True)
class PpcaScore:
    """A fitted PPCA-Mahalanobis score.

    Attributes:
        mean: ``(D,)`` float32 mean of the fit set.
        components: ``(D, k)`` float32 orthonormal principal directions.
        eigenvalues: ``(k,)`` float32 variances along ``components`` (all > 0).
        residual_variance: variance per direction outside the components (> 0).
    """

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    residual_variance: float

    @property
    def dim(self) -> int:
        """Dimension D."""
        return int(self.mean.shape[0])

    def score(self, x: np.ndarray) -> np.ndarray:
        """``(N, D)`` vectors -> ``(N,)`` float64 squared Mahalanobis distance / D."""
        centred = np.asarray(x, dtype=np.float64) - self.mean.astype(np.float64)
        z = centred @ self.components.astype(np.float64)
        inside = (z**2 / self.eigenvalues.astype(np.float64)).sum(axis=1)
        residual = (centred**2).sum(axis=1) - (z**2).sum(axis=1)
        outside = np.maximum(residual, 0.0) / self.residual_variance
        return np.asarray((inside + outside) / self.dim, dtype=np.float64)

    @classmethod
    def fit(cls, x: np.ndarray, n_components: int) -> PpcaScore:
        """Fit on ``(N, D)`` in-distribution vectors (see :func:`fit_ppca`)."""
        return cls(*fit_ppca(x, n_components))

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """C-ordered float32 arrays (safetensors writes the raw buffer)."""
        arrays = {
            "mean": self.mean,
            "components": self.components,
            "eigenvalues": self.eigenvalues,
            "residual_variance": np.asarray([self.residual_variance]),
        }
        return {f"{prefix}.{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> PpcaScore:
        """Inverse of :meth:`to_arrays`.

        Raises:
            ModelError: a key is missing or the shapes do not fit together.
        """
        try:
            score = cls(
                mean=np.asarray(arrays[f"{prefix}.mean"], dtype=np.float32),
                components=np.asarray(arrays[f"{prefix}.components"], dtype=np.float32),
                eigenvalues=np.asarray(arrays[f"{prefix}.eigenvalues"], dtype=np.float32),
                residual_variance=float(arrays[f"{prefix}.residual_variance"][0]),
            )
        except (KeyError, IndexError) as exc:
            raise ModelError(f"gate parameters lack {exc}: re-fit with `dicomnode gate fit`") from exc
        k = score.eigenvalues.shape[0]
        if score.components.shape != (score.dim, k) or not (score.eigenvalues > 0).all() or not score.residual_variance > 0:
            raise ModelError("gate parameters are inconsistent: re-fit with `dicomnode gate fit`")
        return score


@dataclass(frozen=True)
class GateParams:
    """Fitted arrays of the gate: the feature score and the layout score."""

    features: PpcaScore
    layout: PpcaScore

    @property
    def dim(self) -> int:
        """Feature dimension D (the classifier's input width)."""
        return self.features.dim

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays written to ``gate.safetensors``."""
        return {**self.features.to_arrays("features"), **self.layout.to_arrays("layout")}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> GateParams:
        """Inverse of :meth:`to_arrays` (raises ModelError)."""
        return cls(PpcaScore.from_arrays(arrays, "features"), PpcaScore.from_arrays(arrays, "layout"))


def layout_vectors(gray: np.ndarray, size: int) -> np.ndarray:
    """Standardised thumbnails: ``(N, S, S)`` gray -> ``(N, size*size)`` float32.

    Each thumbnail (INTER_AREA) has zero mean and unit std (uniform ones stay zero), so
    brightness and contrast do not matter and the inverted image's vector is the negative.
    """
    import cv2

    out = np.empty((gray.shape[0], size * size), dtype=np.float32)
    for i, g in enumerate(np.asarray(gray, dtype=np.float32)):
        small = cv2.resize(np.ascontiguousarray(g), (size, size), interpolation=cv2.INTER_AREA).ravel()
        small = small - small.mean()
        sd = float(small.std())
        out[i] = small / sd if sd > 1e-4 else small
    return out


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
    components = np.ascontiguousarray(vectors[:, :k], dtype=np.float32)
    return lw.location_.astype(np.float32), components, kept.astype(np.float32), residual


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

    def scores(self, inputs: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(N,)`` feature scores, layout scores and layout scores of the inverted images."""
        layout = layout_vectors(inputs_to_gray(inputs, self.pre), self.spec.layout_size)
        return self.params.features.score(features), self.params.layout.score(layout), self.params.layout.score(-layout)

    def judge(self, inputs: np.ndarray, features: np.ndarray) -> list[GateVerdict]:
        """Verdicts for a batch from its inputs and the features of the pass that made them.

        Args:
            inputs: ``(N, C, S, S)`` prepared inputs.
            features: ``(N, D)`` their pooled pre-logits features.
        """
        spec = self.spec
        reasons, _std, _corr = content_check(inputs_to_gray(inputs, self.pre), spec.min_gray_std, spec.min_neighbour_corr)
        feat, lay, lay_inv = self.scores(inputs, features)
        verdicts: list[GateVerdict] = []
        for reason, f, s, s_inv in zip(reasons, feat, lay, lay_inv):
            score = max(float(f) / spec.threshold, float(s) / spec.layout_threshold)
            if not math.isfinite(score):
                score = float("inf")
            detail = (
                f"feature score {f:.2f} (limit {spec.threshold:.2f}), layout score {s:.2f} "
                f"(limit {spec.layout_threshold:.2f}, inverted {s_inv:.2f})"
            )
            if reason is not None:
                verdicts.append(_gated(NotAssessedReason.NO_IMAGE_CONTENT, score, reason))
            elif s_inv <= spec.layout_threshold and s > spec.inverted_ratio * s_inv:
                verdicts.append(
                    _gated(NotAssessedReason.INVERTED_GRAYSCALE, score,
                           f"grayscale looks inverted (check PhotometricInterpretation): {detail}")
                )
            elif score > 1.0:
                verdicts.append(_gated(NotAssessedReason.NOT_CHEST_RADIOGRAPH, score, detail))
            else:
                verdicts.append(GateVerdict(True, None, score, 1.0, detail))
        return verdicts


    def confirm_inverted(
        self, inputs: torch.Tensor, verdicts: list[GateVerdict], features_of: Callable[[torch.Tensor], np.ndarray]
    ) -> list[GateVerdict]:
        """Keep ``INVERTED_GRAYSCALE`` only where the inverted image's features pass too.

        Runs ``features_of`` (one extra forward pass) on the inverted images of the
        verdicts that say inverted, and nothing when none does. An image whose inversion
        the model's features still find strange (e.g. a reversed gradient) becomes
        ``NOT_CHEST_RADIOGRAPH``.

        Args:
            inputs: ``(N, C, S, S)`` prepared inputs (the judged batch).
            verdicts: from :meth:`judge`.
            features_of: a forward pass returning ``(M, D)`` pooled features.
        """
        rows = [i for i, v in enumerate(verdicts) if v.reason is NotAssessedReason.INVERTED_GRAYSCALE]
        if not rows:
            return verdicts
        index = torch.as_tensor(rows, device=inputs.device)
        scores = self.params.features.score(features_of(invert_inputs(inputs.index_select(0, index), self.pre)))
        out = list(verdicts)
        for i, s in zip(rows, scores):
            if not float(s) <= self.spec.threshold:
                v = out[i]
                out[i] = _gated(
                    NotAssessedReason.NOT_CHEST_RADIOGRAPH, v.score,
                    f"{v.detail.split(': ', 1)[-1]}; inverted image's feature score {float(s):.2f} also too high",
                )
        return out


def _gated(reason: NotAssessedReason, score: float, detail: str) -> GateVerdict:
    return GateVerdict(False, reason, score, 1.0, detail)


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
