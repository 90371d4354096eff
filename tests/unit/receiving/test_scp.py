"""The SCP as built from settings: presentation contexts, transfer syntaxes, timeouts, AE checks
(no socket; negotiation over a socket is in tests/integration/test_receive_negotiation.py)."""

from __future__ import annotations

from pydicom.uid import (
    UID,
)
from pynetdicom.sop_class import Verification

from dicomnode.config import DicomSettings
from dicomnode.receiving.scp import (
    build_ae,
    connection_limits,
    decodable_transfer_syntaxes,
)
from dicomnode.receiving.validation import STORAGE_SOP_CLASSES

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MG_PRESENTATION_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.2")


def test_build_ae_applies_settings() -> None:
    settings = DicomSettings(
        ae_title="NODE1",
        max_associations=7,
        acse_timeout_s=3,
        dimse_timeout_s=4,
        network_timeout_s=5,
        maximum_pdu_size=65536,
        allowed_calling_aets=["MODALITY1", "PACS"],
        require_called_ae_title=False,
    )
    ae = build_ae(settings)
    assert ae.ae_title == "NODE1"
    # max_associations is enforced by guard.handle_requested (silent sockets don't count)
    assert connection_limits(settings).max_associations == 7
    assert (ae.acse_timeout, ae.dimse_timeout, ae.network_timeout) == (3, 4, 5)
    assert ae.maximum_pdu_size == 65536
    assert ae.require_calling_aet == ["MODALITY1", "PACS"]
    assert ae.require_called_aet is False
    offered = {cx.abstract_syntax for cx in ae.supported_contexts}
    assert offered == {*STORAGE_SOP_CLASSES, Verification}


def test_every_common_transfer_syntax_is_offered() -> None:
    names = {uid.name for uid in decodable_transfer_syntaxes()}
    for expected in (
        "Implicit VR Little Endian",
        "Explicit VR Little Endian",
        "Explicit VR Big Endian",
        "Deflated Explicit VR Little Endian",
        "JPEG Baseline (Process 1)",
        "JPEG Extended (Process 2 and 4)",
        "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])",
        "JPEG-LS Lossless Image Compression",
        "JPEG-LS Lossy (Near-Lossless) Image Compression",
        "JPEG 2000 Image Compression (Lossless Only)",
        "JPEG 2000 Image Compression",
        "RLE Lossless",
    ):
        assert expected in names
