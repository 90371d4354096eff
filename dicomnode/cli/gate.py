"""CLI adapters for ``dicomnode gate fit`` and ``dicomnode gate evaluate`` (the input gate).

Thin: parse options, call one library function, map ``DicomNodeError`` to a one-line
message on stderr and exit code 1. torch/sklearn are imported inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dicomnode.cli.choices import LogLevel
from dicomnode.cli.common import fail
from dicomnode.errors import DicomNodeError

gate_app = typer.Typer(no_args_is_help=True, help="The input gate: is an image a frontal chest radiograph?")


def _shared_dicom_default() -> Path | None:
    import os

    from dicomnode.inference.registry import models_dir

    shared = os.environ.get("DICOMNODE_SHARED_DATA")
    root = Path(shared) if shared else models_dir().resolve().parents[1] / "shared" / "data"
    candidate = root / "dicom"
    return candidate if candidate.is_dir() else None


@gate_app.command("fit")
def fit(
    model: Annotated[str, typer.Option(help="Model name (models/<name>) or manifest path/folder.")],
    data: Annotated[Path, typer.Option(help="The dataset the model was trained on (its split is re-carved).")],
    max_images: Annotated[int, typer.Option("--max-images", min=10, help="Training images used (before augmentation).")] = 1500,
    augment_copies: Annotated[int, typer.Option("--augment-copies", min=0, help="Strongly augmented copies per image.")] = 1,
    components: Annotated[
        int | None, typer.Option(min=1, help="Principal directions of the feature covariance (default: min(64, D/12)).")
    ] = None,
    target_acceptance: Annotated[
        float, typer.Option("--target-acceptance", min=0.5, max=1.0, help="Fraction of validation chests that must pass.")
    ] = 0.99,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Subset and augmentation seed.")] = 0,
    log_level: Annotated[LogLevel, typer.Option("--log-level", case_sensitive=False)] = LogLevel.INFO,
) -> None:
    """Fit the input gate on the model's training images; writes gate.safetensors and the manifest's gate section."""
    from dicomnode import logconfig
    from dicomnode.training.gate_fit import GateFitConfig, fit_gate

    logconfig.configure(log_level.value)
    config = GateFitConfig(
        model=model, data=data, max_images=max_images, augment_copies=augment_copies, n_components=components,
        target_acceptance=target_acceptance, batch_size=batch_size, device=device, seed=seed,
    )
    try:
        result = fit_gate(config)
    except DicomNodeError as exc:
        fail(str(exc))
    spec = result.spec
    typer.echo(
        f"wrote {result.manifest_path.parent / spec.file} and the gate section of {result.manifest_path}: "
        f"threshold {spec.threshold:.3f}, validation acceptance {spec.val_acceptance:.4f} (n={spec.n_val}), "
        f"two-fold {spec.validation.get('val_acceptance_two_fold', float('nan')):.4f}"
    )


@gate_app.command("evaluate")
def evaluate(
    model: Annotated[str, typer.Option(help="Model name (models/<name>) or manifest path/folder.")],
    data: Annotated[Path | None, typer.Option(help="The training dataset (validation chests); omit to skip them.")] = None,
    dicom_dir: Annotated[
        Path | None, typer.Option("--dicom-dir", help="Folder with RG1/RG3/SIIM/NIH/Fake_MONOHR1 (default $DICOMNODE_SHARED_DATA/dicom or ../shared/data/dicom).")
    ] = None,
    max_val: Annotated[int | None, typer.Option("--max-val", min=1, help="At most this many validation chests.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Also print one JSON object on the last line.")] = False,
) -> None:
    """Measure the gate: acceptance of validation chests (95 % CI), rejection per negative category, named files."""
    from dicomnode.training.gate_eval import evaluate_gate

    try:
        report = evaluate_gate(model, data, dicom_dir or _shared_dicom_default(), max_val=max_val, device=device)
    except DicomNodeError as exc:
        fail(str(exc))
    typer.echo(report.format())
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
