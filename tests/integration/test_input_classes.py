"""The generated input corpus through a real node: results for the usable, reasons for the rest.

Every valid form (transfer syntaxes, bit depths, signed pixels, character sets,
private tags, SQL-looking strings) comes back from ``dicomnode serve`` as exactly
one heatmap SC and one SR at a DCMTK storescp. Unusable images are stored and
skipped with a readable reason, visible in ``dicomnode status``; an image whose
compressed stream is corrupt is skipped by the batch without stopping it (its
study-mate still gets its results).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.helpers import make_tiny_model
from tests.integration.peers import dicomnode_status, node_sending_to_storescp, wait_until
from tests.peers import corpus
from tests.peers.scp import send_datasets

pytestmark = [pytest.mark.integration, pytest.mark.dcmtk, pytest.mark.slow]

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",
    "1.2.840.10008.5.1.4.1.1.88.22",
}
#: Cases whose results the output builders cannot make (none: sources in ISO 2022 or
#: unknown character sets are written as UTF-8 copies, see dicomnode/outputs/charset.py).
KNOWN_OUTPUT_FAILURES: frozenset[str] = frozenset()
_OPEN_JOB_STATES = ("received", "ready", "running", "done")


def _send_all(port: int, cases: list[corpus.Case]) -> dict[str, int]:
    statuses = send_datasets(port, [case.dataset for case in cases], calling="CORPUSSCU")
    return {case.name: status for case, status in zip(cases, statuses)}


def _open_jobs(data_dir: Path) -> int:
    """Jobs not yet in a final state (sent, skipped, failed), read from the node's database."""
    with sqlite3.connect(
        f"file:{data_dir / 'dicomnode.sqlite3'}?mode=ro", uri=True, timeout=10
    ) as db:
        marks = ",".join("?" * len(_OPEN_JOB_STATES))
        return int(
            db.execute(
                f"SELECT count(*) FROM job WHERE state IN ({marks})", _OPEN_JOB_STATES
            ).fetchone()[0]
        )


def _status(data_dir: Path) -> tuple[dict[str, object], str]:
    def run(*extra: str) -> str:
        result = dicomnode_status(data_dir, *extra)
        assert result.returncode == 0, result.stderr
        return result.stdout

    return json.loads(run("--json").strip().splitlines()[-1]), run()


def test_corpus_through_a_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMNODE_SCHEDULER__MAX_ATTEMPTS", "1")  # a failing study ends at once
    valid = corpus.valid_cases()
    unusable = corpus.unusable_cases()
    # A study holding one good image and one with a corrupt stream: the batch skips
    # only the corrupt one.
    mixed_study = generate_uid()
    good = corpus.new_identity(corpus.build_case("dx-mono2-8bit-explicit").dataset)
    bad = corpus.new_identity(corpus.build_case("corrupt-j2k-stream").dataset)
    good.StudyInstanceUID = bad.StudyInstanceUID = mixed_study
    mixed = [corpus.Case("mixed-good", good), corpus.Case("mixed-corrupt", bad, batch="skipped")]
    cases = valid + unusable + mixed
    usable_studies = {str(c.dataset.StudyInstanceUID) for c in valid} | {mixed_study}
    model = make_tiny_model(tmp_path / "model")

    with node_sending_to_storescp(tmp_path, model, "--batch-size", "64") as (node, pacs):
        statuses = _send_all(node.port, cases)
        assert {name: status for name, status in statuses.items() if status != 0} == {}
        wait_until(lambda: _open_jobs(tmp_path / "node") == 0, 180, "every job in a final state")
        summary, text = _status(tmp_path / "node")
    results = [dcmread(path, stop_before_pixels=True) for path in pacs.files()]

    sc_per_study = Counter(str(ds.StudyInstanceUID) for ds in results if ds.SOPClassUID == SC_CLASS)
    sr_per_study = Counter(
        str(ds.StudyInstanceUID) for ds in results if ds.SOPClassUID in SR_CLASSES
    )
    missing = set()
    for case in valid:
        counts = (
            sc_per_study[str(case.dataset.StudyInstanceUID)],
            sr_per_study[str(case.dataset.StudyInstanceUID)],
        )
        if counts == (0, 0):
            missing.add(case.name)
        else:
            assert counts == (1, 1), case.name
    assert missing <= KNOWN_OUTPUT_FAILURES, (
        f"no results for {sorted(missing - KNOWN_OUTPUT_FAILURES)}"
    )
    assert (sc_per_study[mixed_study], sr_per_study[mixed_study]) == (1, 1)
    for case in unusable:
        assert str(case.dataset.StudyInstanceUID) not in sc_per_study, case.name
    assert set(sr_per_study) <= usable_studies

    assert summary["instances"] == {"accepted": len(valid) + 1, "skipped": len(unusable) + 1}
    jobs = summary["jobs"]
    assert isinstance(jobs, dict)
    assert jobs.get("sent") == len(usable_studies) - len(missing)
    assert jobs.get("skipped") == len(unusable)
    assert jobs.get("failed", 0) == len(missing)
    # The reasons are readable in `dicomnode status` (it lists the most recent ones).
    assert "recently skipped instances:" in text
    skips = summary["recent_skips"]
    assert isinstance(skips, list)
    reasons = [str(item["reason"]) for item in skips]
    assert reasons and all(reasons)
    assert any("decode" in reason.lower() for reason in reasons), reasons
    if missing:
        pytest.xfail(
            f"output builders cannot make results for {sorted(missing)} yet (dicomnode/outputs)"
        )
