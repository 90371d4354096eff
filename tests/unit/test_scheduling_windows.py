"""Batch windows: off-peak batches, including windows that wrap past midnight."""

from __future__ import annotations

from datetime import time

import pytest

from dicomnode.scheduling import in_windows


@pytest.mark.parametrize(
    ("windows", "moment", "expected"),
    [
        ([], time(12, 0), True),
        (["08:00-17:00"], time(12, 0), True),
        (["08:00-17:00"], time(17, 0), False),
        (["22:00-06:00"], time(23, 30), True),
        (["22:00-06:00"], time(5, 59), True),
        (["22:00-06:00"], time(6, 0), False),
        (["01:00-02:00", "12:00-13:00"], time(12, 30), True),
    ],
)
def test_in_windows(windows: list[str], moment: time, expected: bool) -> None:
    assert in_windows(windows, moment) is expected
