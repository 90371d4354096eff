"""The guard's P-DATA fast path: data set fragments out of the PDU, back into the primitive."""

from __future__ import annotations

import struct

from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.pdu import P_DATA_TF

from dicomnode.receiving.commands import _restore_fragments
from dicomnode.receiving.guard import split_p_data


def _item(context_id: int, control: int, fragment: bytes) -> bytes:
    return struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment


def test_data_fragments_are_taken_out_and_commands_kept() -> None:
    command = _item(1, 0x03, b"\x00" * 10)
    body = bytearray(command + _item(1, 0x00, b"abcdef") + _item(3, 0x02, b"xyz"))
    reduced, fragments = split_p_data(body)
    assert fragments is not None
    assert [bytes(f) for f in fragments] == [b"\x00abcdef", b"\x02xyz"]
    assert bytes(reduced) == command + _item(1, 0x00, b"") + _item(3, 0x02, b"")


def test_pynetdicom_decodes_the_reduced_pdu_and_the_restored_primitive() -> None:
    """The reduced PDU is a valid P-DATA-TF; with the fragments put back, pynetdicom's
    decoder assembles the original data set bytes."""
    fragments_sent = [b"first-fragment-", b"second", b"-last"]
    controls = [0x00, 0x00, 0x02]
    body = bytearray(b"".join(_item(1, c, f) for c, f in zip(controls, fragments_sent, strict=True)))
    reduced, fragments = split_p_data(body)
    assert fragments is not None
    pdu = P_DATA_TF()
    pdu.decode(b"\x04\x00" + struct.pack(">L", len(reduced)) + bytes(reduced))
    primitive = pdu.to_primitive()
    assert [data for _, data in primitive.presentation_data_value_list] == [b"\x00", b"\x00", b"\x02"]
    _restore_fragments(primitive, fragments)
    message = DIMSEMessage()
    message.command_set = object()  # the command set arrived earlier; only data follows
    assert message.decode_msg(primitive) is True
    assert message.data_set.getvalue() == b"".join(fragments_sent)


def test_malformed_body_is_passed_on_unchanged() -> None:
    for body in (
        bytearray(_item(1, 0x00, b"abc")[:-1]),  # item longer than the body
        bytearray(struct.pack(">LBB", 1, 1, 0)),  # item length below 2
        bytearray(_item(1, 0x00, b"abc") + b"\x00\x00"),  # trailing bytes
    ):
        reduced, fragments = split_p_data(body)
        assert fragments is None
        assert reduced is body


def test_command_only_pdu_queues_no_fragment() -> None:
    body = bytearray(_item(1, 0x03, b"\x01\x02"))
    reduced, fragments = split_p_data(body)
    assert fragments == []
    assert bytes(reduced) == bytes(body)
