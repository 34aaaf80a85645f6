"""Makers of personal identifiers and the sentences that carry them into a review.

Every identifier is structurally valid (resident IDs have a real birth date and check
character, card numbers pass Luhn), so a cleaner that checks structure must still catch it.
The planted string is returned exactly as written: it is the ground-truth marker.
"""

from __future__ import annotations

import datetime as dt
import random

from lmforge.demo.lexicon import split
from lmforge.text.identifiers import cn_id_check_char, luhn_check_digit

PII_KINDS = ("email", "cn_mobile", "cn_landline", "e164", "cn_id", "bank_card", "ipv4", "ipv6")
# Chinese reviews mention Chinese phone numbers and IDs more often; English ones e-mail and E.164.
_KIND_WEIGHTS = {
    "zh": (14, 22, 10, 6, 16, 14, 10, 8),
    "en": (24, 8, 4, 22, 6, 16, 12, 8),
}

_EMAIL_USERS = split(
    "john.smith|amy_lee|k.wong|mike.j|sarah.chen|d.brown|liz_taylor|tom.h|zhangwei|li.na"
    "|wangfang|chen_jie|liu.yang|xiaoming|huang.li|zhao_lei|sun.mei"
)
_EMAIL_DOMAINS = split(
    "example.com|mail.example.org|gmail.com|outlook.com|qq.com|163.com|126.com|foxmail.com"
    "|yahoo.co.uk|proton.me"
)
_AREA3 = ("010", "020", "021", "022", "023", "024", "025", "027", "028", "029")
_AREA4 = ("0755", "0571", "0512", "0531", "0574", "0591", "0731", "0871", "0898", "0451")
# Six-digit administrative codes of real districts (Beijing Dongcheng, Shanghai Xuhui, ...).
_CN_REGIONS = split(
    "110101|110105|310104|310115|440305|440106|330106|510107|420106|320102|370102|500103"
    "|610113|350203|430104|210102"
)
_CARD_PREFIXES = (("622202", 19), ("622848", 19), ("621700", 16), ("623668", 16), ("4", 16))
_CARD_PREFIXES += (("51", 16), ("55", 16), ("6225", 16), ("625", 17), ("6210", 18))
_IPV6_PREFIXES = ("2001:db8", "2408:8207", "240e:3a1", "2a02:6b8", "2607:f8b0", "2409:8a00")

_CARRIERS = {
    "en": {
        "email": (
            "You can reach me at {x} if you want details.",
            "My email is {x}, feel free to ask.",
            "Contact me at {x} for photos.",
        ),
        "phone": (
            "My number is {x} if the seller wants to call.",
            "Call me on {x}.",
            "They finally called me back on {x}.",
        ),
        "cn_id": (
            "They asked for my ID number {x} just to open a ticket.",
            "My resident ID {x} was printed on the invoice.",
        ),
        "bank_card": (
            "I paid with card {x} and got charged twice.",
            "The refund should go back to card {x}.",
        ),
        "ip": (
            "The app kept logging me in from {x}.",
            "Their server at {x} kept timing out.",
            "My router shows {x} as the device address.",
        ),
    },
    "zh": {
        "email": ("有问题可以发邮件到{x}", "我的邮箱是{x}", "联系邮箱{x}"),
        "phone": ("请联系我的手机{x}", "有事打我电话{x}", "客服回拨的号码是{x}", "店里的电话是{x}"),
        "cn_id": ("下单还要填身份证号{x}", "我的身份证号是{x}"),
        "bank_card": ("我用银行卡{x}付的款，结果扣了两次", "退款请退回银行卡{x}"),
        "ip": ("APP一直显示登录IP是{x}", "路由器里看到的设备地址是{x}"),
    },
}
_CARRIER_GROUP = {"cn_mobile": "phone", "cn_landline": "phone", "e164": "phone", "ipv4": "ip"}
_CARRIER_GROUP["ipv6"] = "ip"


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def make_email(rng: random.Random) -> str:
    user = rng.choice(_EMAIL_USERS)
    if rng.random() < 0.5:
        user += str(rng.randrange(1, 1000))
    return f"{user}@{rng.choice(_EMAIL_DOMAINS)}"


def make_cn_mobile(rng: random.Random) -> str:
    number = "1" + rng.choice("3456789") + _digits(rng, 9)
    style = rng.random()
    if style < 0.55:
        return number
    if style < 0.72:
        return f"{number[:3]}-{number[3:7]}-{number[7:]}"
    if style < 0.9:
        return f"{number[:3]} {number[3:7]} {number[7:]}"
    return f"+86 {number}"


def make_cn_landline(rng: random.Random) -> str:
    if rng.random() < 0.5:
        area, local = rng.choice(_AREA3), rng.choice("2345678") + _digits(rng, 7)
    else:
        area = rng.choice(_AREA4)
        local = rng.choice("2345678") + _digits(rng, rng.choice((6, 7)))
    return f"({area}){local}" if rng.random() < 0.2 else f"{area}-{local}"


