"""Character sets of source datasets, made safe for the result builders.

highdicom writes only the Specific Character Set terms it knows and refuses an
empty first value (``["", "ISO 2022 IR 87"]``, the usual Japanese/Korean form) and
unknown terms. Results copy patient and study text from the source, so such a
source is turned into a decoded copy whose text is written as UTF-8 (ISO_IR 192),
which represents every character pydicom could decode.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

UTF8 = "ISO_IR 192"


def _known_terms() -> frozenset[str]:
    from highdicom.enum import SpecificCharacterSetValues

    return frozenset(value.value for value in SpecificCharacterSetValues)


def with_writable_charset(source: Dataset) -> Dataset:
    """``source`` itself when highdicom accepts its character set, else a UTF-8 copy.

    Args:
        source: a received dataset (pixel data may be absent).

    Returns:
        a dataset whose ``SpecificCharacterSet`` is absent or made of known terms.
    """
    if "SpecificCharacterSet" not in source:
        return source
    value = source.SpecificCharacterSet
    terms = [value] if isinstance(value, str) else list(value)
    known = _known_terms()
    if terms and all(term in known for term in terms):
        return source
    copy = source.copy()
    copy.decode()  # every text value to str, using the source's own character set
    copy.SpecificCharacterSet = UTF8
    return copy
