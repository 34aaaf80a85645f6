"""Check digits of structured identifiers: bank cards (Luhn) and Chinese resident IDs.

Used both to plant valid identifiers in the demo corpus and to confirm a regex match before
masking it, so that random digit runs (order numbers, prices) are not masked as PII.
"""

from __future__ import annotations

import datetime as _dt

_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_ID_CHECK = "10X98765432"


def luhn_check_digit(partial: str) -> str:
    """The digit that makes `partial + digit` pass the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:  # these positions are doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    digits = "".join(ch for ch in number if ch.isdigit())
    if len(digits) < 12 or len(digits) > 19:
        return False
    return luhn_check_digit(digits[:-1]) == digits[-1]


def cn_id_check_char(first17: str) -> str:
    """Check character (0-9 or X) of an 18-character Chinese resident identity number."""
    total = sum(int(d) * w for d, w in zip(first17[:17], _CN_ID_WEIGHTS, strict=True))
    return _CN_ID_CHECK[total % 11]


def cn_id_valid(value: str) -> bool:
    """18 characters, a real birth date (YYYYMMDD at 7-14), and the ISO 7064 check char."""
    value = value.upper()
    if (
        len(value) != 18
        or not value[:17].isdigit()
        or not (value[17].isdigit() or value[17] == "X")
    ):
        return False
    try:
        born = _dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    if not (_dt.date(1900, 1, 1) <= born <= _dt.date.today()):
        return False
    return cn_id_check_char(value[:17]) == value[17]
