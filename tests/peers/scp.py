"""The node's SCP in-process on a free loopback port, and a pynetdicom SCU that can send
what a broken sender sends (command UIDs chosen apart from the data set)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import DicomSettings
from dicomnode.receiving.handlers import ReceiveContext
from dicomnode.receiving.scp import start_scp
from tests.helpers import DX_PRESENTATION_STORAGE, free_port, wait_for_port

NODE_AE = "DICOMNODE"
#: The two uncompressed transfer syntaxes every SCP takes.
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


@dataclass
class RunningScp:
    """An SCP listening on 127.0.0.1:port."""

    settings: DicomSettings
    server: ThreadedAssociationServer
    context: ReceiveContext

    @property
    def port(self) -> int:
        return self.settings.port


def run_scp(context: ReceiveContext, **overrides: Any) -> RunningScp:
    """Start an SCP on a free loopback port and wait until it accepts connections."""
    values: dict[str, Any] = {
        "ae_title": NODE_AE,
        "port": free_port(),
        "bind_address": "127.0.0.1",
        "acse_timeout_s": 5,
        "dimse_timeout_s": 10,
        "network_timeout_s": 10,
    }
    values.update(overrides)
    settings = DicomSettings(**values)
    server = start_scp(settings, context)
    wait_for_port(settings.port, timeout_s=10)
    return RunningScp(settings=settings, server=server, context=context)


def associate(
    port: int,
    contexts: Sequence[tuple[str, Sequence[str]]],
    *,
    calling: str = "TESTSCU",
    called: str = NODE_AE,
) -> Association:
    """Open an association as a pynetdicom SCU proposing ``(sop_class, [ts...])`` pairs."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = 5
    ae.dimse_timeout = 10
    ae.network_timeout = 10
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, list(syntaxes))
    return ae.associate("127.0.0.1", port, ae_title=called)


def send_raw_store(
    assoc: Association,
    dataset: Dataset | bytes,
    *,
    sop_instance_uid: str,
    sop_class_uid: str = DX_PRESENTATION_STORAGE,
    transfer_syntax: str = ExplicitVRLittleEndian,
    timeout_s: float = 10.0,
) -> int:
    """Send one C-STORE whose command UIDs and data set are chosen independently.

    pynetdicom's ``send_c_store`` always takes the command UIDs from the data set;
    a broken sender does not, so this builds the request primitive itself. ``dataset``
    may be raw bytes (already encoded, or garbage).

    Returns:
        The response status.
    """
    context = next(
        cx
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == sop_class_uid and cx.transfer_syntax[0] == transfer_syntax
    )
    if isinstance(dataset, Dataset):
        ts = context.transfer_syntax[0]
        payload = encode(dataset, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
        assert payload is not None
    else:
        payload = dataset
    req = C_STORE()
    req.MessageID = 1
    req.Priority = 2
    req.AffectedSOPClassUID = sop_class_uid
    req.AffectedSOPInstanceUID = sop_instance_uid
    req.DataSet = BytesIO(payload)
    # Same hand-over as Association.send_c_store: pause the reactor, send, wait.
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + timeout_s
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0001)
    assert context.context_id is not None
    try:
        assoc.dimse.send_msg(req, context.context_id)
        _cx_id, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert rsp is not None, "no C-STORE response before the DIMSE timeout"
    return int(rsp.Status or 0)


def send_datasets(port: int, datasets: Sequence[Dataset], *, calling: str = "TESTSCU") -> list[int]:
    """C-STORE ``datasets`` in order over one association proposing each data set's
    (SOP class, transfer syntax) pair; their statuses (-1: no response).

    Values that are invalid on purpose are sent as they are (pydicom's writing
    validation is off while sending).
    """
    import pydicom.config

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class, syntax in sorted(
        {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    ):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established
    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        statuses = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status else -1)
        return statuses
    finally:
        pydicom.config.settings.writing_validation_mode = previous
        assoc.release()


def rejection(assoc: Association) -> tuple[int, int, int]:
    """(result, source, reason/diagnostic) of the A-ASSOCIATE-RJ that refused ``assoc``."""
    assert assoc.is_rejected
    primitive = assoc.acceptor.primitive
    assert primitive is not None
    return (int(primitive.result), int(primitive.result_source), int(primitive.diagnostic))
