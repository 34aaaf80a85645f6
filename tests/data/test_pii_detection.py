"""Span detection: what each detector finds, what it must leave, overlaps, plug-in names."""

import time

import pytest

from lmforge.data.pii import PII_TYPES, PiiSpan, detect_pii
from lmforge.errors import ConfigError
from lmforge.text.identifiers import cn_id_check_char, luhn_check_digit

CARD = "622202123456789" + luhn_check_digit("622202123456789")
CN_ID = "11010119900307123" + cn_id_check_char("11010119900307123")
GROUPED_ID = f"{CN_ID[:6]} {CN_ID[6:14]} {CN_ID[14:]}"
ALL_TYPES = ", ".join(PII_TYPES)


def found(text: str, **kwargs) -> list[tuple[str, str]]:
    return [(text[s.start : s.end], s.type) for s in detect_pii(text, **kwargs)]


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        ("电话13812345678联系", "13812345678", "PHONE"),
        ("手机+86 138 1234 5678。", "+86 138 1234 5678", "PHONE"),
        ("(+86)13812345678", "(+86)13812345678", "PHONE"),
        ("0086-13812345678 call", "0086-13812345678", "PHONE"),
        ("座机（0755）2345678转", "（0755）2345678", "PHONE"),
        ("tel 010 6552 9988.", "010 6552 9988", "PHONE"),
        ("拨打02168881234找我", "02168881234", "PHONE"),
        ("call +1 (415) 555-0132 now", "+1 (415) 555-0132", "PHONE"),
        ("UK +44 20 7946 0958 2026", "+44 20 7946 0958", "PHONE"),
        (
            f"证件{CN_ID[:6]} {CN_ID[6:14]} {CN_ID[14:]}号",
            f"{CN_ID[:6]} {CN_ID[6:14]} {CN_ID[14:]}",
            "ID_CN",
        ),
        (f"卡号{CARD}。", CARD, "BANK_CARD"),
        ("Amex 3782 822463 10005 ok", "3782 822463 10005", "BANK_CARD"),
        ("护照号码：E12345678", "E12345678", "PASSPORT"),
        ("新版护照EA1234567已领", "EA1234567", "PASSPORT"),
        ("my passport no. 533380006 expires", "533380006", "PASSPORT"),
        ("Passport: C01X00T47", "C01X00T47", "PASSPORT"),
        ("IP是192.168.1.20，端口8080", "192.168.1.20", "IP"),
        ("connect to [2001:db8::1]:443", "2001:db8::1", "IP"),
        ("from ::ffff:192.0.2.128 today", "::ffff:192.0.2.128", "IP"),
        ("邮箱Zhang.San@Example.COM.cn谢谢", "Zhang.San@Example.COM.cn", "EMAIL"),
    ],
)
def test_each_type_is_found_at_its_exact_span(text, value, kind):
    assert found(text) == [(value, kind)]


@pytest.mark.parametrize(
    "text",
    [
        "价格 1399.00 元, ¥12,800, $49.99",
        "2023-10-05 12:30:45 下单, 2023/10/05, 20231005, 05.10.2023",
        "营业时间 08:00-22:30, 比分 3:2, ratio 3:2:1",
        "订单号 4449490740025697031 麻烦查一下",  # passes Luhn with a card prefix
        "Order #112-1234567-1234567 and #025-0654959-2453635",
        "Order #P47295167 never arrived; 型号S12345678",
        "型号 SM-G9910, WH-1000XM5, RTX 4090, XPS 13 9310",
        "v1.2.3.4, version 2.0.1.15, 升级到version 9.7.2.8, 固件版本1.0.3.12",
        "ISBN 978-7-111-54742-6 / 9787111547426",
        "快递 SF1234567890123, YT1234567890123, EA123456789CN, 1Z999AA10123456784",
        "USPS 9400 1000 0000 0000 0000 00 and 9400 6948 5823 5450 1164 59",
        "会员号 10012345678, 11012345678, 12012345678",
        "流水号 110101199003071235 (bad check), 110105197813461234 (bad date)",
        "MAC 00:1A:2B:3C:4D:5E, std::vector, A::B",
        "icon@2x.png, @zhangsan 你好, react@18.2.0",
        "https://shop.example.com/item?id=12345&page=2&sort=price",
        "ssh://git@github.com/org/repo.git",
        "passport holder since 20190304",
    ],
)
def test_look_alikes_are_not_found(text):
    assert detect_pii(text) == []


