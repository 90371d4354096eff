"""Sources in ISO 2022 (empty first value) or unknown character sets still give results."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomnode.config import OutputSettings
from dicomnode.domain import ModelIdentity, Prediction
from dicomnode.outputs.charset import UTF8, with_writable_charset
from dicomnode.outputs.sc import build_heatmap_sc
from dicomnode.outputs.sr import ImageFindings, build_findings_sr
from tests.helpers import make_cxr_dataset

IDENTITY = ModelIdentity("default", "1.0.0", "efficientnet_lite0", "0" * 64)


def _received(charset: str | list[str], name: str) -> Dataset:
    ds = make_cxr_dataset()
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def _round_trip(ds: Dataset) -> Dataset:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동"),
    ],
)
def test_iso2022_sources_give_utf8_results_with_the_same_names(charset: list[str], name: str) -> None:
    source = _received(charset, name)
    sc = build_heatmap_sc(source, np.zeros((64, 64, 3), np.uint8), series_instance_uid="1.2.3.1",
                          series_number=1, instance_number=1, settings=OutputSettings(), identity=IDENTITY)
    sr = build_findings_sr([ImageFindings(source, Prediction(("pneumonia",), (0.7,), (0.5,)), {0: sc})],
                           series_instance_uid="1.2.3.2", series_number=2, settings=OutputSettings(), identity=IDENTITY)
    for result in (_round_trip(sc), _round_trip(sr)):
        assert result.SpecificCharacterSet == UTF8
        assert str(result.PatientName) == name


def test_unknown_term_is_replaced_and_known_sets_are_kept() -> None:
    unknown = _received("ISO_IR 999", "Doe^Jane")
    assert with_writable_charset(unknown).SpecificCharacterSet == UTF8
    latin1 = _received("ISO_IR 100", "Müller^François")
    assert with_writable_charset(latin1) is latin1
    plain = make_cxr_dataset()
    assert with_writable_charset(plain) is plain
