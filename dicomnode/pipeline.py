"""The batch pipeline: claimed jobs -> decode -> preprocess -> infer -> explain -> SC + SR -> files.

Pure processing, no scheduling and no database: :func:`process_jobs` takes claimed
jobs and returns one :class:`JobOutcome` per job; the scheduler records them.
``dicomnode predict`` runs the same stages on files (:func:`analyse_files`).
Images of all claimed studies share model batches; one study's failure never
stops the others.

What the pipeline asserts: an image gets findings only when the input gate's verdict
says it is assessable (and, with ``model.out_of_population = "skip"``, when its header
is not outside the model's intended population). Every other image of the study is
listed in the SR as not assessed, with a coded reason. A study with no assessable image
gets no SR at all: the job is SKIPPED and ``dicomnode status`` shows why (an SR that
asserts nothing would only add a document a reader must open to learn that).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomnode import __version__, metrics
from dicomnode.config import OutputSettings
from dicomnode.domain import (
    ClaimedJob,
    FindingDecision,
    GateVerdict,
    ModelIdentity,
    NewFinding,
    NewResult,
    NotAssessedReason,
    PopulationCheck,
    PopulationStatus,
    Prediction,
    RefusedInstance,
    ResultKind,
)
from dicomnode.errors import DicomNodeError, InferenceError, OutputBuildError
from dicomnode.store.files import FileStore
from dicomnode.store.queue import skip_reason_text

if TYPE_CHECKING:
    from dicomnode.inference.manifest import Preprocessing
    from dicomnode.inference.runner import ModelRunner
    from dicomnode.outputs.sr import PriorReport

logger = logging.getLogger(__name__)

T = TypeVar("T")

ExplainMode = Literal["all", "positive"]
OutOfPopulation = Literal["flag", "skip"]


@dataclass
class PreparedImage:
    """One decoded source image, ready for the model.

    Attributes:
        key: the source's SOP Instance UID.
        header: the source dataset without its pixel data (patient/study for outputs).
        display: (H, W) uint8 gray levels as the SC shows them (0 = black), long side <=
            the SC's max side. 8-bit because that is all the SC keeps, and a quarter of
            the bytes a float image takes between the pipeline's processes.
        model_input: (C, S, S) float32, normalised for the model.
    """

    key: str
    header: Dataset
    display: np.ndarray
    model_input: np.ndarray


@dataclass
class ImageAnalysis:
    """An image with what the model says about it.

    Attributes:
        image: the prepared image.
        prediction: probabilities of every label (computed even when not assessable,
            never reported then).
        heatmaps: label index -> (S, S) float32 Grad-CAM in [0, 1]; empty when not assessable.
        verdict: the input gate's verdict, with ``model.out_of_population = "skip"`` applied.
        population: the image compared with the intended population; None when the
            manifest declares none.
    """

    image: PreparedImage
    prediction: Prediction
    heatmaps: dict[int, np.ndarray]
    verdict: GateVerdict
    population: PopulationCheck | None = None

    @property
    def assessable(self) -> bool:
        """True when findings may be asserted on this image."""
        return self.verdict.assessable


@dataclass
class NotAssessedImage:
    """An image of the study that has no finding, and why.

    Attributes:
        header: its header, or a ``sr.reference_dataset`` when the file cannot be read.
        reason: why not assessed.
        detail: one line, no PHI.
    """

    header: Dataset
    reason: NotAssessedReason
    detail: str


StudyEntry = ImageAnalysis | NotAssessedImage


@dataclass
class BuiltObject:
    """A result dataset built for a study and validated, not yet written.

    Attributes:
        kind: SC or SR.
        dataset: the object.
        encoded: its Part-10 bytes, as checked by the validation gate
            (``outputs.validate.validate_result``); written as is.
        source_uid: the SOP Instance UID of the image a heatmap SC shows; None for the SR.
        label: the finding a heatmap SC explains; None for the SR.
    """

    kind: ResultKind
    dataset: Dataset
    encoded: bytes
    source_uid: str | None = None
    label: str | None = None


@dataclass
class JobOutcome:
    """What happened to one claimed job.

    Exactly one of ``results`` (success; empty = nothing assessable, ``skip_reason`` says
    why) or ``error`` (failure to retry) is meaningful. ``skipped``: SOP Instance UID ->
    reason recorded on the instance (``queue.skip_reason_text`` form).
    """

    claim: ClaimedJob
    results: list[NewResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    skip_reason: str | None = None
    findings: list[NewFinding] = field(default_factory=list)


@dataclass(frozen=True)
class PipelineOptions:
    """Knobs of the pipeline that come from settings."""

    outputs: OutputSettings
    model_batch_size: int = 8
    explain: ExplainMode = "all"
    out_of_population: OutOfPopulation = "flag"


def prepare_image(source: Dataset, preprocessing: Preprocessing, max_side: int) -> PreparedImage:
    """Decode a dataset's pixels once into the display image and the model input.

    Args:
        source: the received dataset, pixels included.
        preprocessing: the model's input settings (manifest).
        max_side: long side in pixels of the display image (the SC's).

    Raises:
        InferenceError: the pixels cannot be used (see ``preprocess.dicom_to_gray``).
    """
    from dicomnode.inference.preprocess import dicom_to_gray, gray_to_input

    gray = dicom_to_gray(source)
    model_input = gray_to_input(gray, preprocessing)
    display = _to_gray_levels(_downscale(gray, max_side))
    del gray
    header = source.copy()
    if "PixelData" in header:
        del header.PixelData
    return PreparedImage(str(source.SOPInstanceUID), header, display, model_input)


def _to_gray_levels(gray: np.ndarray) -> np.ndarray:
    """(H, W) float32 in [0, 1] -> (H, W) uint8 0-255, rounded and saturated."""
    import cv2

    return np.asarray(cv2.convertScaleAbs(gray, alpha=255.0), dtype=np.uint8)


def _downscale(gray: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

    height, width = gray.shape
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return gray
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.ascontiguousarray(cv2.resize(gray, size, interpolation=cv2.INTER_AREA))


def analyse_images(images: Sequence[PreparedImage], runner: ModelRunner, options: PipelineOptions) -> list[ImageAnalysis]:
    """Predict, gate and explain every image, in model batches.

    Heatmaps (assessable images only): one per positive finding; with
    ``options.explain == "all"`` also the reported (most probable) finding of an image
    without a positive one, so every assessed image has one.

    Raises:
        InferenceError: the model or Grad-CAM failed for a batch.
    """
    from dicomnode.inference.population import check_population

    population = runner.manifest.intended_population
    constrained = population.min_age_years is not None or population.max_age_years is not None or bool(population.view_positions)
    analyses: list[ImageAnalysis] = []
    size = options.model_batch_size
    for start in range(0, len(images), size):
        chunk = images[start : start + size]
        batch = np.stack([image.model_input for image in chunk]).astype(np.float32, copy=False)
        # One forward pass gives the predictions, the gate's verdicts and the Grad-CAM
        # (backward through the head only) of the reported finding.
        result = runner.predict_and_explain(batch, positive_only=options.explain == "positive")
        for image, prediction, heat, verdict in zip(chunk, result.predictions, result.heatmaps, result.verdicts):
            check = check_population(image.header, population) if constrained else None
            if verdict.assessable and check is not None and check.status == PopulationStatus.OUTSIDE and options.out_of_population == "skip":
                verdict = GateVerdict(assessable=False, reason=NotAssessedReason.OUT_OF_POPULATION, detail=check.detail)
            heatmaps = {prediction.top_index: heat} if heat is not None and verdict.assessable else {}
            analyses.append(ImageAnalysis(image, prediction, heatmaps, verdict, check))
    _explain_other_findings(analyses, runner, options)
    return analyses


def _wanted_heatmaps(analysis: ImageAnalysis, explain: ExplainMode) -> set[int]:
    prediction = analysis.prediction
    wanted = {k for k in range(len(prediction.labels)) if prediction.is_positive(k)}
    if explain == "all" and not wanted:
        wanted.add(prediction.top_index)
    return wanted


def _explain_other_findings(analyses: Sequence[ImageAnalysis], runner: ModelRunner, options: PipelineOptions) -> None:
    """Grad-CAM of the positive findings the combined pass did not explain (multi-label)."""
    pairs = [
        (analysis, k)
        for analysis in analyses
        if analysis.assessable
        for k in sorted(_wanted_heatmaps(analysis, options.explain) - set(analysis.heatmaps))
    ]
    size = options.model_batch_size
    for start in range(0, len(pairs), size):
        chunk = pairs[start : start + size]
        batch = np.stack([a.image.model_input for a, _ in chunk]).astype(np.float32, copy=False)
        heatmaps = runner.explain(batch, [k for _, k in chunk])
        for (analysis, k), heat in zip(chunk, heatmaps):
            analysis.heatmaps[k] = heat


def legend_lines(prediction: Prediction, identity: ModelIdentity, label_index: int | None = None) -> list[str]:
    """Text burned into the heatmap SC: the finding, its probability and decision, what the
    colour means (or that none is shown), the model, the disclaimer.

    A positive decision gets the Grad-CAM overlay, a negative one none (see
    :func:`build_study_outputs`); the second line says which.

    Args:
        prediction: the image's prediction.
        identity: the model that made it.
        label_index: the explained label; None = the reported (most probable) one.
    """
    i = prediction.top_index if label_index is None else label_index
    finding = prediction.labels[i].upper()
    positive = prediction.is_positive(i)
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


def not_assessed_entry(analysis: ImageAnalysis) -> NotAssessedImage:
    """The not-assessed form of an image the gate refused."""
    verdict = analysis.verdict
    return NotAssessedImage(
        analysis.image.header,
        verdict.reason or NotAssessedReason.NOT_CHEST_RADIOGRAPH,
        verdict.detail or "refused by the input gate",
    )


def build_study_outputs(
    entries: Sequence[StudyEntry],
    identity: ModelIdentity,
    preprocessing: Preprocessing,
    options: PipelineOptions,
    *,
    predecessor: PriorReport | None = None,
    sr_instance_number: int = 1,
) -> list[BuiltObject]:
    """Heatmap SCs of the assessed images and one findings SR covering every image of the study.

    Args:
        entries: every image of the study in report order: analysed images (assessable
            or not) and images not assessed before the model (undecodable, header refused).
        identity: the model that analysed them (SC legend, SR algorithm, series UIDs).
        preprocessing: the model's input settings (letterboxed heatmaps are cropped to the image).
        options: pipeline options (labelling, explain mode).
        predecessor: the study's earlier findings SR that this one supersedes.
        sr_instance_number: Instance Number of the SR in its series.

    Returns:
        SCs then the SR; empty when no image is assessable (no SR without a finding).

    Raises:
        OutputBuildError: an object could not be built or failed validation.
    """
    from dicomnode.explain.render import render_overlay
    from dicomnode.inference.preprocess import unpad_heatmap
    from dicomnode.outputs.sc import build_heatmap_sc
    from dicomnode.outputs.sr import ImageFindings, build_findings_sr
    from dicomnode.outputs.uids import derived_uid
    from dicomnode.outputs.validate import validate_result

    if not any(isinstance(e, ImageAnalysis) and e.assessable for e in entries):
        return []
    outputs = options.outputs
    built: list[BuiltObject] = []
    # Series UIDs derive from the study and the weights; instance UIDs from what each
    # object shows: re-running a job after a crash rewrites the same objects (a PACS that
    # receives them twice replaces instead of duplicating), different content never
    # shares a UID.
    study_uid = str(entries[0].header.StudyInstanceUID if isinstance(entries[0], NotAssessedImage) else entries[0].image.header.StudyInstanceUID)
    # Labelling settings and the software version shape every object too.
    tag = f"dicomnode={__version__};outputs={hashlib.sha256(outputs.model_dump_json().encode()).hexdigest()[:16]}"
    sc_series_uid = derived_uid("heatmap-series", study_uid, identity.weights_sha256)
    sr_series_uid = derived_uid("findings-series", study_uid, identity.weights_sha256)
    findings: list[ImageFindings] = []
    number = 0
    try:
        for entry in entries:
            if isinstance(entry, ImageAnalysis) and not entry.assessable:
                entry = not_assessed_entry(entry)
            if isinstance(entry, NotAssessedImage):
                findings.append(ImageFindings(entry.header, not_assessed=entry.reason, detail=entry.detail))
                continue
            header = entry.image.header
            scs: dict[int, Dataset] = {}
            for k, heat in sorted(entry.heatmaps.items()):
                number += 1
                legend = legend_lines(entry.prediction, identity, k)
                # A negative decision gets no colour: a per-image normalised Grad-CAM always
                # has a full-range map, which would read as "the finding is here".
                overlay = render_overlay(
                    entry.image.display,
                    unpad_heatmap(heat, entry.image.display.shape, preprocessing.resize)
                    if entry.prediction.is_positive(k)
                    else None,
                    max_side=outputs.max_heatmap_side,
                    legend=legend,
                )
                scs[k] = build_heatmap_sc(
                    header,
                    overlay,
                    series_instance_uid=sc_series_uid,
                    series_number=outputs.sc_series_number,
                    instance_number=number,
                    settings=outputs,
                    identity=identity,
                    sop_instance_uid=derived_uid(
                        "heatmap-sc", sc_series_uid, str(header.SOPInstanceUID), entry.prediction.labels[k],
                        str(number), tag, *legend,
                    ),
                )  # fmt: skip
                built.append(
                    BuiltObject(
                        ResultKind.HEATMAP_SC, scs[k], validate_result(scs[k]),
                        source_uid=str(header.SOPInstanceUID), label=entry.prediction.labels[k],
                    )
                )  # fmt: skip
            findings.append(ImageFindings(header, entry.prediction, scs, population=entry.population))
        sr = build_findings_sr(
            findings,
            series_instance_uid=sr_series_uid,
            series_number=outputs.sr_series_number,
            settings=outputs,
            identity=identity,
            predecessor=predecessor,
            content_tag=f"explain={options.explain};{tag}",
            instance_number=sr_instance_number,
        )
        built.append(BuiltObject(ResultKind.FINDINGS_SR, sr, validate_result(sr, encoded_content=True)))
    except OutputBuildError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise OutputBuildError(f"cannot build result objects: {exc}") from exc
    return built


def no_assessable_reason(entries: Sequence[StudyEntry]) -> str:
    """Why a study has no assessable image, e.g. ``"no assessable image: 2 x undecodable (...)"``."""
    reasons: dict[str, int] = {}
    for entry in entries:
        if isinstance(entry, ImageAnalysis):
            if entry.assessable:
                continue
            entry = not_assessed_entry(entry)
        key = f"{entry.reason.value} ({entry.detail})" if entry.detail else entry.reason.value
        reasons[key] = reasons.get(key, 0) + 1
    text = "; ".join(f"{n} x {key}" for key, n in reasons.items()) or "no image"
    return f"no assessable image in the study: {text}"[:2000]


def build_findings(entries: Sequence[StudyEntry], built: Sequence[BuiltObject], identity: ModelIdentity) -> list[NewFinding]:
    """What a job concluded, for the ``finding`` table: one row per assessed image and label,
    one per image not assessed (gated, undecodable, refused from its header, out of population).

    The single place where pipeline values become findings (the web page and API read them).

    Args:
        entries: the study's images as the SR lists them.
        built: the objects built for the study (their UIDs go into the rows).
        identity: the model that produced the analyses.
    """
    sr_uid = next((str(b.dataset.SOPInstanceUID) for b in built if b.kind == ResultKind.FINDINGS_SR), None)
    sc_uids = {(b.source_uid, b.label): str(b.dataset.SOPInstanceUID) for b in built if b.source_uid is not None}
    findings: list[NewFinding] = []
    for entry in entries:
        if isinstance(entry, ImageAnalysis) and entry.assessable:
            prediction = entry.prediction
            for index, label in enumerate(prediction.labels):
                findings.append(
                    NewFinding(
                        sop_instance_uid=entry.image.key,
                        label=label,
                        decision=FindingDecision.PRESENT if prediction.is_positive(index) else FindingDecision.ABSENT,
                        probability=float(prediction.probabilities[index]),
                        threshold=float(prediction.thresholds[index]),
                        model_name=identity.name,
                        model_version=identity.version,
                        sr_sop_instance_uid=sr_uid,
                        sc_sop_instance_uid=sc_uids.get((entry.image.key, label)),
                    )
                )
            continue
        missing = not_assessed_entry(entry) if isinstance(entry, ImageAnalysis) else entry
        findings.append(
            NewFinding(
                sop_instance_uid=str(missing.header.get("SOPInstanceUID", "")),
                label=None,
                decision=FindingDecision.NOT_ASSESSED,
                not_assessed_reason=missing.reason,
                detail=missing.detail[:500],
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


def _read_header(path: Path) -> Dataset:
    return dcmread(path, stop_before_pixels=True)


def _refused_entry(refused: RefusedInstance, study_uid: str, files: FileStore) -> NotAssessedImage:
    """A study's SKIPPED instance as a not-assessed entry (header from its file when readable)."""
    from dicomnode.outputs.sr import reference_dataset

    try:
        header = _read_header(files.absolute(refused.path))
        if str(header.get("SOPInstanceUID", "")) != refused.sop_instance_uid:
            raise ValueError("file does not hold this instance")
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        header = reference_dataset(
            study_instance_uid=study_uid, series_instance_uid=refused.series_instance_uid,
            sop_instance_uid=refused.sop_instance_uid, sop_class_uid=refused.sop_class_uid,
        )  # fmt: skip
    return NotAssessedImage(header, refused.reason, refused.detail)


def _prior_report(claim: ClaimedJob, files: FileStore, identity: ModelIdentity) -> tuple[PriorReport | None, int]:
    """The findings SR this job's report supersedes, and the new report's Instance Number."""
    prior = claim.predecessor
    if prior is None:
        return None, 1

    from dicomnode.outputs.sr import PriorReport  # highdicom: only the building processes need it
    from dicomnode.outputs.uids import derived_uid
    try:
        header = _read_header(files.absolute(prior.path))
        series, number = str(header.SeriesInstanceUID), int(header.get("InstanceNumber") or 1)
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
        # The file is gone (purged): our SR series UID is a function of study and weights.
        logger.warning("job %d: cannot read earlier SR %s (%s); assuming our series", claim.job_id, prior.sop_instance_uid, exc)
        series, number = derived_uid("findings-series", claim.study_instance_uid, identity.weights_sha256), 1
    return PriorReport(prior.sop_instance_uid, series, prior.sop_class_uid), number + 1


@dataclass
class Undecodable:
    """An image whose pixels cannot be used.

    Attributes:
        detail: why, one line without PHI.
        header: its header when readable with the four UIDs (listed in the SR as not
            assessed), else None.
    """

    detail: str
    header: Dataset | None


#: What reading and decoding an image may raise when the file or its pixels are unusable.
_DECODE_ERRORS = (InferenceError, OSError, ValueError, AttributeError, KeyError, TypeError)


def _decode_failure(exc: Exception) -> str:
    """The not-assessed detail for an image that could not be read or decoded (no PHI)."""
    return str(exc) if isinstance(exc, InferenceError) else f"cannot decode: {exc}"


def load_image(path: Path, preprocessing: Preprocessing, max_side: int) -> PreparedImage | Undecodable:
    """Read and decode one received file for the model (a pipeline stage: runs in a worker).

    Args:
        path: the Part-10 file.
        preprocessing: the model's input settings.
        max_side: long side in pixels of the display image (the SC's).
    """
    try:
        return prepare_image(dcmread(path), preprocessing, max_side)
    except _DECODE_ERRORS as exc:
        detail = _decode_failure(exc)
    try:
        header = _read_header(path)
        if all(header.get(k) for k in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")):
            return Undecodable(detail, header)
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        pass
    return Undecodable(detail, None)


@dataclass
class StudyResults:
    """What :func:`build_and_write` made of one study.

    Attributes:
        results: the written SCs and SR (empty when no image is assessable).
        findings: one row per image and label for the database.
    """

    results: list[NewResult]
    findings: list[NewFinding]


def build_and_write(
    entries: Sequence[StudyEntry],
    identity: ModelIdentity,
    preprocessing: Preprocessing,
    options: PipelineOptions,
    files: FileStore,
    predecessor: PriorReport | None,
    sr_instance_number: int,
) -> StudyResults:
    """Build, validate and write a study's result objects (a pipeline stage: runs in a worker).

    Raises:
        DicomNodeError: an object could not be built, validated or written.
    """
    built = build_study_outputs(
        entries, identity, preprocessing, options, predecessor=predecessor, sr_instance_number=sr_instance_number
    )

    def _write(item: BuiltObject) -> Path:
        path = files.result_path(str(item.dataset.SOPInstanceUID))
        files.write_atomic(path, item.encoded)
        return path

    return StudyResults(write_outputs(built, _write, files), build_findings(entries, built, identity))


def _without_model_input(entry: StudyEntry) -> StudyEntry:
    """The entry as the build stage needs it: the model input (C, S, S) is not sent along."""
    if isinstance(entry, ImageAnalysis):
        image = replace(entry.image, model_input=np.empty((0,), np.float32))
        return replace(entry, image=image)
    return entry


def _submit(pool: Executor, fn: Callable[..., T], *args: Any) -> Future[T]:
    """``pool.submit``; a pool that is broken already gives a failed Future, not an exception."""
    try:
        return pool.submit(fn, *args)
    except BrokenExecutor as exc:
        failed: Future[T] = Future()
        failed.set_exception(exc)
        return failed


def _model_chunks(claims: Sequence[ClaimedJob], images: dict[int, list[PreparedImage]], size: int) -> list[list[ClaimedJob]]:
    """Consecutive claims grouped so that each group fills about one model batch."""
    chunks: list[list[ClaimedJob]] = []
    current: list[ClaimedJob] = []
    count = 0
    for claim in claims:
        current.append(claim)
        count += len(images[claim.job_id])
        if count >= size:
            chunks.append(current)
            current, count = [], 0
    if current:
        chunks.append(current)
    return chunks


def process_jobs(
    claims: Sequence[ClaimedJob],
    runner: ModelRunner,
    files: FileStore,
    options: PipelineOptions,
    pool: Executor | None = None,
) -> list[JobOutcome]:
    """Run the whole pipeline for claimed jobs; one outcome per job, in order.

    Each job covers its whole study (see :class:`~dicomnode.domain.ClaimedJob`).
    Undecodable images are skipped with a reason (recorded on the instance) and listed
    in the SR as not assessed, like the study's instances refused at receive time and the
    images the gate refuses. A study with no assessable image succeeds with no results
    and a ``skip_reason``. Model or builder errors fail only the study concerned.

    Stages: every image is decoded in ``pool`` (all at once: the pool's processes work
    ahead of the model); the model runs here on groups of studies that fill a model
    batch; each study's objects are built, validated and written in ``pool`` while the
    model runs the next group. ``pool=None`` runs every stage inline, in order
    (see :mod:`dicomnode.workpool`).
    """
    from dicomnode.workpool import InlineExecutor

    pool = pool or InlineExecutor()
    identity, preprocessing = runner.identity, runner.manifest.preprocessing
    max_side = options.outputs.max_heatmap_side
    loads = {
        claim.job_id: [
            (instance, _submit(pool, load_image, files.absolute(instance.path), preprocessing, max_side))
            for instance in claim.instances
        ]
        for claim in claims
    }
    outcomes = {claim.job_id: JobOutcome(claim) for claim in claims}
    slots: dict[int, list[PreparedImage | NotAssessedImage]] = {claim.job_id: [] for claim in claims}
    images: dict[int, list[PreparedImage]] = {}
    builds: dict[int, tuple[Future[StudyResults], PriorReport | None, list[StudyEntry]]] = {}

    def _collect(claim: ClaimedJob) -> None:
        log = logging.LoggerAdapter(logger, {"job_id": claim.job_id, "study_instance_uid": claim.study_instance_uid})
        for instance, future in loads[claim.job_id]:
            try:
                loaded = future.result()
            except BrokenExecutor as exc:  # a worker process died: the study is retried
                outcomes[claim.job_id].error = f"image decoding failed: {type(exc).__name__}: {exc}"
                images[claim.job_id] = []
                return
            except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot travel back: this image only
                loaded = Undecodable(f"cannot decode: {type(exc).__name__}: {exc}", None)
            if isinstance(loaded, PreparedImage):
                slots[claim.job_id].append(loaded)
                continue
            outcomes[claim.job_id].skipped[instance.sop_instance_uid] = skip_reason_text(NotAssessedReason.UNDECODABLE, loaded.detail)
            log.info("job %d: not assessed %s: %s", claim.job_id, instance.sop_instance_uid, loaded.detail)
            if loaded.header is not None:  # listed in the SR when its header can be read
                slots[claim.job_id].append(NotAssessedImage(loaded.header, NotAssessedReason.UNDECODABLE, loaded.detail))
        slots[claim.job_id].extend(_refused_entry(r, claim.study_instance_uid, files) for r in claim.refused)
        images[claim.job_id] = [s for s in slots[claim.job_id] if isinstance(s, PreparedImage)]

    def _analyse(chunk: Sequence[ClaimedJob]) -> dict[int, dict[str, ImageAnalysis]]:
        analysed: dict[int, dict[str, ImageAnalysis]] = {claim.job_id: {} for claim in chunk}
        ordered = [(claim.job_id, image) for claim in chunk for image in images[claim.job_id]]
        try:
            started = time.perf_counter()
            analyses = analyse_images([image for _, image in ordered], runner, options)
            metrics.observe_inference(len(analyses), time.perf_counter() - started)
            for (job_id, image), analysis in zip(ordered, analyses):
                analysed[job_id][image.key] = analysis
        except DicomNodeError:
            # A batch failed: fall back to one study at a time so only the culprit fails.
            for claim in chunk:
                try:
                    analysed[claim.job_id] = {a.image.key: a for a in analyse_images(images[claim.job_id], runner, options)}
                except DicomNodeError as exc:
                    outcomes[claim.job_id].error = f"inference failed: {exc}"
        return analysed

    for claim in claims:
        _collect(claim)
    for chunk in _model_chunks(claims, images, options.model_batch_size):
        analysed = _analyse(chunk)
        for claim in chunk:
            if outcomes[claim.job_id].error is not None:
                continue
            entries: list[StudyEntry] = [
                analysed[claim.job_id][s.key] if isinstance(s, PreparedImage) else s for s in slots[claim.job_id]
            ]
            predecessor, number = _prior_report(claim, files, identity)
            future = _submit(
                pool, build_and_write, [_without_model_input(e) for e in entries], identity, preprocessing, options,
                files, predecessor, number,
            )  # fmt: skip
            builds[claim.job_id] = (future, predecessor, entries)

    for claim in claims:
        outcome = outcomes[claim.job_id]
        if claim.job_id not in builds:
            continue
        log = logging.LoggerAdapter(logger, {"job_id": claim.job_id, "study_instance_uid": claim.study_instance_uid})
        future, predecessor, entries = builds[claim.job_id]
        try:
            made = future.result()
        except DicomNodeError as exc:
            outcome.error = str(exc)
            log.warning("job %d failed: %s", claim.job_id, exc)
            continue
        except Exception as exc:  # noqa: BLE001 - a dead worker process or a value that cannot travel: this study only
            outcome.error = f"result building failed: {type(exc).__name__}: {exc}"
            log.warning("job %d failed: %s", claim.job_id, outcome.error)
            continue
        outcome.results, outcome.findings = made.results, made.findings
        if not made.results:
            outcome.skip_reason = no_assessable_reason(entries)
            log.info("job %d: %s", claim.job_id, outcome.skip_reason)
            continue
        log.info(
            "job %d: %d image(s), %d assessed, %d result object(s) written%s",
            claim.job_id,
            len(entries),
            sum(isinstance(e, ImageAnalysis) and e.assessable for e in entries),
            len(outcome.results),
            f", superseding SR {predecessor.sop_instance_uid}" if predecessor else "",
        )
    return [outcomes[claim.job_id] for claim in claims]


@dataclass
class FileLine:
    """What ``dicomnode predict`` says about one input file.

    Attributes:
        name: the file's name (no folder).
        text: the decision and probability per finding, or ``"not assessed: <reason>"``,
            or why the file could not be read.
        processed: False when the file could not be read as DICOM at all.
    """

    name: str
    text: str
    processed: bool = True


@dataclass
class PredictReport:
    """Result of :func:`analyse_files`: one line per file, and the files written per study."""

    lines: list[FileLine] = field(default_factory=list)
    written: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def processed(self) -> int:
        """How many input files were read and judged (assessed or not)."""
        return sum(line.processed for line in self.lines)


def describe(entry: StudyEntry) -> str:
    """One line (no PHI) for an image: decision and probability per finding, or why not assessed."""
    if isinstance(entry, ImageAnalysis) and entry.assessable:
        p = entry.prediction
        text = "; ".join(
            f"{label} {'POSITIVE' if p.is_positive(k) else 'negative'} p={p.probabilities[k]:.2f} "
            f"(threshold {p.thresholds[k]:.2f})"
            for k, label in enumerate(p.labels)
        )
        if entry.population is not None and entry.population.status == PopulationStatus.OUTSIDE:
            text += f" [outside intended population: {entry.population.detail}]"
        return text
    if isinstance(entry, ImageAnalysis):
        entry = not_assessed_entry(entry)
    reason = entry.reason.value.replace("_", " ")
    return f"not assessed: {reason}" + (f" ({entry.detail})" if entry.detail else "")


def analyse_files(paths: Sequence[Path], runner: ModelRunner, options: PipelineOptions, out_dir: Path) -> PredictReport:
    """Offline pipeline for ``dicomnode predict``: serve's acceptance rules, SC + SR per study into ``out_dir``.

    Each file goes through the receiver's header rules (``receiving.validation``:
    ``check_structure`` then ``classify``), pixel decoding and the model's input gate,
    exactly as in ``serve``. A file that is not DICOM gets a line and is left out;
    the others are still processed.

    Raises:
        InferenceError: the model failed.
        OutputBuildError: a result object cannot be built.
    """
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID, ExplicitVRLittleEndian

    from dicomnode.errors import RejectedInstance
    from dicomnode.receiving.validation import Skip, check_structure, classify

    report = PredictReport()
    studies: dict[str, list[PreparedImage | NotAssessedImage]] = {}
    slot_line: dict[int, FileLine] = {}
    first_file: dict[str, str] = {}  # SOP Instance UID -> the file that brought it first
    for path in paths:
        line = FileLine(path.name, "")
        report.lines.append(line)
        try:
            source = dcmread(path)
        except (OSError, InvalidDicomError, ValueError, AttributeError, KeyError, TypeError) as exc:
            line.text, line.processed = f"not DICOM or unreadable: {type(exc).__name__}", False
            continue
        study_uid = str(source.get("StudyInstanceUID", "") or "")
        sop_uid = str(source.get("SOPInstanceUID", "") or "")
        if sop_uid and sop_uid in first_file:
            # serve keeps the first copy of a SOP Instance UID; so does predict.
            line.text = f"not used: same SOP Instance UID as {first_file[sop_uid]} (the first copy is used)"
            continue
        if sop_uid:
            first_file[sop_uid] = path.name
        item: PreparedImage | NotAssessedImage
        try:
            meta = getattr(source, "file_meta", None)
            check_structure(source, UID(meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)) if meta else ExplicitVRLittleEndian)
            verdict = classify(source)
            if isinstance(verdict, Skip):
                raise RejectedInstance(0, verdict.reason)
            if not study_uid or not source.get("SOPInstanceUID") or not source.get("SeriesInstanceUID"):
                raise RejectedInstance(0, "Study, Series or SOP Instance UID missing")
        except RejectedInstance as exc:
            item = NotAssessedImage(source, NotAssessedReason.HEADER_NOT_ACCEPTED, exc.reason)
        else:
            try:
                item = prepare_image(source, runner.manifest.preprocessing, options.outputs.max_heatmap_side)
            except _DECODE_ERRORS as exc:
                item = NotAssessedImage(source, NotAssessedReason.UNDECODABLE, _decode_failure(exc))
        slot_line[id(item)] = line
        if isinstance(item, NotAssessedImage):
            line.text = describe(item)
            if "PixelData" in item.header:
                del item.header.PixelData
            if not study_uid or not item.header.get("SOPInstanceUID") or not item.header.get("SeriesInstanceUID"):
                continue
        studies.setdefault(study_uid, []).append(item)
    out_dir.mkdir(parents=True, exist_ok=True)
    for study_uid, items in studies.items():
        images = [s for s in items if isinstance(s, PreparedImage)]
        analyses = {a.image.key: a for a in (analyse_images(images, runner, options) if images else [])}
        entries: list[StudyEntry] = [analyses[s.key] if isinstance(s, PreparedImage) else s for s in items]
        for slot, entry in zip(items, entries):
            slot_line[id(slot)].text = describe(entry)
        paths_out: list[Path] = []
        for built in build_study_outputs(entries, runner.identity, runner.manifest.preprocessing, options):
            target = out_dir / f"{built.kind.value}-{built.dataset.SOPInstanceUID}.dcm"
            target.write_bytes(built.encoded)
            paths_out.append(target)
        report.written[study_uid] = paths_out
    return report
