"""ContentWriter: every item kind encodes exactly as highdicom's content item + pydicom's writer.

highdicom is the reference: each case builds the same item both ways, puts it in a
document's Content Sequence and compares the written bytes.
"""

from __future__ import annotations

import io

import pytest
from highdicom.sr import (
    CodeContentItem,
    ContainerContentItem,
    ContentSequence,
    ImageContentItem,
    NumContentItem,
    RelationshipTypeValues,
    TextContentItem,
    UIDRefContentItem,
)
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes as dcm
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.config import OutputSettings
from dicomnode.domain import ModelIdentity, Prediction
from dicomnode.outputs import codes
from dicomnode.outputs.content import ContentWriter, content_sequence_element
from dicomnode.outputs.sr import ImageFindings, build_findings_sr
from dicomnode.outputs.validate import validate_result

CONTAINS = RelationshipTypeValues.CONTAINS
PROPS = RelationshipTypeValues.HAS_PROPERTIES
SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.12345"
LONG_CODE = Code("a-code-value-longer-than-16", "99TEST", "Long")


def _document(charset: str | None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if charset:
        ds.SpecificCharacterSet = charset
    return ds


def _written(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def _highdicom_bytes(item: Dataset, charset: str | None) -> bytes:
    ds = _document(charset)
    ds.ContentSequence = ContentSequence([item])
    return _written(ds)


def _writer_bytes(item: bytes, charset: str | None) -> bytes:
    ds = _document(charset)
    ds.set_original_encoding(False, True, ds._character_set)
    ds[0x0040A730] = content_sequence_element([item])
    return _written(ds)


def _with_children(item: Dataset, children: list[Dataset]) -> Dataset:
    item.ContentSequence = ContentSequence(children)
    return item


CASES = {
    "code": (
        lambda: CodeContentItem(name=codes.label_to_code("pneumonia"), value=codes.PRESENT, relationship_type=CONTAINS),
        lambda w: w.code(CONTAINS, codes.label_to_code("pneumonia"), codes.PRESENT),
    ),
    "code with a long value": (
        lambda: CodeContentItem(name=LONG_CODE, value=codes.ABSENT, relationship_type=CONTAINS),
        lambda w: w.code(CONTAINS, LONG_CODE, codes.ABSENT),
    ),
    "text": (
        lambda: TextContentItem(name=codes.COMMENT, value="Hôpital Ünïcode", relationship_type=PROPS),
        lambda w: w.text(PROPS, codes.COMMENT, "Hôpital Ünïcode"),
    ),
    "odd-length text": (
        lambda: TextContentItem(name=codes.COMMENT, value="abc", relationship_type=PROPS),
        lambda w: w.text(PROPS, codes.COMMENT, "abc"),
    ),
    "uidref": (
        lambda: UIDRefContentItem(name=dcm.DCM.DeviceObserverUID, value=SOP_INSTANCE, relationship_type=PROPS),
        lambda w: w.uidref(PROPS, dcm.DCM.DeviceObserverUID, SOP_INSTANCE),
    ),
    "num float": (
        lambda: NumContentItem(name=codes.PROBABILITY, value=0.021131396293640137, unit=codes.PROBABILITY_UNIT, relationship_type=PROPS),
        lambda w: w.num(PROPS, codes.PROBABILITY, 0.021131396293640137, codes.PROBABILITY_UNIT),
    ),
    "num int": (
        lambda: NumContentItem(name=dcm.DCM.PixelDataRows, value=2048, unit=Code("{pixels}", "UCUM", "Pixels"), relationship_type=PROPS),
        lambda w: w.num(PROPS, dcm.DCM.PixelDataRows, 2048, Code("{pixels}", "UCUM", "Pixels")),
    ),
    "image with children": (
        lambda: _with_children(
            ImageContentItem(name=codes.BEST_ILLUSTRATION_OF_FINDING, referenced_sop_class_uid=SOP_CLASS,
                             referenced_sop_instance_uid=SOP_INSTANCE, relationship_type=CONTAINS),
            [TextContentItem(name=codes.COMMENT, value="x", relationship_type=PROPS)],
        ),
        lambda w: w.image(CONTAINS, codes.BEST_ILLUSTRATION_OF_FINDING, SOP_CLASS, SOP_INSTANCE,
                          [w.text(PROPS, codes.COMMENT, "x")]),
    ),
    "container with template": (
        lambda: _with_children(
            ContainerContentItem(name=dcm.DCM.MeasurementGroup, template_id="1501", relationship_type=CONTAINS),
            [CodeContentItem(name=codes.label_to_code("effusion"), value=codes.ABSENT, relationship_type=CONTAINS)],
        ),
        lambda w: w.container(CONTAINS, dcm.DCM.MeasurementGroup,
                              [w.code(CONTAINS, codes.label_to_code("effusion"), codes.ABSENT)], template="1501"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("charset", [None, "ISO_IR 192"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_items_encode_as_highdicom_and_pydicom_do(case: str, charset: str | None) -> None:
    reference, ours = CASES[case]
    assert _writer_bytes(ours(ContentWriter(charset)), charset) == _highdicom_bytes(reference(), charset)


def test_text_outside_latin1_in_utf8() -> None:
    text = "肺炎 ❤"
    reference = TextContentItem(name=codes.COMMENT, value=text, relationship_type=PROPS)
    ours = ContentWriter("ISO_IR 192").text(PROPS, codes.COMMENT, text)
    assert _writer_bytes(ours, "ISO_IR 192") == _highdicom_bytes(reference, "ISO_IR 192")


def test_code_meaning_outside_ascii_is_in_the_documents_character_set() -> None:
    """A label's meaning is any text: its code is encoded in the document's charset, not Latin-1."""
    label = Code("ÉPANCHEMENT", "99DCMNODE", "Épanchement pleural")
    for charset in (None, "ISO_IR 192"):
        reference = CodeContentItem(name=label, value=codes.PRESENT, relationship_type=CONTAINS)
        ours = ContentWriter(charset).code(CONTAINS, label, codes.PRESENT)
        assert _writer_bytes(ours, charset) == _highdicom_bytes(reference, charset)


def test_encoded_tree_reads_back_with_pydicom() -> None:
    writer = ContentWriter(None)
    item = writer.image(CONTAINS, dcm.DCM.SourceOfMeasurement, SOP_CLASS, SOP_INSTANCE)
    back = dcmread(io.BytesIO(_writer_bytes(item, None)), force=True)
    (read,) = back.ContentSequence
    assert read.ValueType == "IMAGE"
    assert read.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == SOP_INSTANCE
    assert writer.referenced == [SOP_INSTANCE]


@pytest.mark.parametrize(
    "write",
    [
        lambda w: w.uidref(PROPS, dcm.DCM.DeviceObserverUID, "1.2.not-a-uid"),
        lambda w: w.code(CONTAINS, Code("x", "DCM", "m" * 65), codes.PRESENT),  # LO holds 64 characters
        lambda w: w.code("NOT A RELATIONSHIP TYPE OF SIXTEEN+", codes.COMMENT, codes.PRESENT),
        lambda w: w.num(PROPS, codes.PROBABILITY, "0.5", codes.PROBABILITY_UNIT),
    ],
)
def test_values_that_do_not_fit_their_vr_are_refused(write: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        write(ContentWriter(None))  # type: ignore[operator]


def test_document_check_without_parsing_agrees_with_the_full_walk(
    cxr_dataset: Dataset, output_settings: OutputSettings, identity: ModelIdentity
) -> None:
    prediction = Prediction(labels=("pneumonia",), probabilities=(0.7,), thresholds=(0.5,))
    sr = build_findings_sr(
        [ImageFindings(cxr_dataset, prediction)], series_instance_uid="1.2.826.0.1.3680043.8.498.2",
        series_number=9902, settings=output_settings, identity=identity,
    )  # fmt: skip
    fast = validate_result(sr, encoded_content=True)
    assert sr.get_item(0x0040A730).is_raw  # the tree was not parsed
    assert validate_result(sr) == fast  # the full walk parses it and finds nothing either
