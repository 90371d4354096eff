"""Train one timm classifier and write a shipped-model folder.

Output folder layout (``--out DIR``)::

    manifest.json         ModelManifest (architecture, preprocessing, threshold, metrics, sha256)
    model.safetensors     best weights (highest validation AUC)
    history.csv/.json     per-epoch metrics
    metrics.json          validation report of the best model at the chosen threshold
    curves.png roc.png pr.png confusion.png reliability.png
    last.pt               resumable state (model, optimiser, schedule, RNGs, history)

AdamW with a linear-warmup cosine schedule, BCE-with-logits with ``pos_weight`` for
class imbalance, augmentations on a switch, AMP (bf16) on CUDA, gradient clipping,
channels_last for CNNs, early stopping on validation AUC.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomnode.errors import DataError, ModelError
from dicomnode.inference.calibration import Calibration, calibrated_probabilities
from dicomnode.inference.manifest import (
    IntendedPopulation,
    ModelManifest,
    Preprocessing,
    sha256_file,
)
from dicomnode.training import metrics
from dicomnode.training.augment import AugmentConfig, augment_gray
from dicomnode.training.calibrate import (
    choose_on_validation,
    fitted_on_text,
    validation_metrics,
    write_validation,
)
from dicomnode.training.datasets import (
    DataFormat,
    LabeledImages,
    load_dataset,
    split_indices,
    split_summary,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

WEIGHTS_FILENAME = "model.safetensors"
STATE_FILENAME = "last.pt"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TrainConfig:
    """Everything one training run depends on (stored in ``train_config.json``).

    Attributes:
        data: dataset path (image folder, MedMNIST npz, RSNA/NIH CSV or folder).
        arch: timm architecture name.
        out: output folder (becomes a model folder).
        name: model name in the manifest (default: the output folder's name).
        fmt: dataset layout (auto-detected by default).
        images_dir: image folder for the CSV formats.
        epochs: maximum number of epochs.
        batch_size: training batch size.
        img_size: square input side in pixels.
        in_chans: 1 or 3 input channels (gray repeated).
        resize: ``squash`` or ``pad``.
        val_fraction: validation fraction carved from train when the data has no split.
        seed: seed of the split, initialisation, batch order and augmentation.
        init: ``random``, ``imagenet``, ``effnet-lite0-package`` or a weights file.
        threshold_policy: ``youden``, ``sensitivity:0.95``, ``specificity:0.9`` or ``fixed:0.5``,
            applied to the calibrated validation probabilities.
        calibration: ``temperature`` (default), ``platt`` or ``none``: post-hoc calibration
            fitted on the validation logits before the threshold is chosen.
        augment: apply training augmentations.
        resume: continue from ``out/last.pt``.
        lr: peak learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        warmup_epochs: linear warmup length (fraction of epochs allowed).
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        patience: epochs without validation AUC improvement before stopping.
        grad_clip: gradient norm clip (0 disables).
        eval_batch_size: batch size for validation.
        max_train_samples: use at most this many training samples (tests, smoke runs).
        max_minutes: stop after the epoch that would overrun this wall-clock budget.
        stop_after_epoch: end this invocation after that epoch (the schedule still
            spans ``epochs``); continue later with ``resume`` and, to anneal early, a
            smaller ``epochs``.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: torch intra-op threads (0 = torch default).
        bootstrap: bootstrap resamples for the 95 % intervals (patients resampled when the
            data has a patient key).
        description: free text for the manifest.
        recipe: the command/recipe that reproduces the run (for the manifest).
        teacher: a trained model (name under ``models/`` or manifest path) whose
            probabilities on each augmented training batch serve as soft targets
            (knowledge distillation). It must have been trained with the same
            validation split (same ``seed`` and ``val_fraction``), or the student's
            validation figures would be contaminated.
        distill_weight: weight of the soft-target loss; the hard-label loss gets
            ``1 - distill_weight``.
        population: who the training data represents (written to the manifest; the
            node flags or skips images outside it).
    """

    data: Path
    arch: str
    out: Path
    name: str | None = None
    fmt: DataFormat = DataFormat.AUTO
    images_dir: Path | None = None
    epochs: int = 10
    batch_size: int = 32
    img_size: int = 224
    in_chans: int = 3
    resize: str = "squash"
    val_fraction: float = 0.15
    seed: int = 0
    init: str = "random"
    threshold_policy: str = "youden"
    calibration: str = "temperature"
    augment: bool = True
    resume: bool = False
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    patience: int = 5
    grad_clip: float = 1.0
    eval_batch_size: int = 64
    max_train_samples: int | None = None
    max_minutes: float | None = None
    stop_after_epoch: int | None = None
    device: str = "auto"
    threads: int = 0
    bootstrap: int = 1000
    description: str = ""
    recipe: str = ""
    teacher: str | None = None
    distill_weight: float = 0.5
    population: IntendedPopulation = field(default_factory=IntendedPopulation)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings, the population as a dict)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
        out["population"] = self.population.model_dump(mode="json")
        return out


@dataclass
class TrainResult:
    """What a finished run produced."""

    out: Path
    manifest: ModelManifest
    report: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_preprocessing(config: TrainConfig) -> Preprocessing:
    """Input size, channels and normalisation of the run (ImageNet mean/std for 3 channels)."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    if config.in_chans == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = (0.5,), (0.25,)
    return Preprocessing(
        input_size=config.img_size,
        in_chans=config.in_chans,  # type: ignore[arg-type]
        mean=mean,
        std=std,
        resize=config.resize,  # type: ignore[arg-type]
    )


def batch_inputs(
    data: LabeledImages,
    indices: np.ndarray,
    pre: Preprocessing,
    rng: np.random.Generator | None,
    aug: AugmentConfig | None,
) -> np.ndarray:
    """(B, C, S, S) float32 inputs of ``indices`` (augmented when ``aug`` is given)."""
    from dicomnode.inference.preprocess import gray_to_input

    out = np.empty((len(indices), pre.in_chans, pre.input_size, pre.input_size), dtype=np.float32)
    for row, index in enumerate(indices):
        gray = data.gray(int(index))
        if aug is not None and rng is not None:
            gray = augment_gray(gray, rng, aug, max_side=2 * pre.input_size)
        out[row] = gray_to_input(gray, pre)
    return out


def predict_probs(
    model: torch.nn.Module,
    data: LabeledImages,
    pre: Preprocessing,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    progress: bool = False,
    calibration: Calibration | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and raw logits of a model over a dataset (no augmentation).

    Args:
        calibration: the manifest's calibration; the probabilities are then the calibrated
            ones, as :class:`~dicomnode.inference.runner.ModelRunner` reports them
            (None: plain sigmoid). The logits are always raw.

    Returns:
        (probs, logits), both (N, L) float32.
    """
    import torch

    from dicomnode.inference.loading import select_device

    device = select_device(device)
    model.eval()
    logits: list[np.ndarray] = []
    n = len(data)
    bar = _bar(total=n, desc="predict", unit="img") if progress else None
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(n, start + batch_size))
            x = torch.from_numpy(batch_inputs(data, idx, pre, None, None)).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device):
                y = model(x)
            logits.append(y.float().cpu().numpy())
            if bar is not None:
                bar.update(len(idx))
    if bar is not None:
        bar.close()
    z = np.concatenate(logits) if logits else np.empty((0, len(data.labels)), dtype=np.float32)
    return calibrated_probabilities(z, calibration), z.astype(np.float32)


def _autocast(device: torch.device) -> Any:
    import contextlib

    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _bar(**kwargs: Any) -> Any:
    from tqdm import tqdm  # type: ignore[import-untyped]

    return tqdm(file=sys.stderr, dynamic_ncols=True, leave=False, mininterval=2.0, **kwargs)


def _lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float) -> Any:
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or "pos_embed" in name or "cls_token" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def _score(targets: np.ndarray, probs: np.ndarray) -> float:
    return metrics.roc_auc(targets[:, 0], probs[:, 0]) if targets.shape[1] == 1 else metrics.mean_auc(targets, probs)


def _bce(targets: np.ndarray, logits: np.ndarray) -> float:
    z = logits.astype(np.float64)
    loss = np.maximum(z, 0) - z * targets + np.log1p(np.exp(-np.abs(z)))
    return float(loss.mean()) if loss.size else float("nan")


def prepare_data(config: TrainConfig) -> tuple[LabeledImages, LabeledImages, dict[str, object]]:
    """Training and validation parts of ``config.data`` and how they were split.

    The validation part is the data's own when it has one, else a stratified split
    grouped by patient (:func:`~dicomnode.training.datasets.split_indices`).

    Returns:
        (train, validation, split summary for the manifest).

    Raises:
        DataError: unreadable data or a split that leaves a part empty.
    """
    train_all, own_val = load_dataset(config.data, config.fmt, images_dir=config.images_dir)
    if own_val is not None:
        train, val = train_all, own_val
        split: dict[str, object] = {
            "method": "the dataset's own validation part",
            "group_key": train_all.group_source,
            "n_train_images": len(train),
            "n_val_images": len(val),
        }
    else:
        train_idx, val_idx = split_indices(train_all.targets, config.val_fraction, config.seed, train_all.groups)
        train, val = train_all.subset(train_idx), train_all.subset(val_idx)
        split = split_summary(train_all, train_idx, val_idx, config.val_fraction, config.seed)
    if config.max_train_samples is not None and len(train) > config.max_train_samples:
        rng = np.random.default_rng(config.seed)
        keep = np.sort(rng.choice(len(train), config.max_train_samples, replace=False))
        train = train.subset(keep)
    train.cache_images = True
    val.cache_images = True
    return train, val, split


def train(config: TrainConfig) -> TrainResult:
    """Train, select the best epoch on validation AUC, choose the threshold, write the model.

    Args:
        config: the run's settings.

    Returns:
        The written manifest, the validation report and the per-epoch history.

    Raises:
        DataError: the dataset cannot be read or split.
        ModelError: the architecture or the initial weights cannot be used.
    """
    import torch

    from dicomnode.inference.loading import select_device
    from dicomnode.inference.registry import create_model, is_cnn
    from dicomnode.training.init import initialise

    started = time.monotonic()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(config.seed)
    device = select_device(config.device)
    train_data, val_data, split = prepare_data(config)
    labels = train_data.labels
    if train_data.positives().min() == 0:
        raise DataError(f"a label has no positive training sample: {dict(zip(labels, train_data.positives()))}")
    task = "binary" if len(labels) == 1 else "multilabel"
    pre = make_preprocessing(config)
    name = config.name or out.resolve().name
    draft = ModelManifest(
        name=name,
        architecture=config.arch,
        task=task,  # type: ignore[arg-type]
        labels=labels,
        thresholds=tuple(0.5 for _ in labels),
        threshold_policy=config.threshold_policy,
        preprocessing=pre,
        weights=WEIGHTS_FILENAME,
        weights_sha256="",
    )
    model = create_model(draft)
    init_note = initialise(model, config.arch, config.init)
    cnn = is_cnn(config.arch)
    model.to(device)
    if cnn:
        model.to(memory_format=torch.channels_last)
    logger.info(
        "training %s on %d images, validating on %d (%s), labels %s, %s init",
        config.arch, len(train_data), len(val_data), device, labels, init_note,
    )
    (out / "train_config.json").write_text(json.dumps(config.to_json(), indent=2) + "\n", encoding="utf-8")

    pos = train_data.positives().astype(np.float64)
    neg = len(train_data) - pos
    pos_weight = torch.tensor(np.clip(neg / np.maximum(pos, 1.0), 0.05, 50.0), dtype=torch.float32, device=device)
    criterion = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    steps_per_epoch = max(1, len(train_data) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, warmup_steps, config.min_lr_ratio)
    )
    aug = AugmentConfig() if config.augment else None
    soft_targets = teacher_targets(config, train_data, device)

    history: list[dict[str, float]] = []
    best_auc, best_epoch, start_epoch = -math.inf, 0, 1
    state_path = out / STATE_FILENAME
    if config.resume:
        if not state_path.is_file():
            raise ModelError(f"--resume: no {STATE_FILENAME} in {out}")
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        best_auc, best_epoch = float(state["best_auc"]), int(state["best_epoch"])
        start_epoch = int(state["epoch"]) + 1
        torch.set_rng_state(state["torch_rng"])
        logger.info("resuming at epoch %d (best AUC %.4f at epoch %d)", start_epoch, best_auc, best_epoch)

    rng = np.random.default_rng([config.seed, start_epoch])
    epoch_times: list[float] = []
    for epoch in range(start_epoch, config.epochs + 1):
        epoch_start = time.monotonic()
        rng = np.random.default_rng([config.seed, epoch])
        order = rng.permutation(len(train_data))[: steps_per_epoch * config.batch_size]
        model.train()
        losses: list[float] = []
        bar = _bar(total=steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}", unit="batch")
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            x = torch.from_numpy(batch_inputs(train_data, idx, pre, rng, aug)).to(device)
            if cnn:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(train_data.targets[idx]).to(device)
            with _autocast(device):
                logits = model(x)
            loss = criterion(logits.float(), y)
            if soft_targets is not None:
                soft = torch.from_numpy(soft_targets[idx]).to(device)
                soft_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), soft)
                loss = (1.0 - config.distill_weight) * loss + config.distill_weight * soft_loss
            if not torch.isfinite(loss):
                raise ModelError(f"training diverged: loss {loss.item()} at epoch {epoch} step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.item()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            bar.update(1)
        bar.close()
        probs, val_logits = predict_probs(
            model, val_data, pre, batch_size=config.eval_batch_size, device=device, channels_last=cnn
        )
        val_auc = _score(val_data.targets, probs)
        row = {
            "epoch": float(epoch),
            "train_loss": float(np.mean(losses)),
            "val_loss": _bce(val_data.targets, val_logits),
            "val_auc": val_auc,
            "lr": float(scheduler.get_last_lr()[0]),
            "seconds": time.monotonic() - epoch_start,
        }
        if len(labels) == 1:
            row["val_accuracy_at_0.5"] = float(np.mean((probs[:, 0] >= 0.5) == (val_data.targets[:, 0] == 1)))
        history.append(row)
        improved = val_auc > best_auc
        if improved:
            best_auc, best_epoch = val_auc, epoch
            _save_weights(model, out / WEIGHTS_FILENAME)
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
                "best_auc": best_auc,
                "best_epoch": best_epoch,
                "epoch": epoch,
                "torch_rng": torch.get_rng_state(),
            },
            state_path,
        )
        _write_history(history, out)
        epoch_times.append(row["seconds"])
        message = (
            f"epoch {epoch}/{config.epochs}  train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"val_auc {val_auc:.4f}{' *' if improved else ''}  {row['seconds']:.0f}s"
        )
        print(message, file=sys.stderr, flush=True)
        logger.info(message)
        if epoch - best_epoch >= config.patience:
            logger.info("early stop: no AUC gain for %d epochs", config.patience)
            break
        if config.stop_after_epoch is not None and epoch >= config.stop_after_epoch:
            logger.info("stopping after epoch %d as asked (--stop-after-epoch)", epoch)
            break
        if config.max_minutes is not None:
            elapsed = (time.monotonic() - started) / 60.0
            if elapsed + max(epoch_times) / 60.0 > config.max_minutes:
                logger.info("stopping after epoch %d: time budget of %.0f min", epoch, config.max_minutes)
                break

    return finalize(config, draft, val_data, history, best_epoch, init_note, device, split)


def teacher_targets(config: TrainConfig, train_data: LabeledImages, device: torch.device) -> np.ndarray | None:
    """The distillation teacher's calibrated probabilities on the training images, or None.

    Offline distillation: the teacher sees each training image once, un-augmented, and its
    probability is the soft target of every augmented view of that image (a fraction of the
    cost of running the teacher on every batch, which matters on a CPU).

    Returns:
        (N, L) float32 soft targets in [0, 1], row ``i`` for ``train_data`` image ``i``.

    Raises:
        ModelError: the teacher cannot be loaded, has other labels, or was validated on
            another split (its knowledge of the validation patients would leak into the
            student's figures).
    """
    if config.teacher is None:
        return None
    from dicomnode.inference.registry import is_cnn, load_model, resolve_manifest

    if not 0.0 < config.distill_weight <= 1.0:
        raise ModelError(f"distill weight must lie in (0, 1], got {config.distill_weight}")
    loaded = resolve_manifest(config.teacher)
    teacher_metrics = loaded.manifest.validation_metrics
    same_split = (
        int(teacher_metrics.get("split_seed", -1)) == config.seed
        and abs(float(teacher_metrics.get("val_fraction", -1.0)) - config.val_fraction) < 1e-9
        and loaded.manifest.validation_split.get("method") is not None
    )
    if not same_split:
        raise ModelError(
            f"teacher {config.teacher!r} was not validated on this run's grouped split "
            f"(seed {config.seed}, fraction {config.val_fraction}): its knowledge of the "
            "validation images would leak into the student's figures"
        )
    if loaded.manifest.labels != train_data.labels:
        raise ModelError(f"teacher labels {loaded.manifest.labels} differ from the data's {train_data.labels}")
    teacher = load_model(loaded, device, verify_sha256=True)
    cnn = is_cnn(loaded.manifest.architecture)
    logger.info("distilling from %s (%s), weight %.2f", loaded.manifest.name, loaded.manifest.architecture, config.distill_weight)
    probs, _ = predict_probs(
        teacher,
        train_data,
        loaded.manifest.preprocessing,
        batch_size=config.eval_batch_size,
        device=device,
        channels_last=cnn,
        calibration=loaded.manifest.calibration,
    )
    return np.ascontiguousarray(probs, dtype=np.float32)


def _write_history(history: list[dict[str, float]], out: Path) -> None:
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")
    keys = list(dict.fromkeys(k for row in history for k in row))
    with (out / "history.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def finalize(
    config: TrainConfig,
    draft: ModelManifest,
    val_data: LabeledImages,
    history: list[dict[str, float]],
    best_epoch: int,
    init_note: str,
    device: torch.device | str = "cpu",
    split: dict[str, object] | None = None,
) -> TrainResult:
    """Reload the best weights; on validation: calibrate, choose thresholds, report; write the model.

    The validation steps are :func:`dicomnode.training.calibrate.choose_on_validation`
    (the same function ``dicomnode calibrate`` runs on an existing model folder).
    """
    import torch
    from safetensors.torch import load_file

    from dicomnode.inference.registry import create_model, is_cnn
    from dicomnode.training import plots

    out = config.out
    weights = out / WEIGHTS_FILENAME
    if not weights.is_file():
        raise ModelError(f"no weights were saved in {out}")
    model = create_model(draft)
    model.load_state_dict(load_file(str(weights)))
    cnn = is_cnn(draft.architecture)
    model.to(device)
    if cnn:
        model.to(memory_format=torch.channels_last)
    pre = draft.preprocessing
    _, logits = predict_probs(model, val_data, pre, batch_size=config.eval_batch_size, device=device, channels_last=cnn)
    targets = val_data.targets
    split = split or {}
    outcome = choose_on_validation(
        targets, logits, draft.labels, config.threshold_policy, method=config.calibration,
        groups=val_data.groups, n_boot=config.bootstrap, seed=config.seed,
        fitted_on=fitted_on_text(split, len(val_data)),
    )
    report: dict[str, Any] = {"n": len(val_data), "best_epoch": best_epoch}
    report.update(outcome.report)
    extra = {"val_fraction": config.val_fraction, "split_seed": float(config.seed)}
    manifest = draft.model_copy(
        update={
            "thresholds": outcome.thresholds,
            "calibration": outcome.calibration,
            "weights_sha256": sha256_file(weights),
            "training_data": (
                f"{val_data.description}; validation = {split.get('method', 'stratified')} "
                f"{config.val_fraction:.0%} of train, seed {config.seed} (numpy default_rng), "
                f"best epoch {best_epoch}; init: {init_note}"
            ),
            "validation_split": {**split, "ci_method": str(report.get("ci_method", ""))} if split else {},
            "validation_metrics": validation_metrics(report, extra),
            "recipe": config.recipe,
            "description": config.description,
            "intended_population": config.population,
        }
    )
    ModelManifest.model_validate(manifest.model_dump())
    write_validation(out, manifest, outcome, targets, report)
    try:
        if history:
            plots.plot_curves(history, out / "curves.png")
    except Exception:  # plots are a convenience; never lose a trained model over them
        logger.exception("could not draw the training curves")
    return TrainResult(out=out, manifest=manifest, report=report, history=history, best_epoch=best_epoch)
