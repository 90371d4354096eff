"""The model manifest: everything needed to rebuild, verify and explain a shipped model.

A shipped model is a folder ``models/<name>/`` holding ``manifest.json`` and a
safetensors weights file. The manifest is the contract between training
(which writes it), evaluation and serving (which read it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dicomnode.domain import ModelIdentity
from dicomnode.errors import ModelError
from dicomnode.inference.calibration import Calibration

MANIFEST_FILENAME = "manifest.json"


class Preprocessing(BaseModel):
    """How DICOM or image pixels become the model's input tensor.

    Attributes:
        input_size: square side in pixels the image is resized to, e.g. 224.
        in_chans: 1 (grayscale) or 3 (the gray image repeated on three channels).
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel std divided after subtracting the mean.
        resize: ``"squash"`` resizes without keeping the aspect ratio (the Kermany
            copies are squashed); ``"pad"`` letterboxes to a square first.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_size: int = Field(ge=16, le=2048)
    in_chans: Literal[1, 3] = 3
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: Literal["squash", "pad"] = "squash"

    @model_validator(mode="after")
    def _channels_match(self) -> Preprocessing:
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean and std need {self.in_chans} values each")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


class IntendedPopulation(BaseModel):
    """Who the model was trained for; images outside are flagged (or skipped) by the pipeline.

    Attributes:
        description: one line for readers, e.g. ``"pediatric (1-5 years), frontal AP chest"``.
        min_age_years: youngest PatientAge in years (inclusive), None = no lower bound.
        max_age_years: oldest PatientAge in years (inclusive), None = no upper bound.
        view_positions: accepted ViewPosition values (``"AP"``, ``"PA"``); empty = any.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str = ""
    min_age_years: float | None = None
    max_age_years: float | None = None
    view_positions: tuple[str, ...] = ()


class SiteValidation(BaseModel):
    """A site's own labelled check of a model, made by ``dicomnode site-threshold``.

    Attributes:
        data: description of the site data (path, layout, counts).
        policy: the threshold policy applied on the site data, e.g. ``youden``.
        n: images used.
        n_positive: images with the (first) label positive.
        n_groups: patients (cluster-bootstrap units), 0 when the data carries no patient key.
        ci_method: how the 95 % intervals were made (patient or image bootstrap, resamples).
        source_version: version of the model the thresholds were re-picked for.
        source_thresholds: the thresholds before (the shipped ones).
        at_new_threshold: AUC, accuracy, sensitivity, specificity (with ``_ci_low``/``_ci_high``)
            and confusion counts at the new thresholds.
        at_source_threshold: the same figures at the source thresholds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str
    policy: str
    n: int = Field(ge=0)
    n_positive: int = Field(ge=0)
    n_groups: int = Field(default=0, ge=0)
    ci_method: str = ""
    source_version: str = ""
    source_thresholds: tuple[float, ...] = ()
    at_new_threshold: dict[str, float] = Field(default_factory=dict)
    at_source_threshold: dict[str, float] = Field(default_factory=dict)


