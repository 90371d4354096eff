"""The input classes of issue 4 through a real SCP: the status and record each gets.

Valid chest radiographs in every form -> 0x0000, ACCEPTED. Unusable images ->
0x0000, SKIPPED with a readable reason (or ACCEPTED when only decoding can tell:
the batch skips those, see tests/integration/test_input_classes.py). Malformed
wire data -> a failure status, nothing stored. Other SOP classes -> refused at
association negotiation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.config import StoreSettings
from dicomnode.domain import InstanceState
from dicomnode.receiving.handlers import ReceiveContext
from dicomnode.receiving.scp import stop_scp
from dicomnode.store.db import make_engine, make_sessionmaker
from dicomnode.store.files import FileStore
from dicomnode.store.models import Instance
from tests.helpers import DX_PRESENTATION_STORAGE
from tests.peers import corpus
from tests.peers.scp import RunningScp, associate, run_scp, send_raw_store

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def corpus_scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningScp, Path]]:
    """One SCP for the whole corpus (each case has its own UIDs)."""
    data_dir = tmp_path_factory.mktemp("corpus-node")
    engine = make_engine(StoreSettings(data_dir=data_dir))
    context = ReceiveContext(files=FileStore(data_dir), sessionmaker=make_sessionmaker(engine))
    running = run_scp(context)
    yield running, data_dir
    stop_scp(running.server, grace_s=2)
    engine.dispose()


def _row(scp: RunningScp, uid: str) -> Instance | None:
    with scp.context.sessionmaker() as session:
        return session.get(Instance, uid)


def _send(scp: RunningScp, case: corpus.Case) -> int:
    assoc = associate(scp.port, [(case.sop_class_uid, [case.transfer_syntax])])
    assert assoc.is_established
    try:
        assert assoc.accepted_contexts, f"{case.transfer_syntax.name} not accepted"
        status = assoc.send_c_store(case.dataset)
        return int(status.Status)
    finally:
        assoc.release()


@pytest.mark.parametrize("name", corpus.valid_case_names())
def test_valid_forms_are_acknowledged_and_accepted(
    corpus_scp: tuple[RunningScp, Path], name: str
) -> None:
    scp, _ = corpus_scp
    case = corpus.build_case(name)
    assert _send(scp, case) == 0x0000
    row = _row(scp, str(case.dataset.SOPInstanceUID))
    assert row is not None
    assert row.state == InstanceState.ACCEPTED, row.skip_reason


@pytest.mark.parametrize("name", corpus.unusable_case_names())
def test_unusable_images_are_stored_with_a_reason(
    corpus_scp: tuple[RunningScp, Path], name: str
) -> None:
    scp, data_dir = corpus_scp
    case = corpus.build_case(name)
    assert _send(scp, case) == 0x0000
    row = _row(scp, str(case.dataset.SOPInstanceUID))
    assert row is not None
    assert (data_dir / row.path).is_file()
    if case.receive == "skipped":
        assert row.state == InstanceState.SKIPPED
        assert case.skip_reason and row.skip_reason and case.skip_reason in row.skip_reason
    else:  # only decoding reveals it: the batch skips it
        assert row.state == InstanceState.ACCEPTED


@pytest.mark.parametrize("case", corpus.malformed_cases(), ids=lambda case: case.name)
def test_malformed_wire_data_is_never_acknowledged(
    corpus_scp: tuple[RunningScp, Path], case: corpus.Malformed
) -> None:
    scp, _ = corpus_scp
    assoc = associate(scp.port, [(case.sop_class_uid, [case.transfer_syntax])])
    assert assoc.is_established
    try:
        status = send_raw_store(
            assoc,
            case.payload,
            sop_instance_uid=case.sop_instance_uid,
            sop_class_uid=case.sop_class_uid,
            transfer_syntax=case.transfer_syntax,
        )
    finally:
        if assoc.is_established:
            assoc.release()
    assert status != 0x0000
    assert status in case.statuses, f"0x{status:04X}"
    assert _row(scp, case.sop_instance_uid) is None


@pytest.mark.parametrize(
    "sop_class",
    [
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
        "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
        "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    ],
)
def test_other_sop_classes_are_refused_at_negotiation(
    corpus_scp: tuple[RunningScp, Path], sop_class: str
) -> None:
    scp, _ = corpus_scp
    assoc = associate(
        scp.port,
        [
            (UID(sop_class), [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
            (DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian]),
        ],
    )
    assert assoc.is_established
    try:
        assert {str(cx.abstract_syntax) for cx in assoc.rejected_contexts} == {sop_class}
        assert {str(cx.abstract_syntax) for cx in assoc.accepted_contexts} == {
            DX_PRESENTATION_STORAGE
        }
    finally:
        assoc.release()


def test_nothing_outside_the_data_folder_and_no_sql_damage(
    corpus_scp: tuple[RunningScp, Path],
) -> None:
    """After the corpus (SQL-looking strings included) the tables are intact."""
    scp, data_dir = corpus_scp
    with scp.context.sessionmaker() as session:
        rows = list(session.scalars(select(Instance)))
    assert rows  # earlier tests of this module stored instances
    for row in rows:
        assert (data_dir / row.path).resolve().is_relative_to(data_dir.resolve())
    with Session(scp.context.sessionmaker.kw["bind"]) as session:
        assert session.scalar(select(Instance.sop_instance_uid).limit(1)) is not None
