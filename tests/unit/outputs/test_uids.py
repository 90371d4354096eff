"""UID generation: 2.25 form, uniqueness, determinism."""

from __future__ import annotations

import re

import pytest

from dicomnode.outputs.uids import derived_uid, new_uid

UID_RE = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


def test_new_uid_is_valid_and_unique() -> None:
    uids = {new_uid() for _ in range(200)}
    assert len(uids) == 200
    for uid in uids:
        assert UID_RE.match(uid), uid
        assert len(uid) <= 64


def test_derived_uid_is_deterministic_and_valid() -> None:
    first = derived_uid("heatmap-sc", "1.2.3", "4.5.6")
    assert first == derived_uid("heatmap-sc", "1.2.3", "4.5.6")
    assert UID_RE.match(first)
    assert len(first) <= 64


def test_derived_uid_depends_on_every_part_and_their_boundaries() -> None:
    base = derived_uid("a", "bc")
    assert base != derived_uid("ab", "c")
    assert base != derived_uid("a", "bd")
    assert base != derived_uid("bc", "a")
    assert derived_uid("x") != derived_uid("y")


@pytest.mark.parametrize("parts", [(), ("",), ("a", "")])
def test_derived_uid_rejects_empty_input(parts: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        derived_uid(*parts)
