"""Measure a model's input gate through the serving runner.

:func:`evaluate_gate` runs :meth:`ModelRunner.predict_and_explain` (no heatmaps) on

* the grouped validation chests of the model's training split (acceptance, 95 % Wilson CI),
* the same chests inverted (``1 - gray``): rejected, and how many as ``INVERTED_GRAYSCALE``,
* every locally built negative category (:mod:`dicomnode.training.gate_negatives`),
* named files of the shared data folder: adult chests (RG1, SIIM, NIH), the inverted
  Fake_MONOHR1, the tibia RG3 and the veterinary thorax, each through the DICOM pipeline.

Only inverted training chests were used in fitting (``gate fit``); every other negative
category is unseen by the gate.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.domain import GateVerdict

NAMED_FILES: tuple[tuple[str, str], ...] = (
    ("RG1_UNCR.dcm", "adult chest PA (must pass)"),
    ("siim_cxr_pa_jpeg_baseline.dcm", "adult chest PA (must pass)"),
    ("nih_cxr14_google_dicom_DX.dcm", "adult chest (must pass)"),
    ("RG1_J2KI.dcm", "adult chest, JPEG 2000 lossy (must pass)"),
    ("Fake_MONOHR1.dcm", "chest with inverted header (inverted_grayscale)"),
    ("RG3_UNCR.dcm", "tibia (not_chest_radiograph)"),
    ("highdicom_dx_image.dcm", "tiny veterinary thorax (odd input)"),
)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (``(nan, nan)`` for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class GateReport:
    """What :func:`evaluate_gate` measured.

    Attributes:
        val_n, val_accepted: validation chests and how many passed.
        categories: per negative category ``(n, rejected, reason counts)``.
        named: per named file ``(what, verdict)``.
    """

    model: str
    threshold: float
    val_n: int = 0
    val_accepted: int = 0
    categories: dict[str, tuple[int, int, dict[str, int]]] = field(default_factory=dict)
    named: list[tuple[str, str, GateVerdict]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        low, high = wilson_interval(self.val_accepted, self.val_n)
        return {
            "model": self.model,
            "threshold": self.threshold,
            "val": {"n": self.val_n, "accepted": self.val_accepted,
                    "acceptance": self.val_accepted / self.val_n if self.val_n else float("nan"),
                    "ci95": [low, high]},
            "negatives": {k: {"n": n, "rejected": r, "rejection": r / n if n else float("nan"), "reasons": reasons}
                          for k, (n, r, reasons) in self.categories.items()},
            "named": {name: {"what": what, "assessable": v.assessable,
                             "reason": v.reason.value if v.reason else None, "score": v.score, "detail": v.detail}
                      for name, what, v in self.named},
        }

    def format(self) -> str:
        """A plain-text table."""
        low, high = wilson_interval(self.val_accepted, self.val_n)
        pct = 100 * self.val_accepted / max(self.val_n, 1)
        lines = [
            f"input gate of {self.model} (threshold {self.threshold:.3f})",
            f"validation chests: {self.val_accepted}/{self.val_n} accepted = {pct:.2f} % "
            + f"(95 % CI {100 * low:.2f}-{100 * high:.2f})",
            f"{'negative category':<22}{'n':>5}{'rejected':>10}  reasons",
        ]
        for name, (n, rejected, reasons) in self.categories.items():
            why = ", ".join(f"{k}:{v}" for k, v in sorted(reasons.items()))
            lines.append(f"{name:<22}{n:>5}{100 * rejected / max(n, 1):>9.1f}%  {why}")
        lines.append("named files:")
        for name, what, v in self.named:
            verdict = "assessable" if v.assessable else (v.reason.value if v.reason else "gated")
            lines.append(f"  {name:<32} {verdict:<22} score {v.score:8.2f}  [{what}]  {v.detail}")
        return "\n".join(lines)


def _verdicts(runner: Any, grays: Sequence[np.ndarray], batch_size: int) -> list[GateVerdict]:
    from dicomnode.training.gate_fit import inputs_of_grays

    pre = runner.manifest.preprocessing
    out: list[GateVerdict] = []
    for start in range(0, len(grays), batch_size):
        chunk = grays[start : start + batch_size]
        analysis = runner.predict_and_explain(inputs_of_grays(chunk, pre), [False] * len(chunk))
        out.extend(analysis.verdicts)
    return out


def evaluate_gate(
    model: str,
    data: Path | None,
    shared_dicom_dir: Path | None,
    *,
    max_val: int | None = None,
    batch_size: int = 32,
    device: str = "cpu",
) -> GateReport:
    """Measure the gate of ``model`` (see the module docstring).

    Args:
        model: model name or manifest path; it must have a gate.
        data: the training dataset (validation chests are re-carved from it), or None.
        shared_dicom_dir: folder of the named DICOM files (and RG3 for the negatives), or None.
        max_val: use at most this many validation chests (the first ones), None = all.

    Raises:
        ModelError: the model has no gate or cannot be loaded.
        DataError: the data cannot be read.
    """
    from dicomnode.errors import ModelError
    from dicomnode.inference.registry import resolve_manifest
    from dicomnode.inference.runner import ModelRunner
    from dicomnode.training.datasets import Split, load_gray, select_split
    from dicomnode.training.gate_fit import split_params
    from dicomnode.training.gate_negatives import build_negatives, dicom_gray_any

    loaded = resolve_manifest(model)
    if loaded.manifest.gate is None:
        raise ModelError(f"model {loaded.manifest.name!r} has no input gate: run `dicomnode gate fit` first")
    runner = ModelRunner.from_loaded(loaded, device=device)
    report = GateReport(model=loaded.manifest.name, threshold=loaded.manifest.gate.threshold)

    def tally(category: str, verdicts: list[GateVerdict]) -> None:
        reasons = Counter(v.reason.value for v in verdicts if v.reason is not None)
        report.categories[category] = (len(verdicts), sum(not v.assessable for v in verdicts), dict(reasons))

    if data is not None:
        fraction, seed = split_params(loaded)
        val = select_split(data, Split.VAL, val_fraction=fraction, seed=seed)
        n = len(val) if max_val is None else min(max_val, len(val))
        grays = [val.gray(i) for i in range(n)]
        verdicts = _verdicts(runner, grays, batch_size)
        report.val_n, report.val_accepted = n, sum(v.assessable for v in verdicts)
        tally("inverted_val_chest", _verdicts(runner, [1.0 - g for g in grays], batch_size))
    negatives = build_negatives(shared_dicom_dir)
    by_category: dict[str, list[np.ndarray]] = {}
    for item in negatives:
        by_category.setdefault(item.category, []).append(item.gray)
    for category, grays in by_category.items():
        tally(category, _verdicts(runner, grays, batch_size))
    if shared_dicom_dir is not None:
        for name, what in NAMED_FILES:
            path = shared_dicom_dir / name
            if not path.is_file():
                continue
            try:
                gray = load_gray(path)
            except Exception:  # noqa: BLE001 - odd inputs (e.g. tiny images) fall back to a plain decode
                fallback = dicom_gray_any(path)
                if fallback is None:
                    continue
                gray = fallback
            report.named.append((name, what, _verdicts(runner, [gray], 1)[0]))
    return report