def make_e164(rng: random.Random) -> str:
    pattern = rng.choice(
        (
            ("44", (2, 4, 4)),  # +44 20 7946 0958
            ("1", (3, 3, 4)),  # +1 415 555 0132
            ("49", (2, 7)),
            ("33", (1, 2, 2, 2, 2)),
            ("81", (1, 4, 4)),
            ("61", (1, 4, 4)),
            ("852", (4, 4)),
            ("65", (4, 4)),
        )
    )
    country, groups = pattern
    parts = [rng.choice("23456789") + _digits(rng, groups[0] - 1)]
    parts += [_digits(rng, size) for size in groups[1:]]
    if rng.random() < 0.2:
        return "+" + country + "".join(parts)
    return "+" + country + " " + " ".join(parts)


def make_cn_id(rng: random.Random) -> str:
    born = dt.date(1955, 1, 1) + dt.timedelta(days=rng.randrange(365 * 50))
    first17 = rng.choice(_CN_REGIONS) + born.strftime("%Y%m%d") + _digits(rng, 3)
    return first17 + cn_id_check_char(first17)


def make_bank_card(rng: random.Random) -> str:
    prefix, length = rng.choice(_CARD_PREFIXES)
    if prefix.startswith("62") and rng.random() < 0.3:
        length = rng.choice((16, 17, 18, 19))
    partial = prefix + _digits(rng, length - len(prefix) - 1)
    number = partial + luhn_check_digit(partial)
    if rng.random() < 0.4:
        return " ".join(number[i : i + 4] for i in range(0, len(number), 4))
    return number


def make_ipv4(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return f"192.168.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    first = rng.choice([n for n in range(1, 224) if n not in (10, 127, 169, 172, 192)])
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def make_ipv6(rng: random.Random) -> str:
    head = rng.choice(_IPV6_PREFIXES).split(":")
    groups = head + [f"{rng.randrange(1, 0x10000):x}" for _ in range(8 - len(head))]
    style = rng.random()
    if style < 0.35:  # a run of zero groups written as "::"
        start = len(head)
        run = rng.choice((2, 3))
        return ":".join(groups[:start]) + "::" + ":".join(groups[start + run :])
    if style < 0.55:
        return ":".join(g.zfill(4) for g in groups)
    return ":".join(groups)


_MAKERS = {
    "email": make_email,
    "cn_mobile": make_cn_mobile,
    "cn_landline": make_cn_landline,
    "e164": make_e164,
    "cn_id": make_cn_id,
    "bank_card": make_bank_card,
    "ipv4": make_ipv4,
    "ipv6": make_ipv6,
}


def make_identifier(rng: random.Random, kind: str) -> str:
    return _MAKERS[kind](rng)


def pick_kind(rng: random.Random, lang: str) -> str:
    return rng.choices(PII_KINDS, weights=_KIND_WEIGHTS["zh" if lang == "zh" else "en"])[0]


def carrier_sentence(rng: random.Random, kind: str, lang: str, value: str) -> str:
    """A natural sentence in `lang` around the identifier (Chinese ones without end stop)."""
    table = _CARRIERS["zh" if lang == "zh" else "en"]
    return rng.choice(table[_CARRIER_GROUP.get(kind, kind)]).format(x=value)


def plant_identifiers(
    rng: random.Random, text: str, lang: str, most: int = 2
) -> tuple[str, list[str]]:
    """Insert one (or up to `most`) carrier sentences at sentence boundaries.

    Returns the text and the identifiers as planted (the markers).
    """
    markers: list[str] = []
    for _ in range(1 if most == 1 or rng.random() < 0.75 else most):
        kind = pick_kind(rng, lang)
        value = make_identifier(rng, kind)
        sentence = carrier_sentence(rng, kind, lang, value)
        text = _insert_sentence(rng, text, sentence, lang)
        markers.append(value)
    return text, markers


def _insert_sentence(rng: random.Random, text: str, sentence: str, lang: str) -> str:
    if lang == "zh":
        sentence += "。"
        ends = [i + 1 for i, ch in enumerate(text) if ch in "。！？"]
    else:  # a stop followed by a space, so that "1.2.3.4" or "a.b@c.com" is not cut
        ends = [i + 1 for i, ch in enumerate(text[:-1]) if ch in ".!?" and text[i + 1] == " "]
    # Boundaries: the start, after each sentence, the end.
    cuts = [0, *ends, len(text)]
    cut = rng.choice(sorted(set(cuts)))
    head, tail = text[:cut].rstrip(), text[cut:].lstrip()
    sep = "" if lang == "zh" else " "
    return sep.join(part for part in (head, sentence, tail) if part)
