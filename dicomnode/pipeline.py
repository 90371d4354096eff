"""The batch pipeline: claimed jobs -> decode -> preprocess -> infer -> explain -> SC + SR -> files.

Pure processing, no scheduling and no database: :func:`process_jobs` takes claimed
jobs and returns one :class:`JobOutcome` per job; the scheduler records them.
``dicomnode predict`` runs the same stages on files (:func:`analyse_files`).
Images of all claimed studies share model batches; one study's failure never
stops the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomnode import metrics
from dicomnode.config import OutputSettings
from dicomnode.domain import (
    FindingDecision,
    ModelIdentity,
    NotAssessedReason,
    Prediction,
    ResultKind,
)
from dicomnode.errors import DicomNodeError, InferenceError, OutputBuildError
from dicomnode.store.files import FileStore
from dicomnode.store.queue import ClaimedJob, NewFinding, NewResult

if TYPE_CHECKING:
    from dicomnode.inference.runner import ModelRunner

logger = logging.getLogger(__name__)

ExplainMode = Literal["all", "positive"]


@dataclass
class PreparedImage:
    """One decoded source image, ready for the model.

    Attributes:
        key: the source's SOP Instance UID.
        header: the source dataset without its pixel data (patient/study for outputs).
        display: (H, W) float32 in [0, 1], long side <= the SC's max side.
        model_input: (C, S, S) float32, normalised for the model.
    """

    key: str
    header: Dataset
    display: np.ndarray
    model_input: np.ndarray


@dataclass
class ImageAnalysis:
    """An image with its prediction and optional heatmap ((S, S) float32 in [0, 1])."""

    image: PreparedImage
    prediction: Prediction
    heatmap: np.ndarray | None


@dataclass
class BuiltObject:
    """A result dataset built for a study and validated, not yet written.

    Attributes:
        kind: SC or SR.
        dataset: the object.
        encoded: its Part-10 bytes, as checked by the validation gate (written as is).
        source_uid: the SOP Instance UID of the image a heatmap SC shows; None for the SR.
    """

    kind: ResultKind
    dataset: Dataset
    encoded: bytes = b""
    source_uid: str | None = None


@dataclass
class JobOutcome:
    """What happened to one claimed job.

    Exactly one of ``results`` (success, possibly empty = nothing usable) or
    ``error`` (failure to retry) is meaningful.
    """

    claim: ClaimedJob
    results: list[NewResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    findings: list[NewFinding] = field(default_factory=list)


@dataclass(frozen=True)
class PipelineOptions:
    """Knobs of the pipeline that come from settings."""

    outputs: OutputSettings
    model_batch_size: int = 8
    explain: ExplainMode = "all"


def prepare_image(source: Dataset, runner: ModelRunner, max_side: int) -> PreparedImage:
    """Decode a dataset's pixels once into the display image and the model input.

    Raises:
        InferenceError: the pixels cannot be used (see ``preprocess.dicom_to_gray``).
    """
    from dicomnode.inference.preprocess import dicom_to_gray, gray_to_input

    gray = dicom_to_gray(source)
    model_input = gray_to_input(gray, runner.manifest.preprocessing)
    display = _downscale(gray, max_side)
    del gray
    header = source.copy()
    if "PixelData" in header:
        del header.PixelData
    return PreparedImage(str(source.SOPInstanceUID), header, display, model_input)


def _downscale(gray: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

    height, width = gray.shape
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return gray
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.ascontiguousarray(cv2.resize(gray, size, interpolation=cv2.INTER_AREA))


def analyse_images(images: Sequence[PreparedImage], runner: ModelRunner, options: PipelineOptions) -> list[ImageAnalysis]:
    """Predict every image and explain the reported finding, in model batches.

    With ``options.explain == "positive"`` only images whose reported finding is
    positive get a Grad-CAM heatmap.

    Raises:
        InferenceError: the model or Grad-CAM failed for a batch.
    """
    analyses: list[ImageAnalysis] = []
    size = options.model_batch_size
    for start in range(0, len(images), size):
        chunk = images[start : start + size]
        batch = np.stack([image.model_input for image in chunk]).astype(np.float32, copy=False)
        # One forward pass gives the predictions and the Grad-CAM (backward through the
        # head only) of every image to explain.
        result = runner.predict_and_explain(batch, positive_only=options.explain == "positive")
        analyses.extend(
            ImageAnalysis(img, pred, heat) for img, pred, heat in zip(chunk, result.predictions, result.heatmaps)
        )
    return analyses


def unpad_heatmap(heatmap: np.ndarray, image_shape: tuple[int, ...], resize: str) -> np.ndarray:
    """The part of an (S, S) heatmap that covers the image (letterboxed inputs have bars).

    Mirrors ``preprocess.resize_gray(mode="pad")``: the image is centred, long side = S.
    """
    if resize != "pad":
        return heatmap
    size = heatmap.shape[0]
    height, width = image_shape[:2]
    scale = size / max(height, width)
    nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (size - nh) // 2, (size - nw) // 2
    return heatmap[top : top + nh, left : left + nw]


def legend_lines(prediction: Prediction, runner: ModelRunner) -> list[str]:
    """Text burned into the heatmap SC: the finding, its probability and decision, what the
    colour means (or that none is shown), the model, the disclaimer.

    A positive decision gets the Grad-CAM overlay, a negative one none (see
    :func:`build_study_outputs`); the second line says which.
    """
    i = prediction.top_index
    finding = prediction.labels[i].upper()
    positive = prediction.is_positive(i)
    identity = runner.identity
    return [
        # no-break spaces keep each number with its name when the renderer wraps the line
        (
            f"{finding}: {'POSITIVE' if positive else 'negative'}, "
            f"probability\u00a0{prediction.probabilities[i]:.2f} {'>=' if positive else '<'} "
            f"threshold\u00a0{prediction.thresholds[i]:.2f}"
        ),
        (
            f"Colour = regions driving the {finding} score (Grad-CAM), not a lesion outline"
            if positive
            else "Below threshold: no heat shown"
        ),
        f"Model {identity.name} v{identity.version} ({identity.architecture})",
        "AI RESEARCH OUTPUT - NOT FOR DIAGNOSTIC USE",
    ]


def build_study_outputs(
    analyses: Sequence[ImageAnalysis], runner: ModelRunner, outputs: OutputSettings
) -> list[BuiltObject]:
    """One heatmap SC per explained image and one findings SR for the study.

    Raises:
        OutputBuildError: an object could not be built or failed validation.
    """
    from dicomnode.explain.render import render_overlay
    from dicomnode.outputs.sc import build_heatmap_sc
    from dicomnode.outputs.sr import build_findings_sr
    from dicomnode.outputs.uids import derived_uid
    from dicomnode.outputs.validate import validate_result

    if not analyses:
        return []
    identity = runner.identity
    built: list[BuiltObject] = []
    # Series (and, in the builders, instance) UIDs derive from the study, the sources and the
    # weights: re-running a job after a crash rewrites the same objects, and a PACS that
    # receives them twice replaces instead of duplicating.
    study_uid = str(analyses[0].image.header.StudyInstanceUID)
    sc_series_uid = derived_uid("heatmap-series", study_uid, identity.weights_sha256)
    sr_series_uid = derived_uid("findings-series", study_uid, identity.weights_sha256)
    heatmap_datasets: list[Dataset | None] = []
    try:
        for number, analysis in enumerate(analyses, start=1):
            if analysis.heatmap is None:
                heatmap_datasets.append(None)
                continue
            # A negative decision gets no colour: a per-image normalised Grad-CAM always has a
            # full-range map, which would read as "the finding is here".
            prediction = analysis.prediction
            overlay = render_overlay(
                analysis.image.display,
                unpad_heatmap(analysis.heatmap, analysis.image.display.shape, runner.manifest.preprocessing.resize)
                if prediction.is_positive(prediction.top_index)
                else None,
                max_side=outputs.max_heatmap_side,
                legend=legend_lines(analysis.prediction, runner),
            )
            sc = build_heatmap_sc(
                analysis.image.header,
                overlay,
                series_instance_uid=sc_series_uid,
                series_number=outputs.sc_series_number,
                instance_number=number,
                settings=outputs,
                identity=identity,
            )
            heatmap_datasets.append(sc)
            built.append(BuiltObject(ResultKind.HEATMAP_SC, sc, source_uid=analysis.image.key))
        sr = build_findings_sr(
            [a.image.header for a in analyses],
            [a.prediction for a in analyses],
            heatmap_datasets,
            series_instance_uid=sr_series_uid,
            series_number=outputs.sr_series_number,
            settings=outputs,
            identity=identity,
        )
        built.append(BuiltObject(ResultKind.FINDINGS_SR, sr))
        for item in built:
            item.encoded = validate_result(item.dataset)
    except OutputBuildError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise OutputBuildError(f"cannot build result objects: {exc}") from exc
    return built


def build_findings(
    analyses: Sequence[ImageAnalysis],
    built: Sequence[BuiltObject],
    skipped: dict[str, str],
    identity: ModelIdentity,
) -> list[NewFinding]:
    """What a job concluded, for the ``finding`` table: one row per analysed image and label,
    one per image that could not be used.

    The single place where pipeline values become findings (the web page and API read them).

    Args:
        analyses: the study's analysed images.
        built: the objects built for the study (their UIDs go into the rows).
        skipped: SOP Instance UID -> reason, images that could not be decoded or used.
        identity: the model that produced the analyses.
    """
    sr_uid = next((str(b.dataset.SOPInstanceUID) for b in built if b.kind == ResultKind.FINDINGS_SR), None)
    sc_uids = {b.source_uid: str(b.dataset.SOPInstanceUID) for b in built if b.source_uid is not None}
    findings: list[NewFinding] = []
    for analysis in analyses:
        prediction = analysis.prediction
        for index, label in enumerate(prediction.labels):
            findings.append(
                NewFinding(
                    sop_instance_uid=analysis.image.key,
                    label=label,
                    decision=FindingDecision.PRESENT if prediction.is_positive(index) else FindingDecision.ABSENT,
                    probability=float(prediction.probabilities[index]),
                    threshold=float(prediction.thresholds[index]),
                    model_name=identity.name,
                    model_version=identity.version,
                    sr_sop_instance_uid=sr_uid,
                    sc_sop_instance_uid=sc_uids.get(analysis.image.key),
                )
            )
    for sop_uid, reason in skipped.items():
        findings.append(
            NewFinding(
                sop_instance_uid=sop_uid,
                label=None,
                decision=FindingDecision.NOT_ASSESSED,
                not_assessed_reason=NotAssessedReason.UNDECODABLE,
                detail=reason[:500],
                model_name=identity.name,
                model_version=identity.version,
                sr_sop_instance_uid=sr_uid,
            )
        )
    return findings


def write_outputs(built: Sequence[BuiltObject], write: Callable[[BuiltObject], Path], files: FileStore | None = None) -> list[NewResult]:
    """Write built objects with ``write`` (returns the path) and describe them for the outbox."""
    results: list[NewResult] = []
    for item in built:
        path = write(item)
        relative = files.relative(path) if files is not None else str(path)
        results.append(
            NewResult(
                kind=item.kind,
                sop_instance_uid=str(item.dataset.SOPInstanceUID),
                sop_class_uid=str(item.dataset.SOPClassUID),
                path=relative,
            )
        )
    return results


def encode_part10(dataset: Dataset) -> bytes:
    """Serialise a dataset as a Part-10 file (preamble, file meta, dataset)."""
    from io import BytesIO

    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def process_jobs(
    claims: Sequence[ClaimedJob], runner: ModelRunner, files: FileStore, options: PipelineOptions
) -> list[JobOutcome]:
    """Run the whole pipeline for claimed jobs; one outcome per job, in order.

    Unusable images (undecodable pixels, ...) are skipped with a reason; a study
    left with no usable image succeeds with no results. Model or builder errors
    fail only the study concerned.
    """
    outcomes = {claim.job_id: JobOutcome(claim) for claim in claims}
    prepared: dict[int, list[PreparedImage]] = {claim.job_id: [] for claim in claims}
    for claim in claims:
        log = logging.LoggerAdapter(logger, {"job_id": claim.job_id, "study_instance_uid": claim.study_instance_uid})
        for instance in claim.instances:
            try:
                source = dcmread(files.absolute(instance.path))
                prepared[claim.job_id].append(prepare_image(source, runner, options.outputs.max_heatmap_side))
            except InferenceError as exc:
                outcomes[claim.job_id].skipped[instance.sop_instance_uid] = str(exc)
                log.info("job %d: skipped %s: %s", claim.job_id, instance.sop_instance_uid, exc)
            except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
                outcomes[claim.job_id].skipped[instance.sop_instance_uid] = f"cannot decode: {exc}"
                log.info("job %d: cannot decode %s: %s", claim.job_id, instance.sop_instance_uid, exc)

    # Images of all studies share model batches.
    ordered = [(job_id, image) for job_id, images in prepared.items() for image in images]
    by_job: dict[int, list[ImageAnalysis]] = {claim.job_id: [] for claim in claims}
    try:
        started = time.perf_counter()
        analyses = analyse_images([image for _, image in ordered], runner, options)
        metrics.observe_inference(len(analyses), time.perf_counter() - started)
        for (job_id, _), analysis in zip(ordered, analyses):
            by_job[job_id].append(analysis)
    except DicomNodeError:
        # A batch failed: fall back to one study at a time so only the culprit fails.
        for job_id, images in prepared.items():
            try:
                by_job[job_id] = analyse_images(images, runner, options)
            except DicomNodeError as exc:
                outcomes[job_id].error = f"inference failed: {exc}"

    def _write(item: BuiltObject) -> Path:
        path = files.result_path(str(item.dataset.SOPInstanceUID))
        files.write_atomic(path, item.encoded or encode_part10(item.dataset))
        return path

    for claim in claims:
        outcome = outcomes[claim.job_id]
        if outcome.error is not None:
            continue
        log = logging.LoggerAdapter(logger, {"job_id": claim.job_id, "study_instance_uid": claim.study_instance_uid})
        try:
            built = build_study_outputs(by_job[claim.job_id], runner, options.outputs)
            outcome.results = write_outputs(built, _write, files)
            outcome.findings = build_findings(by_job[claim.job_id], built, outcome.skipped, runner.identity)
        except DicomNodeError as exc:
            outcome.error = str(exc)
            log.warning("job %d failed: %s", claim.job_id, exc)
            continue
        log.info(
            "job %d: %d image(s) analysed, %d result object(s) written",
            claim.job_id,
            len(by_job[claim.job_id]),
            len(outcome.results),
        )
    return [outcomes[claim.job_id] for claim in claims]


def analyse_files(paths: Sequence[Path], runner: ModelRunner, options: PipelineOptions, out_dir: Path) -> dict[str, list[Path]]:
    """Offline pipeline for ``dicomnode predict``: group files by study, write SC + SR into ``out_dir``.

    Returns:
        written files per Study Instance UID.

    Raises:
        InferenceError: a file cannot be read or used (the message names it).
        OutputBuildError: a result object cannot be built.
    """
    studies: dict[str, list[PreparedImage]] = {}
    for path in paths:
        try:
            source = dcmread(path)
            image = prepare_image(source, runner, options.outputs.max_heatmap_side)
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
            raise InferenceError(f"{path}: cannot read DICOM: {exc}") from exc
        except InferenceError as exc:
            raise InferenceError(f"{path}: {exc}") from exc
        studies.setdefault(str(image.header.StudyInstanceUID), []).append(image)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}

    for study_uid, images in studies.items():
        built = build_study_outputs(analyse_images(images, runner, options), runner, options.outputs)
        paths_out: list[Path] = []
        for item in built:
            name = f"{item.kind.value}-{item.dataset.SOPInstanceUID}.dcm"
            target = out_dir / name
            target.write_bytes(item.encoded or encode_part10(item.dataset))
            paths_out.append(target)
        written[study_uid] = paths_out
    return written
