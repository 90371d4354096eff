"""The batch pipeline on real files with a tiny random-weight model: SC per image, SR per study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomnode.config import OutputSettings
from dicomnode.domain import (
    ClaimedInstance,
    ClaimedJob,
    FindingDecision,
    NotAssessedReason,
    ResultKind,
)
from dicomnode.inference.registry import resolve_manifest
from dicomnode.inference.runner import ModelRunner
from dicomnode.pipeline import PipelineOptions, analyse_files, process_jobs
from dicomnode.store.files import FileStore
from dicomnode.store.queue import utcnow
from tests.helpers import make_cxr_dataset, make_tiny_model


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> ModelRunner:
    manifest = make_tiny_model(tmp_path_factory.mktemp("model"))
    return ModelRunner.from_loaded(resolve_manifest(str(manifest)), device="cpu")


def _store(files: FileStore, ds: Dataset) -> ClaimedInstance:
    path = files.incoming_path(str(ds.SOPInstanceUID))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ClaimedInstance(str(ds.SOPInstanceUID), files.relative(path))


def _claim(job_id: int, study_uid: str, instances: list[ClaimedInstance]) -> ClaimedJob:
    return ClaimedJob(job_id, study_uid, utcnow(), tuple(instances))


def test_process_jobs_writes_sc_per_image_and_sr_per_study(tmp_path: Path, runner: ModelRunner) -> None:
    files = FileStore(tmp_path / "data")
    study_a, study_b = generate_uid(), generate_uid()
    claims = [
        _claim(1, study_a, [_store(files, make_cxr_dataset(study_uid=study_a, seed=s)) for s in (1, 2)]),
        _claim(2, study_b, [_store(files, make_cxr_dataset(photometric="MONOCHROME1", study_uid=study_b, seed=3))]),
    ]
    outcomes = process_jobs(claims, runner, files, PipelineOptions(OutputSettings(), model_batch_size=2))
    assert [o.error for o in outcomes] == [None, None]
    kinds = [[r.kind for r in o.results] for o in outcomes]
    assert kinds == [[ResultKind.HEATMAP_SC] * 2 + [ResultKind.FINDINGS_SR], [ResultKind.HEATMAP_SC, ResultKind.FINDINGS_SR]]
    for outcome, study in zip(outcomes, (study_a, study_b)):
        for result in outcome.results:
            ds = dcmread(files.absolute(result.path))
            assert ds.StudyInstanceUID == study
            assert ds.SOPInstanceUID == result.sop_instance_uid


def test_unusable_image_is_skipped_and_the_rest_processed(tmp_path: Path, runner: ModelRunner) -> None:
    files = FileStore(tmp_path / "data")
    study = generate_uid()
    good = _store(files, make_cxr_dataset(study_uid=study, seed=1))
    rgb = make_cxr_dataset(study_uid=study, seed=2)
    rgb.SamplesPerPixel = 3
    rgb.PhotometricInterpretation = "RGB"
    rgb.PlanarConfiguration = 0
    rgb.BitsAllocated, rgb.BitsStored, rgb.HighBit = 8, 8, 7
    rgb.PixelData = np.zeros((64, 64, 3), np.uint8).tobytes()
    bad = _store(files, rgb)
    (outcome,) = process_jobs([_claim(1, study, [good, bad])], runner, files, PipelineOptions(OutputSettings()))
    assert outcome.error is None
    assert list(outcome.skipped) == [bad.sop_instance_uid]
    assert [r.kind for r in outcome.results] == [ResultKind.HEATMAP_SC, ResultKind.FINDINGS_SR]
    # the findings for the database: the good image decided, the bad one not assessed
    sc, sr = outcome.results
    assert [(f.sop_instance_uid, f.decision, f.not_assessed_reason) for f in outcome.findings] == [
        (good.sop_instance_uid, f.decision, None) for f in outcome.findings[:1]
    ] + [(bad.sop_instance_uid, FindingDecision.NOT_ASSESSED, NotAssessedReason.UNDECODABLE)]
    assert outcome.findings[0].decision in (FindingDecision.PRESENT, FindingDecision.ABSENT)
    assert outcome.findings[0].sc_sop_instance_uid == sc.sop_instance_uid
    assert {f.sr_sop_instance_uid for f in outcome.findings} == {sr.sop_instance_uid}


def test_study_with_nothing_usable_has_no_results(tmp_path: Path, runner: ModelRunner) -> None:
    files = FileStore(tmp_path / "data")
    study = generate_uid()
    missing = ClaimedInstance("1.2.3.4", "incoming/00/00/missing.dcm")
    (outcome,) = process_jobs([_claim(1, study, [missing])], runner, files, PipelineOptions(OutputSettings()))
    assert outcome.error is None and outcome.results == []
    assert "1.2.3.4" in outcome.skipped


def test_explain_positive_only_skips_heatmaps_of_negatives(tmp_path: Path, runner: ModelRunner) -> None:
    files = FileStore(tmp_path / "data")
    study = generate_uid()
    claim = _claim(1, study, [_store(files, make_cxr_dataset(study_uid=study, seed=s)) for s in (1, 2, 3)])
    # Threshold 1.0 makes every image negative: no heatmap at all, still one SR.
    strict = ModelRunner(runner.model, runner.manifest, runner.device, thresholds={"pneumonia": 1.0})
    (outcome,) = process_jobs([claim], strict, files, PipelineOptions(OutputSettings(), explain="positive"))
    assert [r.kind for r in outcome.results] == [ResultKind.FINDINGS_SR]
    lenient = ModelRunner(runner.model, runner.manifest, runner.device, thresholds={"pneumonia": 0.0})
    (outcome,) = process_jobs([claim], lenient, files, PipelineOptions(OutputSettings(), explain="positive"))
    assert [r.kind for r in outcome.results].count(ResultKind.HEATMAP_SC) == 3


def test_rerun_writes_the_same_result_uids(tmp_path: Path, runner: ModelRunner) -> None:
    files = FileStore(tmp_path / "data")
    study = generate_uid()
    claim = _claim(1, study, [_store(files, make_cxr_dataset(study_uid=study, seed=1))])
    first = process_jobs([claim], runner, files, PipelineOptions(OutputSettings()))[0]
    second = process_jobs([claim], runner, files, PipelineOptions(OutputSettings()))[0]
    assert [r.sop_instance_uid for r in first.results] == [r.sop_instance_uid for r in second.results]


def test_analyse_files_groups_by_study(tmp_path: Path, runner: ModelRunner) -> None:
    study = generate_uid()
    paths = []
    for seed in (1, 2):
        path = tmp_path / f"in{seed}.dcm"
        make_cxr_dataset(study_uid=study, seed=seed).save_as(path, enforce_file_format=True)
        paths.append(path)
    report = analyse_files(paths, runner, PipelineOptions(OutputSettings()), tmp_path / "out")
    assert list(report.written) == [study]
    assert len(report.written[study]) == 3
    assert all(p.exists() for p in report.written[study])
    assert [line.name for line in report.lines] == ["in1.dcm", "in2.dcm"] and report.processed == 2


def test_builders_need_only_the_model_identity_and_preprocessing() -> None:
    """No torch model: SC + SR from an analysis, identity and preprocessing; bytes validated at build."""
    from io import BytesIO

    from dicomnode.domain import GateVerdict, ModelIdentity, Prediction
    from dicomnode.inference.manifest import Preprocessing
    from dicomnode.pipeline import ImageAnalysis, build_study_outputs, legend_lines, prepare_image

    identity = ModelIdentity("unit", "1.2.3", "test_resnet", "ab" * 32)
    pre = Preprocessing(input_size=32, in_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3, resize="pad")
    image = prepare_image(make_cxr_dataset(rows=64, cols=96), pre, max_side=256)
    assert image.model_input.shape == (3, 32, 32)
    prediction = Prediction(("pneumonia",), (0.9,), (0.5,))
    analysis = ImageAnalysis(image, prediction, {0: np.ones((32, 32), np.float32)}, GateVerdict.accepted())
    assert "Model unit v1.2.3 (test_resnet)" in legend_lines(prediction, identity)
    built = build_study_outputs([analysis], identity, pre, PipelineOptions(OutputSettings()))
    assert [b.kind for b in built] == [ResultKind.HEATMAP_SC, ResultKind.FINDINGS_SR]
    for item in built:
        assert dcmread(BytesIO(item.encoded)).SOPInstanceUID == item.dataset.SOPInstanceUID