class GateSpec(BaseModel):
    """The model's input gate (``dicomnode.inference.gate``), written by ``dicomnode gate fit``.

    Attributes:
        method: ``"ppca-mahalanobis"``: squared Mahalanobis distance / D under a PPCA
            (Ledoit-Wolf) covariance, of the pooled pre-logits features and of a
            standardised thumbnail (the layout score).
        file: parameters file beside the manifest, e.g. ``gate.safetensors``.
        sha256: hex sha256 of that file.
        threshold: feature score above which an image is gated (chosen on validation chests).
        feature_dim: D, the classifier's input width (1280 for EfficientNet-Lite0).
        n_components: k principal directions of the feature covariance.
        layout_threshold: layout score above which an image is gated.
        layout_size: thumbnail side in pixels (layout vector of ``layout_size**2`` values).
        layout_components: k principal directions of the layout covariance.
        inverted_ratio: inverted grayscale when the layout score exceeds this many times
            the inverted image's layout score (and the latter passes).
        min_gray_std: gray standard deviation (display units [0, 1] at the model's input
            size) below which an image has no content.
        min_neighbour_corr: lag-1 neighbour correlation below which it is noise.
        fit_set: what the score was fitted on (data, split, augmentation).
        n_fit: images (with augmented copies) in the fit set.
        target_acceptance: wanted fraction of validation chests passing.
        val_acceptance: measured fraction of validation chests passing (all checks).
        n_val: validation chests measured.
        validation: further measured figures (e.g. rejection per negative category).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["ppca-mahalanobis"] = "ppca-mahalanobis"
    file: str = "gate.safetensors"
    sha256: str
    threshold: float = Field(gt=0)
    feature_dim: int = Field(ge=1)
    n_components: int = Field(ge=1)
    layout_threshold: float = Field(gt=0)
    layout_size: int = Field(default=24, ge=4, le=128)
    layout_components: int = Field(default=8, ge=1)
    inverted_ratio: float = Field(default=1.0, gt=0)
    min_gray_std: float = Field(default=0.02, ge=0)
    min_neighbour_corr: float = Field(default=0.3, ge=-1, le=1)
    fit_set: str = ""
    n_fit: int = 0
    target_acceptance: float = Field(default=0.99, gt=0, le=1)
    val_acceptance: float | None = None
    n_val: int = 0
    validation: dict[str, float] = Field(default_factory=dict)


class ModelManifest(BaseModel):
    """Description of one trained model (``models/<name>/manifest.json``).

    The model outputs one logit per label; probabilities are the sigmoid of the
    logits for binary (one label) and multi-label heads alike, after the optional
    ``calibration`` (:func:`dicomnode.inference.calibration.calibrated_probabilities`).
    Thresholds apply to those (calibrated) probabilities.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: str
    version: str = "1.0.0"
    architecture: str = Field(description="timm model name, e.g. efficientnet_lite0")
    task: Literal["binary", "multilabel"] = "binary"
    labels: tuple[str, ...] = Field(min_length=1)
    thresholds: tuple[float, ...] = Field(description="one decision threshold per label")
    threshold_policy: str = Field(default="youden", description="how thresholds were chosen")
    preprocessing: Preprocessing
    weights: str = Field(description="weights file name, relative to the manifest's folder")
    weights_sha256: str
    cam_target_layer: str | None = Field(
        default=None, description="dotted module path for Grad-CAM; None = architecture default"
    )
    training_data: str = ""
    validation_metrics: dict[str, float] = Field(default_factory=dict)
    validation_split: dict[str, str | int | float] = Field(
        default_factory=dict,
        description="how the validation split was carved: method, group key, seed, fraction, image and group counts",
    )
    recipe: str = ""
    description: str = ""
    intended_population: IntendedPopulation = Field(default_factory=IntendedPopulation)
    calibration: Calibration | None = Field(
        default=None, description="temperature/Platt scaling of the logits; None = plain sigmoid"
    )
    site_validation: SiteValidation | None = Field(
        default=None, description="set by site-threshold: the site's figures at the new and old thresholds"
    )
    gate: GateSpec | None = Field(
        default=None, description="input gate on the pixels (None: every image is assessable)"
    )

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_range(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= t <= 1.0 for t in value):
            raise ValueError("thresholds must lie in [0, 1]")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        if len(self.thresholds) != len(self.labels):
            raise ValueError("one threshold per label is required")
        if self.task == "binary" and len(self.labels) != 1:
            raise ValueError("a binary model has exactly one label (the positive finding)")
        if self.calibration is not None and len(self.calibration.temperatures) != len(self.labels):
            raise ValueError("calibration needs one temperature per label")
        return self

    def identity(self) -> ModelIdentity:
        """The identity written into result objects."""
        return ModelIdentity(
            name=self.name,
            version=self.version,
            architecture=self.architecture,
            weights_sha256=self.weights_sha256,
        )


class LoadedManifest(BaseModel):
    """A manifest together with the folder it was read from."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    manifest: ModelManifest
    folder: Path

    @property
    def weights_path(self) -> Path:
        """Absolute path of the weights file."""
        return self.folder / self.manifest.weights


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: Path) -> LoadedManifest:
    """Read and validate a manifest file (or a folder holding ``manifest.json``).

    Raises:
        ModelError: the file is missing, not JSON, or not a valid manifest.
    """
    file = path / MANIFEST_FILENAME if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        manifest = ModelManifest.model_validate(data)
    except FileNotFoundError as exc:
        raise ModelError(f"no model manifest at {file}") from exc
    except (ValueError, OSError) as exc:
        raise ModelError(f"invalid model manifest {file}: {exc}") from exc
    return LoadedManifest(manifest=manifest, folder=file.parent.resolve())


def write_manifest(manifest: ModelManifest, folder: Path) -> Path:
    """Write ``manifest.json`` into ``folder`` (created if needed); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / MANIFEST_FILENAME
    file.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return file
