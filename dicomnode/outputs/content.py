"""SR content items (PS3.3 C.17.3) encoded straight to Explicit VR Little Endian bytes.

The findings SR holds some 400 data elements in 130 nested items. Built as highdicom
content items and encoded by pydicom that took about 45 ms a study (per-element object
construction, validation and writer overhead), more than the model's own work per image
on a CPU. Here each item is a few bytes concatenated: about 2 ms a study.

What stays with the libraries: highdicom builds the document (patient, study, series,
evidence, SR document modules) from the root container; every value written here is
checked with pydicom's own validator (:func:`pydicom.valuerep.validate_value`, raising)
and text is encoded with pydicom's charset codec in the document's Specific Character
Set. Each method writes exactly the attributes highdicom's content item of the same
value type writes, in tag order, with defined lengths, as pydicom would; the tests
parse every document back with pydicom and highdicom's TID 1500 reader and run
dciodvfy and dsrdump on it.

The encoded tree is attached to the document as one raw Content Sequence element (see
:func:`content_sequence_element`); the document must say that its encoding is Explicit
VR Little Endian (``Dataset.set_original_encoding``) so that pydicom writes it as is.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Protocol

from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings, encode_string
from pydicom.dataelem import RawDataElement
from pydicom.sr.coding import Code
from pydicom.tag import Tag
from pydicom.valuerep import DS, validate_value

from dicomnode.explicit_vr import element, header

__all__ = ["Concept", "ContentWriter", "code_sequence", "content_sequence_element"]

# Tags (PS3.6), in the order an item lists them.
_REFERENCED_SOP_SEQUENCE = 0x00081199
_REFERENCED_SOP_CLASS_UID = 0x00081150
_REFERENCED_SOP_INSTANCE_UID = 0x00081155
_CODE_VALUE = 0x00080100
_CODING_SCHEME_DESIGNATOR = 0x00080102
_CODING_SCHEME_VERSION = 0x00080103
_CODE_MEANING = 0x00080104
_MAPPING_RESOURCE = 0x00080105
_LONG_CODE_VALUE = 0x00080119
_URN_CODE_VALUE = 0x00080120
_MEASUREMENT_UNITS_CODE_SEQUENCE = 0x004008EA
_RELATIONSHIP_TYPE = 0x0040A010
_VALUE_TYPE = 0x0040A040
_CONCEPT_NAME_CODE_SEQUENCE = 0x0040A043
_CONTINUITY_OF_CONTENT = 0x0040A050
_UID = 0x0040A124
_TEXT_VALUE = 0x0040A160
_FLOATING_POINT_VALUE = 0x0040A161
_CONCEPT_CODE_SEQUENCE = 0x0040A168
_MEASURED_VALUE_SEQUENCE = 0x0040A300
_NUMERIC_VALUE = 0x0040A30A
_CONTENT_TEMPLATE_SEQUENCE = 0x0040A504
_CONTENT_SEQUENCE = 0x0040A730
_TEMPLATE_IDENTIFIER = 0x0040DB00

_ITEM = b"\xfe\xff\x00\xe0"


def _sequence(tag: int, items: Iterable[bytes]) -> bytes:
    """A sequence element of encoded items (each made by :func:`_item`), defined length."""
    body = b"".join(items)
    return header(tag, "SQ", len(body)) + body


def _item(elements: Iterable[tuple[int, bytes]]) -> bytes:
    """A sequence item of (tag, encoded element) pairs, written in tag order."""
    body = b"".join(encoded for _, encoded in sorted(elements, key=lambda pair: pair[0]))
    return _ITEM + struct.pack("<I", len(body)) + body


def _ascii(tag: int, vr: str, value: str) -> tuple[int, bytes]:
    """A checked value of a VR whose repertoire is ASCII (CS, UI, DS, ...)."""
    validate_value(vr, value, pydicom_config.RAISE)
    return tag, element(tag, vr, value.encode("ascii"))


class Concept(Protocol):
    """A coded concept: pydicom's ``Code`` or highdicom's ``CodedConcept``."""

    @property
    def value(self) -> str: ...
    @property
    def scheme_designator(self) -> str: ...
    @property
    def meaning(self) -> str: ...
    @property
    def scheme_version(self) -> str | None: ...


def _code_elements(code: Concept, encodings: tuple[str, ...]) -> list[tuple[int, bytes]]:
    value = str(code.value)
    if len(value) > 16:
        value_tag, value_vr = (
            (_URN_CODE_VALUE, "UR") if value.startswith("urn") or "://" in value else (_LONG_CODE_VALUE, "UC")
        )
    else:
        value_tag, value_vr = _CODE_VALUE, "SH"
    elements = [
        _text(value_tag, value_vr, value, encodings),
        _text(_CODING_SCHEME_DESIGNATOR, "SH", str(code.scheme_designator), encodings),
        _text(_CODE_MEANING, "LO", str(code.meaning), encodings),
    ]
    if code.scheme_version:
        elements.append(_text(_CODING_SCHEME_VERSION, "SH", str(code.scheme_version), encodings))
    return elements


def _text(tag: int, vr: str, value: str, encodings: tuple[str, ...]) -> tuple[int, bytes]:
    """A checked value of a VR whose text is in the document's character set."""
    validate_value(vr, value, pydicom_config.RAISE)
    return tag, element(tag, vr, encode_string(value, list(encodings)))


