"""The ``/demo`` page's work: one uploaded image through a chosen shipped model.

Nothing is stored and nothing is sent: the upload lives in memory (and a temporary
file for PNG/JPEG decoding) for the length of the request. Each model is loaded on
its first use and kept for later requests (one per model name).
"""

from __future__ import annotations

import base64
import io
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dicomnode.errors import InferenceError

if TYPE_CHECKING:
    from dicomnode.inference.runner import ModelRunner

#: Long side (pixels) of the rendered demo picture.
DEMO_MAX_SIDE = 768


@dataclass(frozen=True)
class DemoResult:
    """What the demo shows for one upload.

    Attributes:
        model: ``name vversion (architecture)``.
        label: the reported finding (the most probable label).
        probability: its probability in [0, 1].
        threshold: its decision threshold in [0, 1].
        decision: ``"present"``, ``"absent"`` or ``"not assessed"``.
        reason: why not assessed (the input gate's line), else None.
        probabilities: every label's probability.
        png: the rendered radiograph, heatmap (positive only) and legend, as PNG bytes.
    """

    model: str
    label: str
    probability: float
    threshold: float
    decision: str
    reason: str | None
    probabilities: dict[str, float]
    png: bytes

    @property
    def png_data_url(self) -> str:
        """The PNG as a ``data:`` URL for an <img> (the page needs no second request)."""
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def model_names() -> list[str]:
    """Names of the shipped models (``dicomnode.inference.registry``)."""
    from dicomnode.inference.registry import list_manifests

    return [loaded.folder.name for loaded in list_manifests()]


class DemoModels:
    """Shipped models loaded on first use and cached by name.

    Args:
        device: where the models run (``"auto"``, ``"cpu"``, ...).
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._runners: dict[str, ModelRunner] = {}
        self._lock = threading.Lock()

    def runner(self, name: str) -> ModelRunner:
        """The loaded model ``name`` (loads it once).

        Raises:
            ModelError: ``name`` is not a shipped model or its weights cannot be loaded.
        """
        from dicomnode.config import ModelSettings
        from dicomnode.errors import ModelError
        from dicomnode.inference.loading import load_runner

        if name not in model_names():
            raise ModelError(f"unknown model {name!r}")
        with self._lock:
            if name not in self._runners:
                # the manifest's own thresholds: the node's overrides belong to the served model
                self._runners[name] = load_runner(ModelSettings(name=name, device=self.device))
            return self._runners[name]

    def analyse(self, name: str, content: bytes) -> DemoResult:
        """Run model ``name`` on an uploaded DICOM, PNG or JPEG file.

        Raises:
            InferenceError: the upload is not an image the model can use.
            ModelError: see :meth:`runner`.
        """
        from dicomnode.explain.render import render_overlay
        from dicomnode.inference.preprocess import gray_to_input, unpad_heatmap
        from dicomnode.pipeline import legend_lines

        runner = self.runner(name)
        gray = upload_to_gray(content)
        batch = gray_to_input(gray, runner.manifest.preprocessing)[None].astype(np.float32, copy=False)
        with self._lock:  # one model pass at a time per node: the demo must not starve the worker
            analysis = runner.predict_and_explain(batch)
        prediction, heatmap, verdict = analysis.predictions[0], analysis.heatmaps[0], analysis.verdicts[0]
        top = prediction.top_index
        positive = prediction.is_positive(top)
        if not verdict.assessable:
            decision, reason = "not assessed", f"{verdict.reason}: {verdict.detail}".rstrip(": ")
        else:
            decision, reason = ("present" if positive else "absent"), None
        shown_heat = None
        if heatmap is not None and positive and verdict.assessable:
            shown_heat = unpad_heatmap(heatmap, gray.shape, runner.manifest.preprocessing.resize)
        picture = render_overlay(gray, shown_heat, max_side=DEMO_MAX_SIDE, legend=legend_lines(prediction, runner.identity))
        from dicomnode.web.images import array_to_png

        identity = runner.identity
        return DemoResult(
            model=f"{identity.name} v{identity.version} ({identity.architecture})",
            label=prediction.labels[top],
            probability=float(prediction.probabilities[top]),
            threshold=float(prediction.thresholds[top]),
            decision=decision,
            reason=reason,
            probabilities={lab: float(p) for lab, p in zip(prediction.labels, prediction.probabilities)},
            png=array_to_png(picture),
        )


def upload_to_gray(content: bytes) -> np.ndarray:
    """Decode an uploaded DICOM (Part-10 or bare data set) or PNG/JPEG file.

    Returns:
        (H, W) float32 in [0, 1].

    Raises:
        InferenceError: neither a usable DICOM image nor a picture Pillow can read.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from dicomnode.inference.preprocess import dicom_to_gray, image_file_to_gray

    if len(content) > 132 and content[128:132] == b"DICM":
        try:
            return dicom_to_gray(dcmread(io.BytesIO(content)))
        except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
            raise InferenceError(f"cannot read the DICOM upload: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="dicomnode-demo-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(content)
        return image_file_to_gray(path)
