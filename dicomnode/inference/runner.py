"""Load a model once and run batched predictions and Grad-CAM on prepared tensors.

The runner takes batches that :mod:`dicomnode.inference.preprocess` already made:
``(N, C, S, S)`` float32, normalised. Probabilities are the sigmoid of one logit per
label (a binary model has one label), after the manifest's calibration when it has one. The model is inference-only: its parameters
never require gradients, and Grad-CAM back-propagates only through the layers after
its target layer (see :mod:`dicomnode.explain.gradcam`).

A runner is not thread-safe; use one per worker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from dicomnode.domain import GateVerdict, ModelIdentity, Prediction
from dicomnode.errors import ConfigError, DicomNodeError, InferenceError, ModelError
from dicomnode.explain.gradcam import CamTarget, Chooser, explain_batch, find_cam_target
from dicomnode.inference.allocator import keep_tensor_memory
from dicomnode.inference.calibration import calibrated_probabilities
from dicomnode.inference.gate import InputGate, capture_pre_logits, classifier_of, pooled_features
from dicomnode.inference.loading import select_device
from dicomnode.inference.manifest import LoadedManifest, ModelManifest
from dicomnode.inference.registry import is_cnn, load_model

if TYPE_CHECKING:
    from dicomnode.explain.gradcam import CamBatch

logger = logging.getLogger(__name__)

@dataclass
class BatchAnalysis:
    """What one model pass says about a batch, image by image (all lists have length N).

    Attributes:
        predictions: per image, the probabilities and thresholds of every label.
        heatmaps: per image an ``(S, S)`` float32 Grad-CAM in [0, 1] of its reported
            finding, or None (not explained, or not assessable).
        verdicts: per image, the input gate's decision; a finding may be asserted only
            where ``verdicts[i].assessable``.
    """

    predictions: list[Prediction]
    heatmaps: list[np.ndarray | None]
    verdicts: list[GateVerdict]


class ModelRunner:
    """A loaded classifier with its manifest: batched predictions and Grad-CAM.

    Args:
        model: the network (timm), returning ``(N, K)`` logits with K = number of labels.
        manifest: the model's manifest (labels, thresholds, preprocessing, CAM layer).
        device: where the model runs; the model is moved there.
        thresholds: per-label overrides on top of ``manifest.thresholds``, e.g.
            ``{"pneumonia": 0.4}``.
        gate: the model's input gate (:class:`~dicomnode.inference.gate.InputGate`);
            None = every image is assessable.

    Raises:
        ConfigError: a threshold override names an unknown label or lies outside [0, 1].
        ModelError: the model cannot be moved to ``device`` or has no Grad-CAM layer.
    """

    def __init__(
        self,
        model: nn.Module,
        manifest: ModelManifest,
        device: torch.device,
        thresholds: Mapping[str, float] | None = None,
        gate: InputGate | None = None,
    ) -> None:
        self.manifest = manifest
        self.gate = gate
        self.device = device
        self.thresholds = _merge_thresholds(manifest, thresholds)
        self._channels_last = is_cnn(manifest.architecture)
        try:
            model = model.to(device).eval()
            if self._channels_last:
                model = model.to(memory_format=torch.channels_last)
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"cannot move model {manifest.name!r} to {device}: {exc}") from exc
        for param in model.parameters():
            param.requires_grad_(False)  # inference only; Grad-CAM needs no weight gradients
        self.model = model
        self.cam_target: CamTarget = find_cam_target(model, manifest.cam_target_layer)
        if gate is not None:
            classifier_of(model)  # the gate hooks the classifier's input: fail early without one
        logger.info(
            "model %s v%s (%s) ready on %s, Grad-CAM layer %s, input gate %s",
            manifest.name,
            manifest.version,
            manifest.architecture,
            device,
            self.cam_target.path,
            "on" if gate is not None else "off",
        )

    @classmethod
    def from_loaded(
        cls,
        loaded: LoadedManifest,
        device: str = "auto",
        thresholds: Mapping[str, float] | None = None,
    ) -> ModelRunner:
        """Build the model of a manifest, verify and load its weights (and gate), wrap it.

        The input gate is loaded when the manifest declares one (``manifest.gate``).

        Args:
            loaded: manifest and folder (``registry.resolve_manifest``).
            device: see :func:`~dicomnode.inference.loading.select_device`.
            thresholds: per-label overrides, see :class:`ModelRunner`.

        Raises:
            ConfigError: bad device or thresholds.
            ModelError: the weights (or the gate file) are missing, do not match their
                sha256 or the architecture.
        """
        torch_device = select_device(device)
        if torch_device.type == "cpu":
            keep_tensor_memory()  # ~30 % faster passes: activations stop paying page faults
        model = load_model(loaded, torch_device, verify_sha256=True)
        gate = InputGate.load(loaded, verify_sha256=True)
        return cls(model, loaded.manifest, torch_device, thresholds, gate)

    @property
    def identity(self) -> ModelIdentity:
        """The model identity written into result objects."""
        return self.manifest.identity()

    @property
    def labels(self) -> tuple[str, ...]:
        """Finding names in model output order."""
        return self.manifest.labels

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        """Probabilities for a batch of prepared images.

        Args:
            batch: ``(N, C, S, S)`` float32, normalised as the manifest says.

        Returns:
            One :class:`~dicomnode.domain.Prediction` per image, in order.

        Raises:
            InferenceError: wrong batch shape, the forward pass failed or gave
                non-finite outputs.
        """
        inputs = self._to_tensor(batch)
        return self._predict_tensor(inputs)

    def explain(self, batch: np.ndarray, target_indices: Sequence[int]) -> np.ndarray:
        """Grad-CAM of label ``target_indices[i]`` for image ``i`` (one pass for the batch).

        Args:
            batch: ``(N, C, S, S)`` float32, normalised.
            target_indices: N label indices (0 for a binary model).

        Returns:
            ``(N, S, S)`` float32 heatmaps, each normalised to [0, 1].

        Raises:
            InferenceError: bad shapes or indices, or Grad-CAM failed.
        """
        inputs = self._to_tensor(batch)
        indices = [int(i) for i in target_indices]
        if len(indices) != inputs.shape[0]:
            raise InferenceError(f"{len(indices)} target labels for {inputs.shape[0]} images")
        return self._explain_tensor(inputs, lambda _logits: indices).heatmaps

    def warm_up(self, batch_size: int) -> None:
        """Run the forward pass, the gate and Grad-CAM on dummy batches of every size
        from ``batch_size`` down to 1.

        The first call of a model at a batch size pays for kernel selection and
        allocation (about a second on CPU for the first, less for each further size), and
        the memory those kernels keep grows with every new size seen. A node warms up
        before it processes a study: its first studies do not pay, and its memory starts
        at the plateau that batches of any size lead to (``bench/memory.py``).

        Args:
            batch_size: the most images per forward pass the node will run.
        """
        pre = self.manifest.preprocessing
        batch = np.random.default_rng(0).standard_normal(
            (batch_size, pre.in_chans, pre.input_size, pre.input_size), dtype=np.float32
        )
        for size in range(batch_size, 0, -1):  # the largest first: its buffers serve the rest
            self.predict_and_explain(batch[:size])
        self.explain(batch, [0] * batch_size)

    def predict_and_explain(
        self,
        batch: np.ndarray,
        explain_mask: Sequence[bool] | None = None,
        *,
        positive_only: bool = False,
    ) -> BatchAnalysis:
        """Predict, gate and explain the reported finding with a single forward pass.

        The explained label of an image is its reported one,
        :attr:`Prediction.top_index`. Predictions come from the Grad-CAM pass itself;
        when no image needs a heatmap only the cheaper inference-mode pass runs. The
        gate reads the pooled features of that same pass; images it gates get no
        heatmap. One extra inference pass runs only for images that look inverted (on
        their inversion, to confirm it).

        Args:
            batch: ``(N, C, S, S)`` float32, normalised.
            explain_mask: N flags, True = this image may get a heatmap; None = all.
            positive_only: explain only images whose reported finding is positive
                (probability >= threshold).

        Returns:
            Predictions, per image an ``(S, S)`` float32 heatmap in [0, 1] or None, and
            the input gate's verdicts.

        Raises:
            InferenceError: bad shapes, or the forward pass or Grad-CAM failed.
        """
        inputs = self._to_tensor(batch)
        n = int(inputs.shape[0])
        mask = [True] * n if explain_mask is None else [bool(m) for m in explain_mask]
        if len(mask) != n:
            raise InferenceError(f"explain mask of {len(mask)} flags for {n} images")
        verdicts = [GateVerdict.accepted() for _ in range(n)]
        if not any(mask):
            predictions_only, features = self._predict_with_features(inputs)
            if self.gate is not None and features is not None:
                verdicts = self.gate.confirm_inverted(inputs, self.gate.judge(batch, features), self._features_of)
            return BatchAnalysis(predictions_only, [None] * n, verdicts)
        predictions: list[Prediction] = []

        with self._capture() as captured:

            def choose(logits: torch.Tensor) -> list[int | None]:
                predictions.extend(self._to_predictions(logits, n))
                if self.gate is not None:
                    verdicts[:] = self.gate.judge(batch, _single_capture(captured, n))
                chosen: list[int | None] = []
                for prediction, wanted, verdict in zip(predictions, mask, verdicts):
                    k = prediction.top_index
                    chosen.append(
                        k
                        if wanted
                        and verdict.assessable
                        and (not positive_only or prediction.is_positive(k))
                        else None
                    )
                return chosen

            cams = self._explain_tensor(inputs, choose)
        if self.gate is not None:
            verdicts = self.gate.confirm_inverted(inputs, verdicts, self._features_of)
        heatmaps: list[np.ndarray | None] = [
            cams.heatmaps[i] if cams.explained[i] and verdicts[i].assessable else None
            for i in range(n)
        ]
        return BatchAnalysis(predictions, heatmaps, verdicts)


    # -- internals -------------------------------------------------------------

    def _to_tensor(self, batch: np.ndarray) -> torch.Tensor:
        """Check a batch and put it on the device (one copy at most on CPU; pinned, non-blocking to a GPU)."""
        pre = self.manifest.preprocessing
        expected = (pre.in_chans, pre.input_size, pre.input_size)
        if not isinstance(batch, np.ndarray):
            raise InferenceError(f"batch must be a numpy array, got {type(batch).__name__}")
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected or batch.shape[0] == 0:
            raise InferenceError(
                f"batch shape {batch.shape} does not match (N>0, {', '.join(map(str, expected))})"
            )
        if not np.issubdtype(batch.dtype, np.floating):
            raise InferenceError(f"batch dtype must be floating point, got {batch.dtype}")
        array = np.ascontiguousarray(batch, dtype=np.float32)
        tensor = torch.from_numpy(array)
        # To a GPU from page-locked memory, asynchronously (the first kernel waits for it).
        on_gpu = self.device.type == "cuda"
        if on_gpu:
            tensor = tensor.pin_memory()
        memory_format = torch.channels_last if self._channels_last else torch.contiguous_format
        return tensor.to(self.device, memory_format=memory_format, non_blocking=on_gpu)

    def _predict_tensor(self, inputs: torch.Tensor) -> list[Prediction]:
        with torch.inference_mode():
            try:
                logits = self.model(inputs)
            except Exception as exc:  # torch raises many types; one job fails, not the node
                raise InferenceError(
                    f"forward pass of {self.manifest.name!r} failed: {exc}"
                ) from exc
            return self._to_predictions(logits, int(inputs.shape[0]))

    def _capture(self) -> AbstractContextManager[list[torch.Tensor]]:
        """Capture pooled features during a pass when there is a gate (else a no-op)."""
        if self.gate is None:
            return nullcontext([])
        return capture_pre_logits(self.model)

    def _predict_with_features(self, inputs: torch.Tensor) -> tuple[list[Prediction], np.ndarray | None]:
        """Predictions and, with a gate, the ``(N, D)`` pooled features of the same pass."""
        if self.gate is None:
            return self._predict_tensor(inputs), None
        n = int(inputs.shape[0])
        try:
            logits, features = pooled_features(self.model, inputs)
        except DicomNodeError:
            raise
        except Exception as exc:  # torch raises many types; one job fails, not the node
            raise InferenceError(f"forward pass of {self.manifest.name!r} failed: {exc}") from exc
        return self._to_predictions(logits, n), features

    def _features_of(self, inputs: torch.Tensor) -> np.ndarray:
        """``(M, D)`` pooled features of an extra inference pass (the gate's inversion check)."""
        try:
            return pooled_features(self.model, inputs)[1]
        except DicomNodeError:
            raise
        except Exception as exc:  # torch raises many types; one job fails, not the node
            raise InferenceError(f"gate forward pass of {self.manifest.name!r} failed: {exc}") from exc

    def _explain_tensor(self, inputs: torch.Tensor, choose: Chooser) -> CamBatch:
        try:
            return explain_batch(self.model, inputs, choose, self.cam_target)
        except DicomNodeError:
            raise
        except Exception as exc:  # anything explain_batch did not already wrap
            raise InferenceError(f"Grad-CAM of {self.manifest.name!r} failed: {exc}") from exc

    def _to_predictions(self, logits: object, n: int) -> list[Prediction]:
        if not isinstance(logits, torch.Tensor):
            raise InferenceError(f"model returned {type(logits).__name__}, not a tensor")
        k = len(self.manifest.labels)
        if logits.ndim == 1 and k == 1:
            logits = logits[:, None]
        if tuple(logits.shape) != (n, k):
            raise InferenceError(f"model output shape {tuple(logits.shape)} is not ({n}, {k})")
        # calibrated exactly as training and evaluation do (manifest.calibration; None = sigmoid)
        probs = calibrated_probabilities(
            logits.detach().float().cpu().numpy(), self.manifest.calibration
        )
        if not np.isfinite(probs).all():
            raise InferenceError(f"model {self.manifest.name!r} produced non-finite outputs")
        labels = self.manifest.labels
        return [Prediction(labels, tuple(float(p) for p in row), self.thresholds) for row in probs]


def _single_capture(captured: list[torch.Tensor], n: int) -> np.ndarray:
    """The ``(N, D)`` features of the one pass a chooser runs after."""
    if len(captured) != 1 or int(captured[0].shape[0]) != n:
        raise InferenceError(
            f"expected one pooled-feature capture of {n} rows, got {[tuple(c.shape) for c in captured]}"
        )
    return captured[0].cpu().numpy()


def _merge_thresholds(
    manifest: ModelManifest, overrides: Mapping[str, float] | None
) -> tuple[float, ...]:
    """Manifest thresholds with per-label overrides applied.

    Raises:
        ConfigError: unknown label or a value outside [0, 1].
    """
    merged = list(manifest.thresholds)
    for label, value in (overrides or {}).items():
        if label not in manifest.labels:
            known = ", ".join(manifest.labels)
            raise ConfigError(
                f"threshold for unknown label {label!r} (model {manifest.name!r} has: {known})"
            )
        threshold = float(value)
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold for {label!r} must lie in [0, 1], got {value}")
        merged[manifest.labels.index(label)] = threshold
    return tuple(merged)
