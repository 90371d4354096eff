"""The sending AE as built from settings, and the outcomes decided without a peer.

Sending over a socket (DCMTK storescp) is in tests/integration/test_send_storescp.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from dicomnode.config import DestinationSettings
from dicomnode.errors import SendError
from dicomnode.sending.scu import RESULT_SOP_CLASSES, _send_one, build_scu_ae, send_files
from dicomnode.uid import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


def test_the_sending_ae_proposes_only_the_result_classes_uncompressed() -> None:
    ae = build_scu_ae(DestinationSettings(host="127.0.0.1", timeout_s=7), "NODE1")
    assert ae.ae_title == "NODE1"
    proposed = {cx.abstract_syntax: cx.transfer_syntax for cx in ae.requested_contexts}
    assert (
        set(proposed)
        == {SecondaryCaptureImageStorage, ComprehensiveSRStorage}
        == set(RESULT_SOP_CLASSES)
    )
    assert all(ts == [ExplicitVRLittleEndian, ImplicitVRLittleEndian] for ts in proposed.values())
    assert (ae.acse_timeout, ae.dimse_timeout, ae.network_timeout, ae.connection_timeout) == (
        7,
        7,
        7,
        7,
    )


def test_the_sending_ae_announces_the_nodes_implementation_identity() -> None:
    ae = build_scu_ae(DestinationSettings(host="127.0.0.1"), "NODE1")
    assert ae.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert ae.implementation_version_name == IMPLEMENTATION_VERSION_NAME


def test_without_a_destination_host_sending_is_an_error_that_says_what_to_set(
    tmp_path: Path,
) -> None:
    with pytest.raises(SendError, match="--destination"):
        send_files(DestinationSettings(), "NODE1", [tmp_path / "x.dcm"])


def test_nothing_to_send_opens_no_association() -> None:
    # Port 1 on loopback: an association attempt would fail; no attempt, no outcome.
    assert send_files(DestinationSettings(host="127.0.0.1", port=1), "NODE1", []) == []


def test_an_unreadable_result_file_fails_alone_before_anything_is_sent(tmp_path: Path) -> None:
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not DICOM")
    outcome = _send_one(object(), broken, "PACS@127.0.0.1:104")  # the association is never used
    assert (outcome.ok, outcome.status) == (False, None)
    assert outcome.error is not None and "cannot read result file" in outcome.error
    missing = _send_one(object(), tmp_path / "missing.dcm", "PACS@127.0.0.1:104")
    assert not missing.ok and missing.error is not None
