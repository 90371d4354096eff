"""Intended population: DICOM Age Strings and ViewPosition against the manifest (header only)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dicomnode.domain import PopulationStatus
from dicomnode.inference.manifest import IntendedPopulation
from dicomnode.inference.population import check_population, parse_age_years

PEDIATRIC = IntendedPopulation(description="pediatric", min_age_years=1, max_age_years=5, view_positions=("AP", "PA"))


@pytest.mark.parametrize(
    ("text", "years"),
    [("045Y", 45.0), ("011M", 11 / 12), ("003W", 21 / 365.25), ("010D", 10 / 365.25), ("000Y", 0.0)],
)
def test_parse_age_years(text: str, years: float) -> None:
    assert parse_age_years(text) == pytest.approx(years, rel=1e-3)


@pytest.mark.parametrize("text", [None, "", "45Y", "045", "045X", "abcY"])
def test_invalid_age_is_unknown(text: str | None) -> None:
    assert parse_age_years(text) is None


def _header(**values: str) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_within_outside_unknown() -> None:
    assert check_population(_header(PatientAge="004Y", ViewPosition="AP"), PEDIATRIC).status == PopulationStatus.WITHIN
    outside = check_population(_header(PatientAge="045Y", ViewPosition="LL"), PEDIATRIC)
    assert outside.status == PopulationStatus.OUTSIDE
    assert outside.detail == "age 45 years outside intended 1-5 years; view LL not in intended AP/PA"
    infant = check_population(_header(PatientAge="011M", ViewPosition="PA"), PEDIATRIC)
    assert infant.status == PopulationStatus.OUTSIDE and infant.detail.startswith("age 0.92 years outside")
    unknown = check_population(_header(), PEDIATRIC)
    assert unknown.status == PopulationStatus.UNKNOWN  # missing is unknown, never outside
    assert unknown.detail == "patient age unknown; view position unknown"
    assert check_population(_header(PatientAge="090Y"), IntendedPopulation()).status == PopulationStatus.WITHIN
