"""Compare an image's header with the model's intended population (age, view).

Header only, no pixels. A missing or unreadable PatientAge or ViewPosition makes the
answer UNKNOWN, never OUTSIDE: many senders blank these attributes, and an image is
only called outside the population on positive evidence.
"""

from __future__ import annotations

import re

from pydicom.dataset import Dataset

from dicomnode.domain import PopulationCheck, PopulationStatus
from dicomnode.inference.manifest import IntendedPopulation

__all__ = ["check_population", "parse_age_years"]

# PS3.5 AS: nnnD, nnnW, nnnM or nnnY.
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12.0, "Y": 365.25}


def parse_age_years(value: object) -> float | None:
    """A DICOM Age String in years: ``"045Y"`` -> 45.0, ``"011M"`` -> 0.92, ``"010D"`` -> 0.03.

    Returns:
        the age in years, or None when the value is absent or not a valid AS.
    """
    if value is None:
        return None
    match = _AGE.match(str(value).strip().upper())
    if match is None:
        return None
    number, unit = int(match.group(1)), match.group(2)
    if unit == "Y":
        return float(number)
    return number * _DAYS_PER[unit] / _DAYS_PER["Y"]


def _fmt_years(years: float) -> str:
    return f"{years:g}" if years >= 1 or years == 0 else f"{years:.2f}"


def _range_text(population: IntendedPopulation) -> str:
    low, high = population.min_age_years, population.max_age_years
    if low is not None and high is not None:
        return f"{_fmt_years(low)}-{_fmt_years(high)} years"
    if low is not None:
        return f">= {_fmt_years(low)} years"
    return f"<= {_fmt_years(high or 0.0)} years"


def check_population(header: Dataset, population: IntendedPopulation) -> PopulationCheck:
    """Is this image inside the population the model was trained for?

    Args:
        header: the image's header (PatientAge, ViewPosition are read; nothing else).
        population: the manifest's intended population; no bounds and no views = anyone.

    Returns:
        OUTSIDE with every reason joined by "; " (e.g. ``"age 45 years outside intended
        1-5 years; view LL not in intended AP/PA"``), else UNKNOWN when an attribute
        that is constrained is missing (detail says which), else WITHIN.
    """
    outside: list[str] = []
    unknown: list[str] = []
    if population.min_age_years is not None or population.max_age_years is not None:
        raw = header.get("PatientAge")
        age = parse_age_years(raw)
        if age is None:
            unknown.append("patient age unknown")
        elif (population.min_age_years is not None and age < population.min_age_years) or (
            population.max_age_years is not None and age > population.max_age_years
        ):
            outside.append(f"age {_fmt_years(age)} years outside intended {_range_text(population)}")
    if population.view_positions:
        view = str(header.get("ViewPosition") or "").strip().upper()
        wanted = tuple(v.upper() for v in population.view_positions)
        if not view:
            unknown.append("view position unknown")
        elif view not in wanted:
            safe = "".join(ch if ch.isalnum() else "?" for ch in view[:16])
            outside.append(f"view {safe} not in intended {'/'.join(wanted)}")
    if outside:
        return PopulationCheck(PopulationStatus.OUTSIDE, "; ".join(outside))
    if unknown:
        return PopulationCheck(PopulationStatus.UNKNOWN, "; ".join(unknown))
    return PopulationCheck(PopulationStatus.WITHIN)