@lru_cache(maxsize=1024)
def _code_sequence(
    tag: int, value: str, scheme: str, meaning: str, version: str | None, encodings: tuple[str, ...]
) -> bytes:
    return _sequence(tag, [_item(_code_elements(Code(value, scheme, meaning, version), encodings))])


def code_sequence(tag: int, code: Concept, encodings: tuple[str, ...]) -> bytes:
    """The one-item code sequence ``tag`` holding ``code`` (PS3.3 Table 8.8-1a), its text
    in the document's ``encodings`` (a label's meaning may be any text); cached: codes repeat."""
    return _code_sequence(
        tag, str(code.value), str(code.scheme_designator), str(code.meaning), code.scheme_version, encodings
    )


class ContentWriter:
    """Encodes the content items of one SR document.

    Every method returns one encoded sequence item, ready to be a child of another item
    or of the document's Content Sequence. Relationship types are PS3.3 C.17.3.2.4
    terms (``"CONTAINS"``, ``"HAS PROPERTIES"``, ...); highdicom's
    ``RelationshipTypeValues`` members work too.

    Attributes:
        referenced: SOP Instance UIDs the IMAGE items written so far reference, in order
            (the document's evidence must list each).
    """

    def __init__(self, character_set: str | Sequence[str] | None) -> None:
        """``character_set``: the document's Specific Character Set (None: the default repertoire)."""
        self._encodings = tuple(
            convert_encodings(character_set if character_set is None or isinstance(character_set, str) else list(character_set))
        )
        self.referenced: list[str] = []

    def _head(self, relationship: object, value_type: str, name: Concept) -> list[tuple[int, bytes]]:
        return [
            _ascii(_RELATIONSHIP_TYPE, "CS", str(getattr(relationship, "value", relationship))),
            _ascii(_VALUE_TYPE, "CS", value_type),
            (_CONCEPT_NAME_CODE_SEQUENCE, code_sequence(_CONCEPT_NAME_CODE_SEQUENCE, name, self._encodings)),
        ]

    @staticmethod
    def _children(elements: list[tuple[int, bytes]], children: Sequence[bytes]) -> bytes:
        if children:
            elements.append((_CONTENT_SEQUENCE, _sequence(_CONTENT_SEQUENCE, children)))
        return _item(elements)

    def code(self, relationship: object, name: Concept, value: Concept, children: Sequence[bytes] = ()) -> bytes:
        """A CODE item: ``name`` = ``value``."""
        elements = self._head(relationship, "CODE", name)
        elements.append((_CONCEPT_CODE_SEQUENCE, code_sequence(_CONCEPT_CODE_SEQUENCE, value, self._encodings)))
        return self._children(elements, children)

    def text(self, relationship: object, name: Concept, value: str, children: Sequence[bytes] = ()) -> bytes:
        """A TEXT item (UT value, in the document's character set)."""
        elements = self._head(relationship, "TEXT", name)
        elements.append(_text(_TEXT_VALUE, "UT", value, self._encodings))
        return self._children(elements, children)

    def uidref(self, relationship: object, name: Concept, uid: str) -> bytes:
        """A UIDREF item."""
        elements = self._head(relationship, "UIDREF", name)
        elements.append(_ascii(_UID, "UI", uid))
        return _item(elements)

    def num(self, relationship: object, name: Concept, value: float, unit: Concept) -> bytes:
        """A NUM item with one measured value in ``unit``.

        Like highdicom's NUM item: the Numeric Value is the decimal string of ``value``
        (at most 16 characters), and a float also gets its exact Floating Point Value.
        """
        if not isinstance(value, (int, float)):
            raise TypeError(f"a NUM value must be an int or a float, not {type(value).__name__}")
        measured = [
            (_MEASUREMENT_UNITS_CODE_SEQUENCE, code_sequence(_MEASUREMENT_UNITS_CODE_SEQUENCE, unit, self._encodings)),
            _ascii(_NUMERIC_VALUE, "DS", str(DS(value, auto_format=True))),
        ]
        if isinstance(value, float):
            measured.append((_FLOATING_POINT_VALUE, element(_FLOATING_POINT_VALUE, "FD", struct.pack("<d", value))))
        elements = self._head(relationship, "NUM", name)
        elements.append((_MEASURED_VALUE_SEQUENCE, _sequence(_MEASURED_VALUE_SEQUENCE, [_item(measured)])))
        return _item(elements)

    def image(
        self, relationship: object, name: Concept, sop_class_uid: str, sop_instance_uid: str, children: Sequence[bytes] = ()
    ) -> bytes:
        """An IMAGE item referencing one instance (recorded in :attr:`referenced`)."""
        reference = _item([
            _ascii(_REFERENCED_SOP_CLASS_UID, "UI", sop_class_uid),
            _ascii(_REFERENCED_SOP_INSTANCE_UID, "UI", sop_instance_uid),
        ])  # fmt: skip
        elements = self._head(relationship, "IMAGE", name)
        elements.append((_REFERENCED_SOP_SEQUENCE, _sequence(_REFERENCED_SOP_SEQUENCE, [reference])))
        self.referenced.append(sop_instance_uid)
        return self._children(elements, children)

    def container(
        self, relationship: object, name: Concept, children: Sequence[bytes], *, template: str | None = None
    ) -> bytes:
        """A CONTAINER item (continuous content), optionally naming its DCMR template."""
        elements = self._head(relationship, "CONTAINER", name)
        elements.append(_ascii(_CONTINUITY_OF_CONTENT, "CS", "CONTINUOUS"))
        if template is not None:
            identification = _item([_ascii(_MAPPING_RESOURCE, "CS", "DCMR"), _ascii(_TEMPLATE_IDENTIFIER, "CS", template)])
            elements.append((_CONTENT_TEMPLATE_SEQUENCE, _sequence(_CONTENT_TEMPLATE_SEQUENCE, [identification])))
        return self._children(elements, children)


def content_sequence_element(items: Sequence[bytes]) -> RawDataElement:
    """The document's Content Sequence (0040,A730) holding ``items``, as one raw element.

    pydicom writes a raw element's bytes unchanged when the dataset's original encoding
    is the one written (Explicit VR Little Endian) and parses them when read.
    """
    body = b"".join(items)
    return RawDataElement(Tag(_CONTENT_SEQUENCE), "SQ", len(body), body, 0, False, True)
