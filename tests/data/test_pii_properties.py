"""Property tests: check-digit validators, and masking of identifiers planted in random text."""

import datetime as dt
import ipaddress
import re

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lmforge.data.pii import mask_pii
from lmforge.text.identifiers import (
    card_prefix_valid,
    cn_id_birth_date,
    cn_id_check_char,
    cn_id_valid,
    luhn_check_digit,
    luhn_valid,
)

FAST = settings(max_examples=200, deadline=None)
PLANTED = settings(max_examples=100, deadline=None)  # texts with identifiers cost more to draw
KEY = b"property-test-key"


def digits(n: int, first: str = "0123456789") -> st.SearchStrategy[str]:
    """`n` digits, the first one from `first`."""
    rest = st.text(alphabet="0123456789", min_size=n - 1, max_size=n - 1)
    return st.builds(lambda a, b: a + b, st.sampled_from(first), rest)


mobile_numbers = st.builds(lambda a, b: "1" + a + b, st.sampled_from("3456789"), digits(9))


# --- validators -----------------------------------------------------------------------------


@FAST
@given(partial=st.text(alphabet="0123456789", min_size=11, max_size=18), data=st.data())
def test_luhn_numbers_pass_and_any_single_digit_change_fails(partial, data):
    number = partial + luhn_check_digit(partial)
    assert luhn_valid(number)
    i = data.draw(st.integers(0, len(number) - 1))
    new = data.draw(st.sampled_from([d for d in "0123456789" if d != number[i]]))
    assert not luhn_valid(number[:i] + new + number[i + 1 :])


born_dates = st.dates(dt.date(1900, 1, 1), dt.date.today())


@FAST
@given(region=digits(6, "12345678"), born=born_dates, seq=digits(3), data=st.data())
def test_resident_ids_pass_and_a_changed_digit_fails(region, born, seq, data):
    first17 = region + born.strftime("%Y%m%d") + seq
    value = first17 + cn_id_check_char(first17)
    assert cn_id_valid(value) and cn_id_valid(value.lower())
    i = data.draw(st.integers(0, 17))
    choices = "0123456789X" if i == 17 else "0123456789"
    new = data.draw(st.sampled_from([c for c in choices if c != value[i]]))
    assert not cn_id_valid(value[:i] + new + value[i + 1 :])


@FAST
@given(
    region=digits(6, "12345678"),
    date=st.one_of(
        st.tuples(st.integers(1900, 2020), st.integers(13, 99), st.integers(1, 28)),  # month
        st.tuples(st.integers(1900, 2020), st.integers(1, 12), st.integers(32, 99)),  # day
        st.tuples(st.integers(1900, 2020).filter(lambda y: y % 4), st.just(2), st.just(29)),
        st.tuples(st.integers(1000, 1899), st.integers(1, 12), st.integers(1, 28)),  # too old
        st.tuples(st.integers(dt.date.today().year + 1, 9999), st.just(1), st.just(1)),
    ),
    seq=digits(3),
)
def test_resident_ids_with_impossible_birth_dates_fail(region, date, seq):
    year, month, day = date
    first17 = f"{region}{year:04d}{month:02d}{day:02d}{seq}"
    assert not cn_id_valid(first17 + cn_id_check_char(first17))


# --- identifiers planted in random text ---------------------------------------------------------
# Surrounding text: CJK, a few lowercase letters, short digit runs glued after a letter,
# punctuation. It holds no identifier by construction (no '@' or ':', no digit run a
# detector could use) and no cue word ("订单号", "version", "passport").
CJK = (
    "的一是了我不人在他有这中大来上个国到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可"
)
LETTERS = "bghjkmnqwxyz"
PUNCT = " ，。！？、…—·《》\n"
word = st.builds(
    lambda head, tail: head + tail,
    st.text(alphabet=CJK + LETTERS, min_size=1, max_size=6),
    st.text(alphabet="0123456789", max_size=4),
)
free_text = st.lists(st.one_of(word, st.text(alphabet=PUNCT, min_size=1, max_size=2)), max_size=8)
free_text = free_text.map("".join)
SEPARATORS = ["，", "。", "；", "电话", " at ", "（", "\n"]


@st.composite
def phones(draw):
    kind = draw(st.sampled_from(["mobile", "landline", "e164"]))
    if kind == "mobile":
        number = draw(mobile_numbers)
        style = draw(st.sampled_from(["{}", "{}-{}-{}", "{} {} {}", "+86 {}", "(+86){}"]))
        parts = (number[:3], number[3:7], number[7:]) if style.count("{}") == 3 else (number,)
        return style.format(*parts)
    if kind == "landline":
        area = draw(st.sampled_from(["010", "021", "027", "0755", "0571", "0898"]))
        local = draw(digits(8 if len(area) == 3 else draw(st.sampled_from([7, 8])), "23456789"))
        return draw(st.sampled_from([f"{area}-{local}", f"({area}){local}", f"{area} {local}"]))
    country = draw(st.sampled_from(["1", "44", "49", "81", "852"]))
    groups = draw(st.lists(digits(draw(st.integers(3, 4))), min_size=2, max_size=3))  # 7-15 in all
    return "+" + country + " " + " ".join(groups)


