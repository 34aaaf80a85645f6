import random

import pytest

from lmforge.data.document import Document
from lmforge.data.steps.dedup import ExactDedup
from lmforge.data.steps.pii import PiiMasker, mask_pii
from lmforge.text.hashing import HashSet64, dedup_key
from lmforge.text.identifiers import cn_id_check_char, luhn_check_digit

CARD = "622202123456789" + luhn_check_digit("622202123456789")  # 16 digits, Luhn-valid
CN_ID = "11010119900307123" + cn_id_check_char("11010119900307123")


def masked(text: str) -> str:
    return mask_pii(text)[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail zhang.san+shop@mail.example.com.cn now", "mail [EMAIL] now"),
        ("联系邮箱zhang@qq.com谢谢", "联系邮箱[EMAIL]谢谢"),
        ("电话13812345678联系", "电话[PHONE]联系"),
        ("call 138-1234-5678 or 138 1234 5678", "call [PHONE] or [PHONE]"),
        ("座机 010-62345678 或 0755-2345678", "座机 [PHONE] 或 [PHONE]"),
        ("Call +1 (415) 555-0132 or +44 20 7946 0958.", "Call [PHONE] or [PHONE]."),
        ("+8613812345678 ok", "[PHONE] ok"),
        (f"身份证号{CN_ID}已登记", "身份证号[ID_CN]已登记"),
        (f"ID {CN_ID.lower()}", "ID [ID_CN]"),
        (f"卡号{CARD}", "卡号[BANK_CARD]"),
        (f"card {CARD[:4]} {CARD[4:8]} {CARD[8:12]} {CARD[12:]} 2026", "card [BANK_CARD] 2026"),
        (f"card {'-'.join([CARD[:4], CARD[4:8], CARD[8:12], CARD[12:]])}.", "card [BANK_CARD]."),
        ("server 192.168.1.20, gw 10.0.0.1.", "server [IP], gw [IP]."),
        ("IPv6 2001:db8::8a2e:370:7334 and fe80::1.", "IPv6 [IP] and [IP]."),
        ("地址:2001:0db8:85a3:0000:0000:8a2e:0370:7334。", "地址:[IP]。"),
    ],
)
def test_pii_is_masked_with_typed_placeholders(text, expected):
    assert masked(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "价格 1399.00 元, 2023-10-05 下单, 12:30:45 送达",
        "order 202310051234567890 shipped",  # 18 digits: not an ID (bad date/check), not Luhn
        f"order {CARD[:-1]}{(int(CARD[-1]) + 1) % 10}",  # one digit off: fails Luhn
        f"ID {CN_ID[:-1]}{'0' if CN_ID[-1] != '0' else '1'}",  # wrong check character
        "version 1.2.3.999 and 256.1.1.1 are not addresses",
        "MAC 00:1a:2b:3c:4d:5e, ratio 3:2:1",
        "Model 2024 costs $1,299 for 2 units; room 1203",
    ],
)
def test_ordinary_numbers_are_not_masked(text):
    assert mask_pii(text) == (text, {})


def test_ids_and_cards_win_over_phone_patterns():
    text, counts = mask_pii(f"{CN_ID} {CARD}")
    assert text == "[ID_CN] [BANK_CARD]"
    assert counts == {"ID_CN": 1, "BANK_CARD": 1}


def test_masker_counts_by_type_and_keeps_the_original():
    step = PiiMasker()
    doc = Document(id="1", text="a@b.co 13812345678 c@d.org", source="s")
    step.transform(doc)
    assert doc.text == "[EMAIL] [PHONE] [EMAIL]"
    assert doc.raw_text == "a@b.co 13812345678 c@d.org"
    assert step.stats.events == {"EMAIL": 2, "PHONE": 1, "docs_masked": 1}


def test_hash_set_grows_and_remembers_everything():
    s = HashSet64(capacity=8)
    rng = random.Random(0)
    keys = list({rng.randrange(1, 2**64) for _ in range(5000)})
    assert all(s.add(k) for k in keys)
    assert not any(s.add(k) for k in keys)
    assert len(s) == len(keys)
    assert all(k in s for k in keys)
    assert sum(rng.randrange(1, 2**64) in s for _ in range(1000)) == 0  # nothing else is in
    assert s.add(0) and not s.add(0)  # 0 is stored like any other key


def test_dedup_keeps_first_and_ignores_case_width_and_spacing():
    step = ExactDedup()
    texts = ["Great  Phone\n", "great phone", "ＧＲＥＡＴ phone", "great phones"]
    dropped = []
    docs = [Document(id=str(i), text=t, source="s") for i, t in enumerate(texts)]
    kept = list(step.run(docs, lambda doc, step, reason: dropped.append((doc.id, step, reason))))
    assert [d.text for d in kept] == ["Great  Phone\n", "great phones"]
    assert dropped == [("1", "dedup", "exact_duplicate"), ("2", "dedup", "exact_duplicate")]
    assert (step.stats.docs_in, step.stats.docs_out) == (4, 2)
    assert dedup_key("a b") != dedup_key("ab")
