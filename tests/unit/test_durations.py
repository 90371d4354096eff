"""The one duration parser of results --since, purge --older-than and store.retention."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dicomnode.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("0s", timedelta(0)), ("15m", timedelta(minutes=15)),
     ("2w", timedelta(weeks=2)), (" 24H ", timedelta(hours=24)), ("1.5h", timedelta(minutes=90))],
)  # fmt: skip
def test_parses_number_and_unit(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "-1d", "3 days", "1y", "12h30m"])
def test_bad_value_is_named_in_one_line(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as caught:
        parse_duration(text)
    assert repr(text) in str(caught.value) and "\n" not in str(caught.value)
