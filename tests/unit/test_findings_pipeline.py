"""What the pipeline asserts: gated images, intended population, multi-label, superseding SRs, UIDs.

Real tiny random-weight models, real files, a real SQLite queue. The input gate is
simulated by wrapping ``predict_and_explain`` (a tiny fake gate: blank images are not
assessable), as the real gate lives inside the runner.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import OutputSettings, StoreSettings
from dicomnode.domain import (
    ClaimedInstance,
    ClaimedJob,
    GateVerdict,
    InstanceState,
    JobState,
    NewResult,
    NotAssessedReason,
    ResultKind,
)
from dicomnode.inference.manifest import IntendedPopulation
from dicomnode.inference.registry import resolve_manifest
from dicomnode.inference.runner import BatchAnalysis, ModelRunner
from dicomnode.outputs import codes
from dicomnode.pipeline import PipelineOptions, process_jobs
from dicomnode.store import queue
from dicomnode.store.db import make_engine, make_sessionmaker
from dicomnode.store.files import FileStore
from dicomnode.store.models import Job, Result
from dicomnode.store.queue import utcnow
from dicomnode.training.datasets import NIH_FINDINGS
from tests.helpers import make_cxr_dataset, make_tiny_model

T0 = datetime(2026, 1, 1, 12, 0, 0)


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> ModelRunner:
    manifest = make_tiny_model(tmp_path_factory.mktemp("model"))
    return ModelRunner.from_loaded(resolve_manifest(str(manifest)), device="cpu")


@pytest.fixture(scope="module")
def nih_runner(tmp_path_factory: pytest.TempPathFactory) -> ModelRunner:
    manifest = make_tiny_model(tmp_path_factory.mktemp("nih"), labels=tuple(NIH_FINDINGS))
    return ModelRunner.from_loaded(resolve_manifest(str(manifest)), device="cpu")


@pytest.fixture
def gated(runner: ModelRunner, monkeypatch: pytest.MonkeyPatch) -> ModelRunner:
    """The tiny runner with a fake gate: nearly uniform inputs are NO_IMAGE_CONTENT."""
    original = runner.predict_and_explain

    def with_gate(batch: np.ndarray, *args: object, **kwargs: object) -> BatchAnalysis:
        result = original(batch, *args, **kwargs)  # type: ignore[arg-type]
        for i, image in enumerate(batch):
            if float(image.std()) < 1e-3:
                result.verdicts[i] = GateVerdict(False, NotAssessedReason.NO_IMAGE_CONTENT, 0.0, 0.0, "blank image")
                result.heatmaps[i] = None
        return result

    monkeypatch.setattr(runner, "predict_and_explain", with_gate)
    return runner


def _store(files: FileStore, ds: Dataset) -> ClaimedInstance:
    path = files.incoming_path(str(ds.SOPInstanceUID))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ClaimedInstance(str(ds.SOPInstanceUID), files.relative(path))


def _blank(study: str) -> Dataset:
    ds = make_cxr_dataset(study_uid=study)
    ds.PixelData = np.full((64, 64), 2000, np.uint16).tobytes()
    return ds


def _walk(items: list[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _concept(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _key(code: object) -> tuple[str, str]:
    return str(code.value), str(code.scheme_designator)  # type: ignore[attr-defined]


def _groups(sr: Dataset) -> list[Dataset]:
    return [i for i in _walk(sr.ContentSequence) if i.ValueType == "CONTAINER" and _concept(i) == ("125007", "DCM")]


def _source(group: Dataset) -> str:
    (item,) = [i for i in group.ContentSequence if i.ValueType == "IMAGE"]
    return str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)


def _codes(group: Dataset, name: object) -> list[Dataset]:
    return [i for i in group.ContentSequence if i.ValueType == "CODE" and _concept(i) == _key(name)]


def _value(item: Dataset) -> tuple[str, str]:
    code = item.ConceptCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _sr(files: FileStore, results: list[NewResult]) -> Dataset:
    (sr,) = [r for r in results if r.kind == ResultKind.FINDINGS_SR]
    return dcmread(files.absolute(sr.path))


def _conclusions(sr: Dataset) -> dict[str, tuple[str, str]]:
    (container,) = [i for i in sr.ContentSequence if _concept(i) == _key(codes.QUALITATIVE_EVALUATIONS)]
    return {_concept(i)[0]: _value(i) for i in container.ContentSequence}


def test_gated_image_has_no_finding_and_no_heatmap(tmp_path: Path, gated: ModelRunner) -> None:
    files = FileStore(tmp_path / "data")
    study = generate_uid()
    good, blank = _store(files, make_cxr_dataset(study_uid=study, seed=1)), _store(files, _blank(study))
    (outcome,) = process_jobs([ClaimedJob(1, study, utcnow(), (good, blank))], gated, files, PipelineOptions(OutputSettings()))
    assert outcome.error is None
    assert [r.kind for r in outcome.results] == [ResultKind.HEATMAP_SC, ResultKind.FINDINGS_SR]
    sr = _sr(files, outcome.results)
    groups = {_source(g): g for g in _groups(sr)}
    assert set(groups) == {good.sop_instance_uid, blank.sop_instance_uid}
    pneumonia = codes.label_to_code("pneumonia")
    assert len(_codes(groups[good.sop_instance_uid], pneumonia)) == 1
    assert _codes(groups[blank.sop_instance_uid], pneumonia) == []  # neither present nor absent
    (reason,) = _codes(groups[blank.sop_instance_uid], codes.NOT_ASSESSED_REASON)
    assert _value(reason) == _key(codes.not_assessed_code(NotAssessedReason.NO_IMAGE_CONTENT))
    assert reason.ContentSequence[0].TextValue == "blank image"
    assert "233604007" in _conclusions(sr)


def test_study_with_no_assessable_image_is_skipped_with_reason(tmp_path: Path, gated: ModelRunner) -> None:
    files = FileStore(tmp_path / "data")
    study = generate_uid()
    claim = ClaimedJob(1, study, utcnow(), (_store(files, _blank(study)),))
    (outcome,) = process_jobs([claim], gated, files, PipelineOptions(OutputSettings()))
    assert outcome.error is None and outcome.results == []
    assert outcome.skip_reason is not None
    assert "no_image_content (blank image)" in outcome.skip_reason


@pytest.mark.parametrize("mode", ["flag", "skip"])
def test_out_of_population(tmp_path: Path, runner: ModelRunner, mode: str) -> None:
    population = IntendedPopulation(description="pediatric", min_age_years=1, max_age_years=5, view_positions=("AP", "PA"))
    manifest = runner.manifest.model_copy(update={"intended_population": population})
    pediatric = ModelRunner(runner.model, manifest, runner.device)
    files = FileStore(tmp_path / "data")
    study = generate_uid()
    child = _store(files, make_cxr_dataset(study_uid=study, seed=1, PatientAge="004Y"))
    adult = _store(files, make_cxr_dataset(study_uid=study, seed=2, PatientAge="045Y"))
    unknown = _store(files, make_cxr_dataset(study_uid=study, seed=3))  # no PatientAge
    claim = ClaimedJob(1, study, utcnow(), (child, adult, unknown))
    options = PipelineOptions(OutputSettings(), out_of_population=mode)  # type: ignore[arg-type]
    (outcome,) = process_jobs([claim], pediatric, files, options)
    groups = {_source(g): g for g in _groups(_sr(files, outcome.results))}
    assert _value(_codes(groups[child.sop_instance_uid], codes.INTENDED_POPULATION)[0]) == _key(codes.POPULATION_WITHIN)
    assert _value(_codes(groups[unknown.sop_instance_uid], codes.INTENDED_POPULATION)[0]) == _key(codes.POPULATION_UNKNOWN)
    if mode == "flag":
        (flag,) = _codes(groups[adult.sop_instance_uid], codes.INTENDED_POPULATION)
        assert _value(flag) == _key(codes.POPULATION_OUTSIDE)
        assert flag.ContentSequence[0].TextValue == "age 45 years outside intended 1-5 years"
        assert len(_codes(groups[adult.sop_instance_uid], codes.label_to_code("pneumonia"))) == 1
    else:
        (reason,) = _codes(groups[adult.sop_instance_uid], codes.NOT_ASSESSED_REASON)
        assert _value(reason) == _key(codes.not_assessed_code(NotAssessedReason.OUT_OF_POPULATION))
        assert _codes(groups[adult.sop_instance_uid], codes.label_to_code("pneumonia")) == []


def test_fourteen_labels_one_heatmap_per_positive_finding(tmp_path: Path, nih_runner: ModelRunner) -> None:
    positive = set(NIH_FINDINGS[:3])
    thresholds = {label: (0.0 if label in positive else 1.0) for label in NIH_FINDINGS}
    model = ModelRunner(nih_runner.model, nih_runner.manifest, nih_runner.device, thresholds=thresholds)
    files = FileStore(tmp_path / "data")
    study = generate_uid()
    claim = ClaimedJob(1, study, utcnow(), tuple(_store(files, make_cxr_dataset(study_uid=study, seed=s)) for s in (1, 2)))
    (outcome,) = process_jobs([claim], model, files, PipelineOptions(OutputSettings(), explain="positive"))
    assert outcome.error is None
    assert [r.kind for r in outcome.results].count(ResultKind.HEATMAP_SC) == 2 * len(positive)
    sr = _sr(files, outcome.results)
    finding_codes = {_key(codes.label_to_code(label)) for label in NIH_FINDINGS}
    for group in _groups(sr):
        findings = [i for i in group.ContentSequence if i.ValueType == "CODE" and _concept(i) in finding_codes]
        assert len(findings) == len(NIH_FINDINGS)
        illustrated = [i for i in findings if any(c.ValueType == "IMAGE" for c in i.get("ContentSequence", []))]
        assert len(illustrated) == len(positive)
        assert all(_value(i) == _key(codes.PRESENT) for i in illustrated)
    assert len(_conclusions(sr)) == len(NIH_FINDINGS)


def test_result_uids_follow_content(tmp_path: Path, runner: ModelRunner) -> None:
    files = FileStore(tmp_path / "data")
    study = generate_uid()
    claim = ClaimedJob(1, study, utcnow(), (_store(files, make_cxr_dataset(study_uid=study, seed=1)),))
    strict = ModelRunner(runner.model, runner.manifest, runner.device, thresholds={"pneumonia": 1.0})

    def sr_uid(model: ModelRunner, explain: str) -> str:
        (outcome,) = process_jobs([claim], model, files, PipelineOptions(OutputSettings(), explain=explain))  # type: ignore[arg-type]
        return next(r.sop_instance_uid for r in outcome.results if r.kind == ResultKind.FINDINGS_SR)

    first = sr_uid(strict, "all")
    assert sr_uid(strict, "all") == first  # re-run: same UID
    assert sr_uid(strict, "positive") != first  # explain mode changes the content
    assert sr_uid(runner, "all") != first  # threshold (and decision) changes the content


def test_late_image_supersedes_the_earlier_report(tmp_path: Path, runner: ModelRunner) -> None:
    engine = make_engine(StoreSettings(data_dir=tmp_path / "node"))
    sessions: sessionmaker[Session] = make_sessionmaker(engine)
    files = FileStore(tmp_path / "node")
    study = generate_uid()
    options = PipelineOptions(OutputSettings())

    def record(ds: Dataset, now: datetime, state: InstanceState = InstanceState.ACCEPTED) -> str:
        stored = _store(files, ds)
        with sessions.begin() as session:
            queue.record_instance(
                session, study_instance_uid=study, series_instance_uid=str(ds.SeriesInstanceUID),
                sop_instance_uid=stored.sop_instance_uid, sop_class_uid=str(ds.SOPClassUID), path=stored.path,
                state=state, skip_reason=None if state == InstanceState.ACCEPTED else "BodyPartExamined 'ABDOMEN' is not a chest",
                calling_ae_title="MODALITY", now=now,
            )  # fmt: skip
        return stored.sop_instance_uid

    def run(now: datetime) -> list[NewResult]:
        with sessions.begin() as session:
            queue.mark_stable(session, stable_after_s=1, now=now)
            (claim,) = queue.claim_batch(session, limit=5, now=now, worker="w")
        (outcome,) = process_jobs([claim], runner, files, options)
        with sessions.begin() as session:
            assert queue.complete_job(session, claim, outcome.results, now=now)
        return outcome.results

    a = record(make_cxr_dataset(study_uid=study, seed=1), T0)
    b = record(make_cxr_dataset(study_uid=study, seed=2), T0 + timedelta(seconds=1))
    first = run(T0 + timedelta(seconds=5))
    c = record(make_cxr_dataset(study_uid=study, seed=3), T0 + timedelta(seconds=10))
    d = record(make_cxr_dataset(study_uid=study, seed=4, BodyPartExamined="ABDOMEN"), T0 + timedelta(seconds=11),
               InstanceState.SKIPPED)  # fmt: skip
    second = run(T0 + timedelta(seconds=20))

    sr1, sr2 = _sr(files, first), _sr(files, second)
    assert sr2.SOPInstanceUID != sr1.SOPInstanceUID
    (pred_study,) = sr2.PredecessorDocumentsSequence
    (pred_series,) = pred_study.ReferencedSeriesSequence
    assert pred_series.SeriesInstanceUID == sr1.SeriesInstanceUID
    assert pred_series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sr1.SOPInstanceUID
    assert sr2.SeriesInstanceUID == sr1.SeriesInstanceUID and sr2.InstanceNumber == sr1.InstanceNumber + 1
    assert [_source(g) for g in _groups(sr1)] == [a, b]
    groups = {_source(g): g for g in _groups(sr2)}
    assert list(groups) == [a, b, c, d]
    (refused,) = _codes(groups[d], codes.NOT_ASSESSED_REASON)
    assert _value(refused) == _key(codes.not_assessed_code(NotAssessedReason.HEADER_NOT_ACCEPTED))
    # SCs of a and b keep their UIDs; the outbox holds each object once.
    first_scs = {r.sop_instance_uid for r in first if r.kind == ResultKind.HEATMAP_SC}
    second_scs = {r.sop_instance_uid for r in second if r.kind == ResultKind.HEATMAP_SC}
    assert first_scs < second_scs and len(second_scs) == 3
    with sessions() as session:
        uids = session.scalars(select(Result.sop_instance_uid)).all()
        assert len(uids) == len(set(uids)) == 5  # 3 SCs + 2 SRs
        assert [j.state for j in session.scalars(select(Job).order_by(Job.id))] == [JobState.DONE, JobState.DONE]
    engine.dispose()