def test_url_secrets_are_only_the_secret_part():
    text = (
        "cb https://x.com/cb?token=abc123XYZ&page=2, "
        "db postgres://admin:s3cr3t@db.example.com:5432/app, "
        "s3 https://b.example.com/o?X-Amz-Signature=deadbeef01&x=1, "
        "oauth https://x.com/#access_token=eyJ.eyJ.sig&state=1."
    )
    assert found(text) == [
        ("abc123XYZ", "URL_SECRET"),
        ("admin:s3cr3t", "URL_SECRET"),
        ("deadbeef01", "URL_SECRET"),
        ("eyJ.eyJ.sig", "URL_SECRET"),
    ]


def test_token_as_url_user_is_a_secret_but_a_plain_user_is_not():
    token = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"
    assert found(f"https://{token}@github.com/a/b") == [(token, "URL_SECRET")]
    assert found("https://deploy@github.com/a/b") == []


def test_overlaps_go_to_the_higher_priority_type_then_the_longer_span():
    # The e-mail pattern would claim "s3cr3t@db.example.com" inside the URL.
    assert found("postgres://admin:s3cr3t@db.example.com") == [("admin:s3cr3t", "URL_SECRET")]
    # An ID holds a phone-shaped run; both a card and an ID when Luhn also passes.
    assert found(f"{CN_ID} {CARD}") == [(CN_ID, "ID_CN"), (CARD, "BANK_CARD")]
    spans = detect_pii("x 13812345678 y", name_finder=lambda t: [(0, 13)])
    assert spans == [PiiSpan(2, 13, "PHONE")]  # NAME ranks last


def test_name_finder_spans_become_name_and_do_not_block_other_types():
    text = "张三的电话13812345678"
    spans = detect_pii(text, name_finder=lambda t: [(0, 2)])
    assert spans == [PiiSpan(0, 2, "NAME"), PiiSpan(5, 16, "PHONE")]


def test_types_restrict_the_detectors():
    text = f"a@b.co 13812345678 {CARD}"
    assert found(text, types=["EMAIL"]) == [("a@b.co", "EMAIL")]
    assert [k for _, k in found(text, types=("PHONE", "BANK_CARD"))] == ["PHONE", "BANK_CARD"]
    # types restricts the built-in detectors; a finder given always runs
    assert found("Li Lei a@b.co", types=["PHONE"], name_finder=lambda t: [(0, 6)]) == [
        ("Li Lei", "NAME")
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"types": ["PHONE", "SSN"]},
            "unknown PII type(s) 'SSN'; use any of " + ", ".join(PII_TYPES),
        ),
        ({"types": "PHONE"}, "write ['PHONE']"),
        ({"types": ["NAME"]}, "needs a name finder"),
        ({"name_finder": lambda t: [(3, 99)]}, "0 <= start < end <= len(text)"),
        ({"name_finder": lambda t: [(2, 2)]}, "returned (2, 2)"),
        ({"name_finder": "names.txt"}, "name_finder must be a function"),
    ],
)
def test_mistakes_raise_one_config_error_naming_the_fix(kwargs, message):
    with pytest.raises(ConfigError) as err:
        detect_pii("some text 13812345678", **kwargs)
    assert message in str(err.value)


def test_text_without_triggers_skips_the_detectors(monkeypatch):
    import lmforge.data.pii.detect as detect

    def boom(text):
        raise AssertionError("detector ran")

    monkeypatch.setattr(detect, "_DETECTORS", {"PHONE": boom})
    assert detect_pii("没有任何数字或邮箱的句子. Nothing here.") == []
    with pytest.raises(AssertionError):
        detect_pii("but 1 digit is enough")


@pytest.mark.parametrize(
    "text",
    [
        "data:image/png;base64," + "QUJDRA1234" * 10_000 + " mail a@b.co",  # long local-part run
        ("+" + "1" * 40 + " ") * 500,  # digit runs an E.164 pattern could split many ways
        "12-" * 30_000 + "x",
        "1.1" * 30_000,
    ],
)
def test_detection_time_grows_linearly_on_hostile_input(text):
    # Each took seconds to minutes with patterns that rescan or re-split long runs.
    started = time.perf_counter()
    detect_pii(text)
    assert time.perf_counter() - started < 2.0
