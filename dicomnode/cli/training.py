"""CLI adapters for ``train``, ``evaluate``, ``calibrate``, ``site-threshold`` and ``models list``.

Thin: parse options, call one library function, map ``DicomNodeError`` to a one-line
message on stderr and exit code 1. torch/timm are imported inside the commands.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dicomnode.cli.choices import Calibration, DataFormat, LogLevel, Resize, Split
from dicomnode.cli.common import fail
from dicomnode.errors import DicomNodeError

if TYPE_CHECKING:
    from dicomnode.inference.manifest import IntendedPopulation


models_app = typer.Typer(no_args_is_help=True, help="Shipped and local models.")


def _configure_logging(level: str) -> None:
    try:
        from dicomnode import logconfig

        logconfig.configure(level)
    except ImportError:  # pragma: no cover - logconfig ships with the package
        logging.basicConfig(level=level)


def train(
    data: Annotated[Path, typer.Option(help="Dataset: image folder with class subfolders, MedMNIST .npz, RSNA or NIH CSV.")],
    arch: Annotated[str, typer.Option(help="timm architecture, e.g. efficientnet_lite0, resnet18, vit_tiny_patch16_224.")],
    out: Annotated[Path, typer.Option(help="Output folder: manifest.json, model.safetensors, metrics and plots.")],
    name: Annotated[str | None, typer.Option(help="Model name in the manifest (default: the --out folder name).")] = None,
    data_format: Annotated[
        DataFormat, typer.Option("--format", help="Dataset layout (auto: detected).", case_sensitive=False)
    ] = DataFormat.AUTO,
    images_dir: Annotated[Path | None, typer.Option("--images-dir", help="Image folder for the CSV formats.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs.")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    img_size: Annotated[int, typer.Option("--img-size", min=16, help="Square input side in pixels.")] = 224,
    in_chans: Annotated[int, typer.Option("--in-chans", min=1, max=3, help="1 or 3 input channels.")] = 3,
    resize: Annotated[Resize, typer.Option(help="squash, or pad (letterbox).", case_sensitive=False)] = Resize.SQUASH,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Validation fraction carved from train.")] = 0.15,
    seed: Annotated[int, typer.Option(help="Seed of split, init, batch order and augmentation.")] = 0,
    init: Annotated[
        str, typer.Option(help="random, imagenet (timm hub, online only), effnet-lite0-package, or a weights file.")
    ] = "random",
    threshold_policy: Annotated[
        str,
        typer.Option(
            "--threshold-policy",
            help="youden, sensitivity:0.95, specificity:0.9 or fixed:0.5 (on calibrated validation probabilities).",
        ),
    ] = "youden",
    calibration: Annotated[
        Calibration,
        typer.Option(help="Fitted on the validation logits before the threshold.", case_sensitive=False),
    ] = Calibration.TEMPERATURE,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Training augmentations.")] = True,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine with warmup).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.05,
    warmup_epochs: Annotated[float, typer.Option("--warmup-epochs")] = 1.0,
    patience: Annotated[int, typer.Option(help="Early stop after this many epochs without val AUC gain.")] = 5,
    max_train_samples: Annotated[int | None, typer.Option("--max-train-samples", help="Subsample train (smoke runs).")] = None,
    max_minutes: Annotated[float | None, typer.Option("--max-minutes", help="Wall-clock budget; stops between epochs.")] = None,
    stop_after_epoch: Annotated[
        int | None,
        typer.Option("--stop-after-epoch", min=1, help="End this run after that epoch (continue with --resume)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: default).")] = 0,
    description: Annotated[str, typer.Option(help="Free text for the manifest.")] = "",
    recipe: Annotated[str, typer.Option(help="Command or recipe file that reproduces the run (for the manifest).")] = "",
    teacher: Annotated[
        str | None,
        typer.Option(help="Distil from this trained model (name or manifest path; same split seed and fraction)."),
    ] = None,
    distill_weight: Annotated[
        float, typer.Option("--distill-weight", help="Weight of the teacher's soft targets (0-1].")
    ] = 0.5,
    population: Annotated[
        str, typer.Option("--population", help="Who the training data represents, one line (manifest).")
    ] = "",
    population_age: Annotated[
        str | None, typer.Option("--population-age", help="Intended PatientAge range in years, e.g. 1-5.")
    ] = None,
    population_views: Annotated[
        str, typer.Option("--population-views", help="Intended ViewPosition values, e.g. AP,PA (empty: any).")
    ] = "",
    log_level: Annotated[LogLevel, typer.Option("--log-level", case_sensitive=False)] = LogLevel.INFO,
    gate: Annotated[
        bool, typer.Option("--gate/--no-gate", help="Fit the input gate at the end (same as `dicomnode gate fit`).")
    ] = True,
) -> None:
    """Train a classifier and write a model folder (manifest + safetensors + metrics + plots + input gate)."""
    _configure_logging(log_level.value)
    from dicomnode.training.loop import TrainConfig
    from dicomnode.training.loop import train as run_training

    if in_chans not in (1, 3):
        raise typer.BadParameter("must be 1 or 3", param_hint="--in-chans")
    fmt = data_format
    config = TrainConfig(
        data=data, arch=arch, out=out, name=name, fmt=fmt, images_dir=images_dir, epochs=epochs,
        batch_size=batch_size, img_size=img_size, in_chans=in_chans, resize=resize.value,
        val_fraction=val_fraction, seed=seed, init=init, threshold_policy=threshold_policy,
        calibration=calibration.value, augment=augment, resume=resume, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
        patience=patience, max_train_samples=max_train_samples, max_minutes=max_minutes,
        stop_after_epoch=stop_after_epoch,
        device=device, threads=threads, description=description, recipe=recipe,
        teacher=teacher, distill_weight=distill_weight,
        population=_population(population, population_age, population_views),
    )
    try:
        result = run_training(config)
    except DicomNodeError as exc:
        fail(str(exc))
    report = result.report
    typer.echo(
        f"wrote {result.out / 'manifest.json'}: val AUC {report.get('auc', float('nan')):.4f}, "
        f"threshold {result.manifest.thresholds[0]:.4f} ({result.manifest.threshold_policy}), best epoch {result.best_epoch}"
    )
    typer.echo(_ci_line(report))
    if gate:
        from dicomnode.training.gate_fit import GateFitConfig, fit_gate

        try:
            fitted = fit_gate(GateFitConfig(model=str(result.out), data=data, fmt=fmt, images_dir=images_dir, device=device))
        except DicomNodeError as exc:
            fail(f"model written, but fitting its input gate failed: {exc} (retry with `dicomnode gate fit`)")
        typer.echo(
            f"input gate: {fitted.manifest_path.parent / fitted.spec.file}, "
            f"validation acceptance {fitted.spec.val_acceptance:.4f} (n={fitted.spec.n_val})"
        )


def _population(description: str, age: str | None, views: str) -> IntendedPopulation:
    """The intended population from the ``--population*`` options (``--population-age 1-5``)."""
    from dicomnode.inference.manifest import IntendedPopulation

    low = high = None
    if age:
        try:
            low_text, high_text = age.split("-", 1)
            low = float(low_text) if low_text.strip() else None
            high = float(high_text) if high_text.strip() else None
        except ValueError as exc:
            raise typer.BadParameter("use MIN-MAX in years, e.g. 1-5 (or 18- for no upper bound)", param_hint="--population-age") from exc
    chosen = tuple(v.strip().upper() for v in views.split(",") if v.strip())
    return IntendedPopulation(description=description, min_age_years=low, max_age_years=high, view_positions=chosen)


def evaluate(
    model: Annotated[list[str], typer.Option(help="Model name (models/<name>) or manifest path; repeat to compare.")],
    data: Annotated[Path, typer.Option(help="Labelled dataset (image folder with class subfolders, npz, CSV).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on the last line (several models: keyed by name).")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Folder for report.json, predictions and ROC/PR/confusion/reliability PNGs.")] = None,
    split: Annotated[
        Split, typer.Option(help="all, train, val (re-carve the training split) or test.", case_sensitive=False)
    ] = Split.ALL,
    val_fraction: Annotated[float | None, typer.Option("--val-fraction", help="Split fraction (default: from the manifest).")] = None,
    seed: Annotated[int | None, typer.Option(help="Split seed (default: from the manifest).")] = None,
    data_format: Annotated[
        DataFormat, typer.Option("--format", help="Dataset layout (auto: detected).", case_sensitive=False)
    ] = DataFormat.AUTO,
    images_dir: Annotated[Path | None, typer.Option("--images-dir")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    device: Annotated[str, typer.Option(help="cpu, cuda.")] = "cpu",
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the 95% CIs (AUC, accuracy, sens, spec).")] = 1000,
    log_level: Annotated[LogLevel, typer.Option("--log-level", case_sensitive=False)] = LogLevel.WARNING,
) -> None:
    """Evaluate one or more models: AUC (95% CI), accuracy, sensitivity, specificity, ...

    With --json the last stdout line is one JSON object: a single model's metrics
    (auc, auc_ci_low, auc_ci_high, accuracy, sensitivity, specificity, precision, f1,
    ece, threshold, n, tp, fp, tn, fn, ...), or for several --model an object keyed by
    model name whose values are those metric objects.
    """
    _configure_logging(log_level.value)
    from dicomnode.training.evaluate import evaluate_models, format_table

    fmt = data_format
    chosen = split
    try:
        result = evaluate_models(
            list(model), data, fmt=fmt, split=chosen, val_fraction=val_fraction, seed=seed,
            images_dir=images_dir, out=out, batch_size=batch_size, device=device, n_boot=bootstrap,
        )
    except DicomNodeError as exc:
        fail(str(exc))
    table = format_table(result)
    if as_json:
        typer.echo(table, err=True)
        typer.echo(json.dumps(result.summary()))
    else:
        typer.echo(table)
        if out is not None:
            typer.echo(f"report and plots in {out}")


def calibrate(
    model: Annotated[str, typer.Option(help="Model name (models/<name>) or manifest file/folder; rewritten in place (weights untouched).")],
    data: Annotated[Path, typer.Option(help="The data the model was trained on; its grouped validation split is re-carved.")],
    method: Annotated[
        Calibration,
        typer.Option(help="temperature (one per label), platt (temperature + bias) or none.", case_sensitive=False),
    ] = Calibration.TEMPERATURE,
    data_format: Annotated[
        DataFormat, typer.Option("--format", help="Dataset layout (auto: detected).", case_sensitive=False)
    ] = DataFormat.AUTO,
    images_dir: Annotated[Path | None, typer.Option("--images-dir")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="64 = what train uses.")] = 64,
    device: Annotated[str, typer.Option(help="cpu, cuda (use the device the model was trained on to match train exactly).")] = "cpu",
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the 95% CIs.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new validation report as JSON on the last line.")] = False,
    log_level: Annotated[LogLevel, typer.Option("--log-level", case_sensitive=False)] = LogLevel.WARNING,
) -> None:
    """Post-hoc calibration: fit the temperature on the validation split, re-pick the threshold, rewrite the manifest.

    Same steps and result as the end of `train`: validation logits -> temperature (min NLL)
    -> calibrated probabilities -> threshold by the manifest's threshold_policy -> report.
    """
    _configure_logging(log_level.value)
    from dicomnode.training.calibrate import calibrate_model

    fmt = data_format
    try:
        result = calibrate_model(
            model, data, fmt=fmt, images_dir=images_dir, method=method.value, n_boot=bootstrap,
            batch_size=batch_size, device=device,
        )
    except DicomNodeError as exc:
        fail(str(exc))
    before, after, report = result.before, result.after, result.report
    cal = after.calibration
    if cal is not None:
        typer.echo(
            f"calibration ({cal.method}): T {', '.join(f'{t:.4f}' for t in cal.temperatures)}; "
            f"NLL {_pair(cal.nll_before, cal.nll_after)}; ECE {_pair(cal.ece_before, cal.ece_after)}; n {cal.n}"
        )
    typer.echo(
        f"threshold ({after.threshold_policy}): {', '.join(f'{t:.4f}' for t in before.thresholds)} -> "
        f"{', '.join(f'{t:.4f}' for t in after.thresholds)}"
    )
    typer.echo(_ci_line(report))
    typer.echo(f"rewrote {result.folder / 'manifest.json'} and metrics.json (weights unchanged)")
    if as_json:
        typer.echo(json.dumps(_clean(report)))


def site_threshold(
    model: Annotated[str, typer.Option(help="Source model name or manifest file/folder (not modified).")],
    data: Annotated[Path, typer.Option(help="The site's labelled images, any layout train reads.")],
    out: Annotated[Path, typer.Option(help="New model folder (must not exist): copied weights + new manifest.")],
    policy: Annotated[str, typer.Option(help="youden, sensitivity:0.95 or specificity:0.9 (on calibrated probabilities).")] = "youden",
    data_format: Annotated[
        DataFormat, typer.Option("--format", help="Dataset layout (auto: detected).", case_sensitive=False)
    ] = DataFormat.AUTO,
    images_dir: Annotated[Path | None, typer.Option("--images-dir")] = None,
    site_name: Annotated[str | None, typer.Option("--site-name", help="Tag for the version suffix (default: the --out folder name).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "cpu",
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the 95% CIs.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the site figures as JSON on the last line.")] = False,
    log_level: Annotated[LogLevel, typer.Option("--log-level", case_sensitive=False)] = LogLevel.WARNING,
) -> None:
    """Choose the threshold on a site's own labelled data and write a copy of the model that uses it.

    Serve the copy with: dicomnode serve --model OUT (or OUT/manifest.json).
    """
    _configure_logging(log_level.value)
    from dicomnode.training.site import site_threshold as run_site_threshold

    fmt = data_format
    try:
        result = run_site_threshold(
            model, data, out, policy=policy, fmt=fmt, images_dir=images_dir, site_name=site_name,
            n_boot=bootstrap, batch_size=batch_size, device=device,
        )
    except DicomNodeError as exc:
        fail(str(exc))
    site = result.manifest.site_validation
    n = site.n if site else 0
    typer.echo(f"site data: n {n}, positive {site.n_positive if site else 0}, AUC {_with_ci(result.at_new.as_dict(), 'auc')}")
    for label, report in (("source threshold", result.at_source), ("site threshold  ", result.at_new)):
        values = report.as_dict()
        typer.echo(
            f"{label} {report.threshold:.4f}: sensitivity {_with_ci(values, 'sensitivity')}, "
            f"specificity {_with_ci(values, 'specificity')}, accuracy {_with_ci(values, 'accuracy')}"
        )
    typer.echo(f"95% CIs: {result.at_new.ci_method}")
    typer.echo(f"wrote {result.folder} (version {result.manifest.version}); serve it with --model {result.folder}")
    if as_json:
        typer.echo(
            json.dumps(_clean({"at_new_threshold": result.at_new.as_dict(), "at_source_threshold": result.at_source.as_dict()}))
        )


def _pair(before: tuple[float, ...], after: tuple[float, ...]) -> str:
    return ", ".join(f"{b:.4f} -> {a:.4f}" for b, a in zip(before, after))


def _with_ci(values: dict[str, Any], key: str) -> str:
    value, low, high = values.get(key), values.get(f"{key}_ci_low"), values.get(f"{key}_ci_high")
    if not isinstance(value, float) or not math.isfinite(value):
        return "-"
    if isinstance(low, float) and isinstance(high, float) and math.isfinite(low) and math.isfinite(high):
        return f"{value:.4f} ({low:.4f}-{high:.4f})"
    return f"{value:.4f}"


def _ci_line(report: dict[str, Any]) -> str:
    parts = [f"{key} {_with_ci(report, key)}" for key in ("auc", "accuracy", "sensitivity", "specificity") if key in report]
    return "validation: " + ", ".join(parts) + (f"; 95% CIs: {report['ci_method']}" if report.get("ci_method") else "")


def _clean(value: Any) -> Any:
    from dicomnode.training.calibrate import jsonable

    return jsonable(value)


@models_app.command("list")
def list_models(
    directory: Annotated[Path | None, typer.Option("--dir", help="Models folder (default: $DICOMNODE_MODELS_DIR or ./models).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List the models found in the models folder with their validation figures."""
    from dicomnode.inference.registry import list_manifests, models_dir

    root = directory or models_dir()
    found = list_manifests(root)
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "name": m.folder.name,
                        "architecture": m.manifest.architecture,
                        "labels": list(m.manifest.labels),
                        "input_size": m.manifest.preprocessing.input_size,
                        "thresholds": list(m.manifest.thresholds),
                        "validation_metrics": m.manifest.validation_metrics,
                        "manifest": str(m.folder / "manifest.json"),
                    }
                    for m in found
                ]
            )
        )
        return
    if not found:
        typer.echo(f"no models in {root}")
        return
    typer.echo(f"{'name':<14}{'architecture':<26}{'size':>6}{'val AUC':>9}{'acc':>8}{'thresh':>8}  labels")
    for m in found:
        vm = m.manifest.validation_metrics
        auc = f"{vm['auc']:.4f}" if "auc" in vm else "-"
        acc = f"{vm['accuracy']:.4f}" if "accuracy" in vm else "-"
        typer.echo(
            f"{m.folder.name:<14}{m.manifest.architecture:<26}{m.manifest.preprocessing.input_size:>6}"
            f"{auc:>9}{acc:>8}{m.manifest.thresholds[0]:>8.4f}  {','.join(m.manifest.labels)}"
        )


