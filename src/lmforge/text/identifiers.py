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


def cn_id_birth_date(value: str) -> _dt.date | None:
    """The birth date written at positions 7-14 of an 18-character resident ID, if it is a
    real date between 1900 and today (the check character is not looked at)."""
    if len(value) != 18 or not value[6:14].isdigit():
        return None
    try:
        born = _dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return None
    return born if _dt.date(1900, 1, 1) <= born <= _dt.date.today() else None


def cn_id_valid(value: str) -> bool:
    """18 characters, a real birth date (YYYYMMDD at 7-14), and the ISO 7064 check char."""
    value = value.upper()
    if (
        len(value) != 18
        or not value[:17].isdigit()
        or not (value[17].isdigit() or value[17] == "X")
    ):
        return False
    if cn_id_birth_date(value) is None:
        return False
    return cn_id_check_char(value[:17]) == value[17]


def card_prefix_valid(number: str) -> bool:
    """Whether a digit string starts like a payment card of its length (issuer prefix).

    Luhn alone passes one random digit run in ten; order and tracking numbers of card length
    are common, so the length must also fit a card network: Visa 4 (16 or 19), Mastercard
    51-55 and 2221-2720 (16), Amex 34/37 (15), Diners 30/36/38/39 (14 or 16), JCB
    3528-3589 (16-19), Maestro 50/56-58 and UnionPay and other 6 prefixes (16-19).
    """
    n = len(number)
    if n < 14 or n > 19 or not number.isdigit():
        return False
    two, four = int(number[:2]), int(number[:4])
    if number[0] == "4":
        return n in (16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16
    if two in (34, 37):
        return n == 15
    if two in (30, 36, 38, 39):
        return n in (14, 16)
    if 3528 <= four <= 3589:
        return True
    return (number[0] == "6" or two in (50, 56, 57, 58)) and n >= 16
