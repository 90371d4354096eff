"""The package's one UID validator (dicomnode/uid.py), and that it is the only one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicomnode.uid import is_valid_uid

PACKAGE = Path(__file__).resolve().parents[2] / "dicomnode"


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("1.2.840.10008.5.1.4.1.1.1", True),
        (generate_uid(), True),
        ("0", True),
        ("1.2.3\n", False),
        ("\n1.2.3", False),
        ("1.2.03", False),
        ("1..2", False),
        ("1.2.", False),
        ("../../etc/passwd", False),
        ("1." + "1" * 63, False),
        ("", False),
        (None, False),
        (b"1.2.3", False),
        (["1.2", "1.3"], False),
    ],
)
def test_is_valid_uid(value: object, valid: bool) -> None:
    assert is_valid_uid(value) is valid


def test_no_other_uid_pattern_in_the_package() -> None:
    """Receiving and outputs share dicomnode.uid.is_valid_uid; nobody keeps a private copy
    (outputs/validate.py once had ``^...$`` with ``re.match``, letting "1.2.3\\n" through)."""
    pattern = re.compile(r"\[1-9\]\[0-9\]\*")
    copies = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "uid.py" and pattern.search(path.read_text())
    ]
    assert copies == []