def pretrain(
    data: Annotated[Path, typer.Option(help="Images (any training layout; labels are ignored).")],
    out: Annotated[Path, typer.Option(help="Output folder for encoder.safetensors.")],
    arch: Annotated[str, typer.Option(help="timm ViT, e.g. vit_tiny_patch16_224.")] = "vit_tiny_patch16_224",
    img_size: Annotated[int, typer.Option("--img-size", min=16)] = 112,
    in_chans: Annotated[int, typer.Option("--in-chans", min=1, max=3)] = 3,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    mask_ratio: Annotated[float, typer.Option("--mask-ratio")] = 0.75,
    lr: Annotated[float, typer.Option()] = 1.5e-3,
    seed: Annotated[int, typer.Option(help="Seed (also of the validation split left out).")] = 0,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Validation part (same seed as train) left out; 0 = use all.")
    ] = 0.15,
    max_minutes: Annotated[float | None, typer.Option("--max-minutes")] = None,
    threads: Annotated[int, typer.Option()] = 0,
    log_level: Annotated[LogLevel, typer.Option("--log-level", case_sensitive=False)] = LogLevel.INFO,
) -> None:
    """Masked-autoencoder pretraining of a ViT on the training images (then: train --init OUT/encoder.safetensors)."""
    _configure_logging(log_level.value)
    from dicomnode.training.pretrain import PretrainConfig
    from dicomnode.training.pretrain import pretrain as run_pretrain

    config = PretrainConfig(
        data=data, arch=arch, out=out, img_size=img_size, in_chans=in_chans, epochs=epochs,
        batch_size=batch_size, mask_ratio=mask_ratio, lr=lr, seed=seed, val_fraction=val_fraction,
        max_minutes=max_minutes,
        threads=threads,
    )
    try:
        path = run_pretrain(config)
    except DicomNodeError as exc:
        fail(str(exc))
    typer.echo(f"wrote {path}; fine-tune with: dicomnode train --arch {arch} --img-size {img_size} --init {path} ...")


def _standalone() -> typer.Typer:
    """These commands as their own app: ``python -m dicomnode.cli.training pretrain ...``."""
    standalone = typer.Typer(no_args_is_help=True)
    standalone.command("train")(train)
    standalone.command("evaluate")(evaluate)
    standalone.command("pretrain")(pretrain)
    standalone.command("calibrate")(calibrate)
    standalone.command("site-threshold")(site_threshold)
    standalone.add_typer(models_app, name="models")
    return standalone


if __name__ == "__main__":
    _standalone()()