@st.composite
def cards(draw):
    prefix, length = draw(st.sampled_from([("62", 16), ("62", 19), ("4", 16), ("51", 16)]))
    partial = prefix + draw(digits(length - len(prefix) - 1))
    number = partial + luhn_check_digit(partial)
    assert card_prefix_valid(number)
    if draw(st.booleans()):
        return number
    return draw(st.sampled_from([" ", "-"])).join(number[i : i + 4] for i in range(0, length, 4))


@st.composite
def cn_ids(draw):
    first17 = draw(digits(6, "12345678")) + draw(born_dates).strftime("%Y%m%d") + draw(digits(3))
    value = first17 + cn_id_check_char(first17)
    return value if draw(st.booleans()) else f"{value[:6]} {value[6:14]} {value[14:]}"


label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
users = st.builds(
    lambda a, b, c: a + b + c, label, st.sampled_from(["", ".", "_", "+", "-"]), label
)
emails = st.builds(
    lambda user, domain, tld: f"{user}@{domain}.{tld}",
    users,
    label,
    st.sampled_from(["com", "cn", "org", "co.uk", "com.cn", "io"]),
)
# Global unicast with a non-zero interface part: "2000::" alone is too little to be masked.
global_ipv6 = st.builds(
    lambda network, host: str(ipaddress.IPv6Address(network << 64 | host)),
    st.integers(0x2000 << 48, (0x4000 << 48) - 1),
    st.integers(1, 2**64 - 1),
)
ips = st.one_of(st.ip_addresses(v=4).map(str), global_ipv6)
passports = st.one_of(
    digits(8).map(lambda d: "E" + d),
    digits(7).map(lambda d: "EA" + d),
    digits(8).map(lambda d: "G" + d),
)
secret_values = st.text(alphabet="ABCXYZabcxyz0123456789_-.", min_size=1, max_size=24).filter(
    lambda v: v.rstrip(".:!") == v and v.strip("=")
)


@st.composite
def planted(draw):
    """(text as planted, [(start, end)] of the secret parts, type)."""
    kind = draw(
        st.sampled_from(["PHONE", "BANK_CARD", "ID_CN", "EMAIL", "IP", "PASSPORT", "URL_SECRET"])
    )
    if kind == "URL_SECRET":
        name = draw(st.sampled_from(["token", "access_token", "api_key", "sig", "code"]))
        head = f"https://x.example.com/cb?page=2&{name}="
        value = draw(secret_values)
        return head + value + "&lang=zh", [(len(head), len(head) + len(value))], kind
    maker = {
        "PHONE": phones(),
        "BANK_CARD": cards(),
        "ID_CN": cn_ids(),
        "EMAIL": emails,
        "IP": ips,
        "PASSPORT": passports,
    }[kind]
    value = draw(maker)
    if kind == "BANK_CARD":  # 18 digits with a birth date would be read as a mistyped ID
        assume(cn_id_birth_date(re.sub(r"\D", "", value)) is None)
    return value, [(0, len(value))], kind


def masked_form(value: str, secrets: list[tuple[int, int]], token: str) -> str:
    (start, end), *_ = secrets
    return value[:start] + token + value[end:]


@PLANTED
@given(before=free_text, after=free_text, sep=st.sampled_from(SEPARATORS), item=planted())
def test_a_planted_identifier_is_masked_and_the_text_around_it_kept(before, after, sep, item):
    value, secrets, kind = item
    prefix, suffix = before + sep, sep + after
    masked, counts = mask_pii(prefix + value + suffix)
    assert masked == prefix + masked_form(value, secrets, f"[{kind}]") + suffix
    assert counts == {kind: 1}


@PLANTED
@given(before=free_text, after=free_text, sep=st.sampled_from(SEPARATORS), item=planted())
def test_redaction_removes_the_identifier_and_only_spaces_besides(before, after, sep, item):
    value, secrets, _ = item
    text = before + sep + value + sep + after
    masked, _ = mask_pii(text, mode="redact")
    expected = before + sep + masked_form(value, secrets, "") + sep + after
    assert masked.replace(" ", "") == expected.replace(" ", "")


@FAST
@given(text=free_text)
def test_text_without_identifiers_is_returned_unchanged(text):
    for mode in ("placeholder", "pseudonym", "redact"):
        assert mask_pii(text, mode=mode, key=KEY) == (text, {})


@FAST
@given(text=st.text())
def test_arbitrary_unicode_without_ascii_alnum_is_unchanged(text):
    text = re.sub(r"[0-9A-Za-z@:]", "", text)
    assert mask_pii(text) == (text, {})


@PLANTED
@given(
    before=free_text,
    items=st.lists(planted(), min_size=1, max_size=3),
    mode=st.sampled_from(["placeholder", "pseudonym"]),
)
def test_masking_is_idempotent(before, items, mode):
    text = before + "，".join(value for value, _, _ in items)
    once, _ = mask_pii(text, mode=mode, key=KEY)
    assert mask_pii(once, mode=mode, key=KEY) == (once, {})


@FAST
@given(a=mobile_numbers, b=mobile_numbers, before=free_text)
def test_pseudonyms_are_consistent_and_distinct(a, b, before):
    assume(a != b)
    grouped = f"{a[:3]} {a[3:7]} {a[7:]}"
    text = f"{before}，{a}，{b}，+86 {grouped}，{a}"
    tokens = re.findall(r"\[PHONE_[0-9a-f]{8}\]", mask_pii(text, mode="pseudonym", key=KEY)[0])
    assert len(tokens) == 4
    assert tokens[0] == tokens[2] == tokens[3] != tokens[1]
