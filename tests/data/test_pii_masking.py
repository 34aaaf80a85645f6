"""Masking modes: placeholders, keyed pseudonyms, redaction; the cleaning step's counts."""

import hashlib
import hmac
import re

import pytest

from lmforge.data.document import Document
from lmforge.data.pii import canonical_value, mask_pii
from lmforge.data.steps.pii import PII_TYPES, PLACEHOLDERS, PiiMasker
from lmforge.errors import ConfigError

KEY = b"test-key-kept-out-of-the-data"


def pseudonyms(text: str, key: bytes | str = KEY) -> list[str]:
    return re.findall(r"\[[A-Z_]+_[0-9a-f]{8}\]", mask_pii(text, mode="pseudonym", key=key)[0])


def test_placeholder_mode_keeps_the_url_readable():
    text = "login via https://x.com/cb?token=abc123XYZ&page=2 or mail a@b.co"
    assert mask_pii(text) == (
        "login via https://x.com/cb?token=[URL_SECRET]&page=2 or mail [EMAIL]",
        {"URL_SECRET": 1, "EMAIL": 1},
    )


def test_pseudonym_is_the_keyed_digest_of_type_and_canonical_value():
    masked, counts = mask_pii("call 138-1234-5678", mode="pseudonym", key=KEY)
    digest = hmac.new(KEY, b"PHONE\x0013812345678", hashlib.sha256).hexdigest()[:8]
    assert masked == f"call [PHONE_{digest}]"
    assert counts == {"PHONE": 1}


def test_pseudonyms_are_consistent_across_spellings_and_documents():
    one = pseudonyms("13812345678 / 138 1234 5678 / +86 138-1234-5678 / (+86)13812345678")
    assert len(one) == 4 and len(set(one)) == 1
    assert pseudonyms("客服回拨了13812345678") == one[:1]  # another document, same token
    landline = pseudonyms("010-62345678 and +86 10 6234 5678 and (010)62345678")
    assert len(set(landline)) == 1
    mails = pseudonyms("Zhang.San@QQ.com zhang.san@qq.com")
    assert len(set(mails)) == 1


def test_different_values_types_and_keys_give_different_pseudonyms():
    tokens = pseudonyms("13812345678 13812345679 a@b.co b@b.co 192.168.1.1 192.168.1.2")
    assert len(set(tokens)) == 6
    assert pseudonyms("13812345678", key="other key") != pseudonyms("13812345678")


def test_canonical_values():
    assert canonical_value("PHONE", "+44 20 7946 0958") == "+442079460958"
    assert canonical_value("PHONE", "0086 138 1234 5678") == "13812345678"
    assert canonical_value("BANK_CARD", "6222-0212-3456-7890") == "6222021234567890"
    assert canonical_value("ID_CN", "110101 19900307 123x") == "11010119900307123X"
    assert canonical_value("IP", "2001:0db8:0000:0000:0000:0000:0000:0001") == "2001:db8::1"
    assert canonical_value("EMAIL", "A@B.CO") == "a@b.co"


@pytest.mark.parametrize("key", [None, "", b""])
def test_pseudonym_mode_requires_a_key(key):
    with pytest.raises(ConfigError, match="needs a secret key: pass key="):
        mask_pii("13812345678", mode="pseudonym", key=key)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "hash"}, "unknown PII mode 'hash'; use one of placeholder, pseudonym, redact"),
        ({"mode": "pseudonym", "key": 42}, "PII key must be bytes or str, got int"),
    ],
)
def test_bad_mode_or_key_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError) as err:
        mask_pii("13812345678", **kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call 13812345678 now", "call now"),
        ("13812345678 call me", "call me"),
        ("call me at 13812345678", "call me at"),
        ("电话13812345678联系", "电话联系"),
        ("a 13812345678 13912345678 b", "a b"),
        ("db postgres://admin:pw@db.example.com/app", "db postgres://db.example.com/app"),
        ("https://x.com/cb?token=abc&page=2", "https://x.com/cb?token=&page=2"),
        ("line 13812345678\nnext", "line\nnext"),
    ],
)
def test_redact_removes_values_without_a_type_hint(text, expected):
    masked, counts = mask_pii(text, mode="redact")
    assert masked == expected
    assert sum(counts.values()) >= 1


def test_masking_masked_text_changes_nothing():
    text = "护照号 E12345678, 10.0.0.1, a@b.co, https://x.com/?sig=abc1234, 13812345678"
    for mode in ("placeholder", "pseudonym"):
        once, _ = mask_pii(text, mode=mode, key=KEY)
        assert mask_pii(once, mode=mode, key=KEY) == (once, {})
    # The hex of a pseudonym after a passport cue is not a passport number.
    assert mask_pii("passport [PASSPORT_12345678]") == ("passport [PASSPORT_12345678]", {})


def test_step_counts_types_and_documents_and_applies_its_mode():
    step = PiiMasker(mode="pseudonym", key=KEY, types=["PHONE", "NAME"], name_finder=lambda t: [])
    docs = [
        Document(id="1", text="13812345678 or 138 1234 5678, a@b.co", source="s"),
        Document(id="2", text="nothing here", source="s"),
    ]
    for doc in docs:
        step.transform(doc)
    assert docs[0].text.count("[PHONE_") == 2 and "a@b.co" in docs[0].text
    assert docs[0].raw_text == "13812345678 or 138 1234 5678, a@b.co"
    assert docs[1].original_text is None
    assert step.stats.events == {"PHONE": 2, "docs_masked": 1}


def test_step_rejects_a_bad_configuration_when_built():
    with pytest.raises(ConfigError, match="pseudonym"):
        PiiMasker(mode="pseudonym")


def test_old_names_stay_importable():
    assert PLACEHOLDERS == PII_TYPES
    assert PII_TYPES == (
        "EMAIL",
        "PHONE",
        "ID_CN",
        "BANK_CARD",
        "IP",
        "URL_SECRET",
        "PASSPORT",
        "NAME",
    )
