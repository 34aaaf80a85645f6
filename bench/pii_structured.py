"""Benchmark structured PII detection on a seeded, labelled set of short zh/en texts.

    python bench/pii_structured.py --texts 5000 --seed 0

Each text holds up to two planted identifiers (e-mail, phone, resident ID, bank card, IP,
URL secret, passport) in varied formats and positions, hard negatives that look like them
(prices, dates, times, order, tracking, SKU and model numbers, versions, ISBNs, 11-digit
numbers that are no phones, 18-digit runs with a bad check character, MAC addresses,
ordinary URLs) and filler. `detect_pii` runs on every text; a predicted span is correct
when it covers a planted value and has its type. Prints ONE JSON object: precision and
recall per type and overall, counts, a few misses and false alarms, and texts per second.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import date, timedelta

from lmforge.data.pii import detect_pii
from lmforge.text.identifiers import cn_id_check_char, luhn_check_digit

Label = tuple[int, int, str]
Snippet = tuple[str, list[Label]]  # text and labels relative to it

TYPES = ("EMAIL", "PHONE", "ID_CN", "BANK_CARD", "IP", "URL_SECRET", "PASSPORT")


def digits(rng: random.Random, n: int, first: str = "0123456789") -> str:
    return rng.choice(first) + "".join(rng.choice(string.digits) for _ in range(n - 1))


def whole(value: str, kind: str) -> Snippet:
    return value, [(0, len(value), kind)]


# --- planted identifiers ---------------------------------------------------------------
NAMES = ["zhang.wei", "li_na", "wangfang88", "chen.jie", "liu-yang", "john.smith", "amy.lee"]
NAMES += ["k.wong", "Mike.Johnson", "sarah_c", "xiaoming", "dbrown", "tom+shop", "ZhaoLei"]
DOMAINS = ["qq.com", "163.com", "126.com", "gmail.com", "outlook.com", "foxmail.com"]
DOMAINS += ["sina.com.cn", "company.com.cn", "mail.example.org", "pku.edu.cn", "yahoo.co.uk"]


def make_email(rng: random.Random) -> Snippet:
    style = rng.random()
    if style < 0.25:  # QQ mailbox: the QQ number as the user
        user = digits(rng, rng.randint(6, 10), "123456789")
        return whole(f"{user}@qq.com", "EMAIL")
    user = rng.choice(NAMES)
    if rng.random() < 0.4:
        user += str(rng.randint(1, 2024))
    value = f"{user}@{rng.choice(DOMAINS)}"
    if rng.random() < 0.1:
        value = value.upper()
    if rng.random() < 0.1:
        return f"<{value}>", [(1, len(value) + 1, "EMAIL")]
    return whole(value, "EMAIL")


def cn_mobile(rng: random.Random) -> str:
    number = "1" + rng.choice("3456789") + digits(rng, 9)
    style = rng.random()
    if style < 0.5:
        return number
    if style < 0.65:
        return f"{number[:3]}-{number[3:7]}-{number[7:]}"
    if style < 0.8:
        return f"{number[:3]} {number[3:7]} {number[7:]}"
    prefix = rng.choice(["+86 ", "+86", "+86-", "0086 ", "(+86) ", "+86 "])
    if rng.random() < 0.5:
        return prefix + number
    return prefix + f"{number[:3]} {number[3:7]} {number[7:]}"


AREA3 = ["010", "020", "021", "022", "023", "024", "025", "027", "028", "029"]
AREA4 = ["0755", "0571", "0512", "0531", "0574", "0591", "0731", "0871", "0898", "0451"]


def cn_landline(rng: random.Random) -> str:
    if rng.random() < 0.5:
        area, local = rng.choice(AREA3), digits(rng, 8, "2345678")
    else:
        area, local = rng.choice(AREA4), digits(rng, rng.choice((7, 8)), "2345678")
    style = rng.random()
    if style < 0.55:
        return f"{area}-{local}"
    if style < 0.7:
        return f"({area}){local}"
    if style < 0.8:
        return f"（{area}）{local}"
    if style < 0.9:
        return f"{area} {local}"
    return f"{area}-{local[:-4]} {local[-4:]}"


E164 = [  # country code, group sizes of the national number
    ("1", (3, 3, 4)),
    ("44", (2, 4, 4)),
    ("44", (4, 6)),
    ("49", (2, 8)),
    ("33", (1, 2, 2, 2, 2)),
    ("81", (1, 4, 4)),
    ("61", (1, 4, 4)),
    ("852", (4, 4)),
    ("65", (4, 4)),
    ("7", (3, 3, 2, 2)),
    ("91", (5, 5)),
]


def e164(rng: random.Random) -> str:
    country, groups = rng.choice(E164)
    parts = [digits(rng, groups[0], "23456789")] + [digits(rng, g) for g in groups[1:]]
    style = rng.random()
    if style < 0.15:
        return "+" + country + "".join(parts)
    if country == "1" and style < 0.4:
        return f"+1 ({parts[0]}) {parts[1]}-{parts[2]}"
    if style < 0.55:
        return "+" + country + "-" + "-".join(parts)
    return "+" + country + " " + " ".join(parts)


def make_phone(rng: random.Random) -> Snippet:
    maker = rng.choices([cn_mobile, cn_landline, e164], weights=[6, 2, 2])[0]
    return whole(maker(rng), "PHONE")


REGIONS = ["110101", "110105", "310104", "310115", "440305", "440106", "330106", "510107"]
REGIONS += ["420106", "320102", "370102", "500103", "610113", "350203", "620102", "650102"]


def id_first17(rng: random.Random) -> str:
    born = date(1950, 1, 1) + timedelta(days=rng.randrange(365 * 55))
    return rng.choice(REGIONS) + born.strftime("%Y%m%d") + digits(rng, 3)


def make_cn_id(rng: random.Random) -> Snippet:
    first17 = id_first17(rng)
    value = first17 + cn_id_check_char(first17)
    if rng.random() < 0.3:
        value = value.lower()  # only changes an X
    if rng.random() < 0.1:
        value = f"{value[:6]} {value[6:14]} {value[14:]}"
    return whole(value, "ID_CN")


CARD_PREFIXES = [("622202", 19), ("622848", 19), ("621700", 16), ("623668", 16)]
CARD_PREFIXES += [("6225", 16), ("625", 17), ("6210", 18), ("4", 16), ("51", 16), ("55", 16)]
CARD_PREFIXES += [("34", 15), ("37", 15), ("3528", 16), ("2221", 16)]


def make_bank_card(rng: random.Random) -> Snippet:
    prefix, length = rng.choice(CARD_PREFIXES)
    partial = prefix + digits(rng, length - len(prefix) - 1)
    number = partial + luhn_check_digit(partial)
    style = rng.random()
    if style < 0.45:
        return whole(number, "BANK_CARD")
    if length == 15 and style < 0.8:  # Amex: 4-6-5
        return whole(f"{number[:4]} {number[4:10]} {number[10:]}", "BANK_CARD")
    sep = " " if style < 0.85 else "-"
    return whole(sep.join(number[i : i + 4] for i in range(0, length, 4)), "BANK_CARD")


def make_ip(rng: random.Random) -> Snippet:
    style = rng.random()
    if style < 0.6:
        if rng.random() < 0.3:
            value = f"192.168.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        else:
            first = rng.choice([n for n in range(1, 224) if n != 127])
            value = f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        if rng.random() < 0.2:
            return f"{value}:{rng.choice([80, 443, 8080, 3306, 22])}", [(0, len(value), "IP")]
        return whole(value, "IP")
    head = rng.choice(["2001:db8", "2408:8207", "240e:3a1", "2a02:6b8", "2607:f8b0", "fe80:0"])
    groups = head.split(":") + [f"{rng.randrange(1, 0x10000):x}" for _ in range(6)]
    groups = groups[:8]
    form = rng.random()
    if form < 0.4:
        value = ":".join(groups[:2]) + "::" + ":".join(groups[2 + rng.choice((2, 3)) :])
    elif form < 0.6:
        value = ":".join(g.zfill(4) for g in groups)
    else:
        value = ":".join(groups)
    if rng.random() < 0.15:
        return f"[{value}]:443", [(1, len(value) + 1, "IP")]
    return whole(value, "IP")


HOSTS = ["api.example.com", "open.weixin.example.cn", "x.com", "shop.example.org", "a.b.cn"]
SECRET_PARAMS = ["token", "access_token", "api_key", "apikey", "key", "secret", "password"]
SECRET_PARAMS += ["passwd", "sig", "signature", "auth", "session", "sessionid", "code"]


def secret_value(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits
    value = "".join(rng.choice(alphabet) for _ in range(rng.randint(8, 40)))
    if rng.random() < 0.2:  # JWT-like
        value += "." + "".join(rng.choice(alphabet) for _ in range(12))
    return value


def make_url_secret(rng: random.Random) -> Snippet:
    host = rng.choice(HOSTS)
    if rng.random() < 0.25:
        user = rng.choice(["admin", "root", "deploy", "zhangwei", "app_user"])
        password = secret_value(rng)[:16]
        scheme = rng.choice(["https", "mysql", "postgres", "redis", "ftp"])
        head = f"{scheme}://"
        url = f"{head}{user}:{password}@{host}/db"
        return url, [(len(head), len(head) + len(user) + 1 + len(password), "URL_SECRET")]
    path = rng.choice(["/cb", "/oauth/callback", "/v1/orders", "/download", "/"])
    name, value = rng.choice(SECRET_PARAMS), secret_value(rng)
    before = rng.choice(["", "page=2&", "id=1024&", "lang=zh-CN&"])
    after = rng.choice(["", "", "&page=2", "&ts=1696500000"])
    head = f"https://{host}{path}?{before}{name}="
    return head + value + after, [(len(head), len(head) + len(value), "URL_SECRET")]


def make_passport(rng: random.Random) -> Snippet:
    style = rng.random()
    if style < 0.4:
        return whole("E" + digits(rng, 8), "PASSPORT")
    if style < 0.6:
        letter = rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ")
        return whole("E" + letter + digits(rng, 7), "PASSPORT")
    if style < 0.7:
        return whole(rng.choice("GDSP") + digits(rng, 8), "PASSPORT")
    # Foreign numbers: always written after a cue in the templates below.
    foreign = rng.choice(
        [
            digits(rng, 9, "123456789"),  # US, UK
            "".join(rng.choice("CFGHJK") for _ in range(1))
            + "".join(rng.choice("0123456789CFGHJKLMNPRTVWXYZ") for _ in range(8)),  # DE
            rng.choice(["TK", "TR", "MU"]) + digits(rng, 7),  # JP
            rng.choice("JKLMNPRSTUVWXYZ") + digits(rng, 7),  # IN
            rng.choice(["AB", "GA", "HK"]) + digits(rng, 6),  # CA
        ]
    )
    return whole(foreign, "PASSPORT_FOREIGN")


MAKERS: dict[str, Callable[[random.Random], Snippet]] = {
    "EMAIL": make_email,
    "PHONE": make_phone,
    "ID_CN": make_cn_id,
    "BANK_CARD": make_bank_card,
    "IP": make_ip,
    "URL_SECRET": make_url_secret,
    "PASSPORT": make_passport,
}

CARRIERS = {
    "zh": {
        "EMAIL": [
            "有问题可以发邮件到{x}",
            "我的邮箱是{x}，收到请回复",
            "联系邮箱：{x}",
            "简历投递{x}",
        ],
        "PHONE": ["请联系我的手机{x}", "电话{x}联系", "客服回拨的号码是{x}，没人接", "座机：{x}"],
        "ID_CN": ["下单还要填身份证号{x}", "身份证：{x}，请核对", "我的身份证号码是{x}"],
        "BANK_CARD": ["我用银行卡{x}付的款", "退款请退回卡号{x}", "尾号不对，卡号应为{x}"],
        "IP": ["APP一直显示登录IP是{x}", "服务器{x}一直超时", "路由器里看到的地址是{x}"],
        "URL_SECRET": ["回调地址是{x}，请检查", "接口：{x}", "点这个链接{x}就能登录"],
        "PASSPORT": [
            "护照号码：{x}",
            "我的护照号是{x}，请帮忙订票",
            "证件号{x}",
            "护照 {x} 已过期",
        ],
    },
    "en": {
        "EMAIL": ["Email me at {x} for details.", "My address is {x}.", "Contact: {x}"],
        "PHONE": ["Call me on {x}.", "My number is {x} if the seller wants to call.", "Tel: {x}"],
        "ID_CN": ["They asked for my ID number {x} to open a ticket.", "Resident ID {x} on file."],
        "BANK_CARD": ["I paid with card {x} and got charged twice.", "Refund to card {x}, please."],
        "IP": ["The app logged me in from {x}.", "Their server at {x} kept timing out."],
        "URL_SECRET": ["The callback was {x} and it failed.", "Webhook URL: {x}"],
        "PASSPORT": ["Passport number: {x}", "my passport no. {x} expires soon", "Passport {x}"],
    },
}
# Foreign passport numbers only ever appear right after a cue.
FOREIGN_CARRIERS = {
    "zh": ["护照号码：{x}", "我的护照号是{x}", "护照号 {x}"],
    "en": ["Passport number: {x}", "my passport no. {x} expires soon", "passport #{x}"],
}


# --- hard negatives -------------------------------------------------------------------------
def isbn13(rng: random.Random) -> str:
    body = "9787" + digits(rng, 8)
    total = sum(int(d) * (1 if i % 2 == 0 else 3) for i, d in enumerate(body))
    number = body + str((10 - total % 10) % 10)
    if rng.random() < 0.5:
        return number
    return f"{number[:3]}-{number[3]}-{number[4:7]}-{number[7:12]}-{number[12]}"


def price(rng: random.Random) -> str:
    value = rng.choice([rng.randint(5, 99), rng.randint(100, 9999), rng.randint(10000, 99999)])
    style = rng.random()
    if style < 0.3:
        return f"¥{value}"
    if style < 0.6:
        return f"{value:,}.{rng.randint(0, 99):02d}"
    return f"${value}.{rng.randint(0, 99):02d}"


def a_date(rng: random.Random) -> str:
    d = date(2015, 1, 1) + timedelta(days=rng.randrange(3650))
    fmt = rng.choice(["%Y-%m-%d", "%Y/%m/%d", "%Y年%m月%d日", "%Y%m%d", "%d.%m.%Y", "%Y.%m.%d"])
    text = d.strftime(fmt)
    if rng.random() < 0.4:
        text += f" {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    return text


def order_number(rng: random.Random) -> str:
    style = rng.randrange(6)
    if style == 0:  # marketplace order numbers: 18-19 digits
        return digits(rng, rng.choice((18, 19)), "123456789")
    if style == 1:
        return digits(rng, 12, "23")
    if style == 2:
        d = date(2020, 1, 1) + timedelta(days=rng.randrange(1500))
        return d.strftime("%y%m%d") + "-" + digits(rng, 15)
    if style == 3:
        return f"{digits(rng, 3)}-{digits(rng, 7)}-{digits(rng, 7)}"
    if style == 4:
        return rng.choice(["SO", "PO", "DD", "NO", "S", "P", "T"]) + digits(rng, rng.randint(8, 12))
    d = date(2020, 1, 1) + timedelta(days=rng.randrange(1500))
    return d.strftime("%Y%m%d") + digits(rng, rng.choice((6, 8, 10)))


def tracking_number(rng: random.Random) -> str:
    style = rng.randrange(7)
    if style == 0:
        return "SF" + digits(rng, rng.choice((12, 13)))
    if style == 1:
        return rng.choice(["YT", "JT", "JD", "ZT"]) + digits(rng, 13)
    if style == 2:
        return digits(rng, rng.choice((12, 13, 14)), "734")
    if style == 3:
        return rng.choice(["EA", "EE", "LK", "RR"]) + digits(rng, 9) + rng.choice(["CN", "US"])
    if style == 4:
        number = "9400" + digits(rng, 18)
        return " ".join(number[i : i + 4] for i in range(0, 22, 4))
    if style == 5:
        return "1Z" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))
    return digits(rng, 12, "123456789")  # FedEx


MODELS = ["SM-G9910", "WH-1000XM5", "RTX 4090", "A2338", "KD-65X85K", "G502", "TL-WR841N"]
MODELS += ["XPS 13 9310", "Mate 60 Pro", "DCS-8300LH", "MX Master 3S", "iPhone 15 Pro", "P40"]


def model_number(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(MODELS)
    letters = "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(1, 3)))
    return f"{letters}-{digits(rng, rng.randint(3, 5))}{rng.choice(['', 'A', 'X', 'Pro'])}"


def version(rng: random.Random) -> str:
    parts = [str(rng.randint(0, 12)) for _ in range(rng.choice((3, 4)))]
    dotted = ".".join(parts)
    return rng.choice(
        [f"v{dotted}", f"V{dotted}", f"version {dotted}", f"版本{dotted}", f"Build {dotted}"]
    )


def bad_id(rng: random.Random) -> str:
    first17 = id_first17(rng)
    check = cn_id_check_char(first17)
    return first17 + rng.choice([c for c in "0123456789X" if c != check])


def mac(rng: random.Random) -> str:
    return ":".join(f"{rng.randrange(256):02X}" for _ in range(6))


def non_phone_11(rng: random.Random) -> str:
    """11 digits that no Chinese mobile number starts with (10, 11, 12)."""
    return "1" + rng.choice("012") + digits(rng, 9)


def item_url(rng: random.Random) -> str:
    item, sku = digits(rng, 10, "123456789"), digits(rng, 12, "123456789")
    return f"https://item.example.com/{item}.html?id={sku}"


def score(rng: random.Random) -> str:
    return f"{rng.randint(0, 5)}:{rng.randint(0, 5)}"


# (kind, carrier, maker): the maker's value replaces {x}; nothing in these is PII.
NEGATIVES: dict[str, list[tuple[str, str, Callable[[random.Random], str]]]] = {
    "zh": [
        ("price", "价格{x}，比上次便宜", price),
        ("date", "{x}下的单", a_date),
        ("time", "营业时间{x}", lambda r: f"{r.randint(7, 10):02d}:00-{r.randint(20, 23)}:30"),
        ("order", "订单号{x}，麻烦查一下", order_number),
        ("tracking", "快递单号：{x}", tracking_number),
        ("model", "型号{x}，用着不错", model_number),
        ("version", "升级到{x}以后更卡了", version),
        ("isbn", "ISBN {x}", isbn13),
        ("digits11", "会员号{x}", non_phone_11),
        ("bad_id18", "流水号{x}", bad_id),
        ("qq_group", "QQ群{x}", lambda r: digits(r, r.randint(6, 10), "123456789")),
        ("sku", "商品编号{x}", lambda r: "1000" + digits(r, 8)),
        ("mac", "设备MAC {x}", mac),
        ("score", "比分{x}", score),
        ("url", "链接{x}", item_url),
    ],
    "en": [
        ("price", "It cost {x} after the discount.", price),
        ("date", "Ordered on {x}.", a_date),
        ("order", "Order #{x} never arrived.", order_number),
        ("tracking", "Tracking number {x} shows no update.", tracking_number),
        ("model", "The {x} works fine.", model_number),
        ("version", "After updating to {x} it crashes.", version),
        ("isbn", "ISBN {x}", isbn13),
        ("digits11", "Account {x} was charged.", non_phone_11),
        ("bad_id18", "Reference {x}", bad_id),
        ("mac", "MAC address {x}", mac),
        ("score", "Score was {x} at half time.", score),
        (
            "url",
            "See https://shop.example.com/item?id={x}&page=2 for photos.",
            lambda r: digits(r, 8, "123456789"),
        ),
        ("room", "Room {x}, floor 12.", lambda r: str(r.randint(100, 2999))),
    ],
}

# Carriers that say nothing about what the number is: detectors that read cue words
# ("订单号", "Order #", "version") get no help from these.
NEUTRAL_CARRIERS = {
    "zh": ["就是这个：{x}", "上面写着{x}", "{x}"],
    "en": ["It says {x} on the box.", "Got {x} back from them.", "{x}"],
}

FILLERS = {
    "zh": [
        "物流很快，包装完好。",
        "味道一般，分量还可以。",
        "客服态度不错。",
        "用了一周，续航很好。",
    ],
    "en": ["Shipping was fast.", "The quality is okay for the price.", "Would buy again.", "Meh."],
}


def make_text(rng: random.Random, neutral_share: float) -> tuple[str, list[Label]]:
    """One short text: filler, up to two planted identifiers and up to two hard negatives
    (a `neutral_share` of them in carriers without a cue word)."""
    lang = rng.choice(("zh", "en"))
    pieces: list[Snippet] = []
    for _ in range(rng.choices((0, 1, 2), weights=(2, 6, 2))[0]):
        kind = rng.choice(TYPES)
        snippet, labels = MAKERS[kind](rng)
        if labels[0][2] == "PASSPORT_FOREIGN":
            template = rng.choice(FOREIGN_CARRIERS[lang])
            labels = [(s, e, "PASSPORT") for s, e, _ in labels]
        else:
            template = rng.choice(CARRIERS[lang][kind])
        head, tail = template.split("{x}")
        pieces.append(
            (head + snippet + tail, [(s + len(head), e + len(head), t) for s, e, t in labels])
        )
    for _ in range(rng.choices((0, 1, 2), weights=(3, 5, 2))[0]):
        kind, template, maker = rng.choice(NEGATIVES[lang])
        if rng.random() < neutral_share:
            template = rng.choice(NEUTRAL_CARRIERS[lang])
        snippet = template.replace("{x}", maker(rng))
        pieces.append((snippet, [(0, len(snippet), "NEG:" + kind)]))
    for _ in range(rng.randint(0, 2)):
        pieces.append((rng.choice(FILLERS[lang]), []))
    rng.shuffle(pieces)
    text, labels = "", []
    for snippet, rel in pieces:
        if text and lang == "en":
            text += " "
        elif text and text[-1] not in "。！？，":  # Chinese clauses end with punctuation
            text += rng.choice(["，", "，", "。", "！", "；"])
        labels += [(s + len(text), e + len(text), t) for s, e, t in rel]
        text += snippet
    return text, labels


def evaluate(dataset: list[tuple[str, list[Label]]], predictions: list[list]) -> dict:
    planted: Counter[str] = Counter()
    found: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    misses: list[dict] = []
    false_alarms: list[dict] = []
    negatives: Counter[str] = Counter()
    alarms_in_negatives: Counter[str] = Counter()
    for (text, all_labels), spans in zip(dataset, predictions, strict=True):
        labels = [x for x in all_labels if not x[2].startswith("NEG:")]
        hard = [x for x in all_labels if x[2].startswith("NEG:")]
        negatives.update(k[4:] for _, _, k in hard)
        for s, e, kind in labels:
            planted[kind] += 1
            if any(p.type == kind and p.start <= s and p.end >= e for p in spans):
                found[kind] += 1
            elif len(misses) < 12:
                misses.append({"type": kind, "value": text[s:e], "text": text})
        for p in spans:
            predicted[p.type] += 1
            if any(p.type == k and p.start <= s and p.end >= e for s, e, k in labels):
                correct[p.type] += 1
                continue
            for s, e, k in hard:
                if p.start < e and s < p.end:
                    alarms_in_negatives[k[4:]] += 1
            if len(false_alarms) < 12:
                false_alarms.append({"type": p.type, "value": text[p.start : p.end], "text": text})

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    per_type = {
        kind: {
            "planted": planted[kind],
            "found": found[kind],
            "predicted": predicted[kind],
            "correct": correct[kind],
            "recall": ratio(found[kind], planted[kind]),
            "precision": ratio(correct[kind], predicted[kind]),
        }
        for kind in TYPES
    }
    total_p, total_c = sum(predicted.values()), sum(correct.values())
    overall = {
        "planted": sum(planted.values()),
        "found": sum(found.values()),
        "predicted": total_p,
        "correct": total_c,
        "recall": ratio(sum(found.values()), sum(planted.values())),
        "precision": ratio(total_c, total_p),
    }
    return {
        "overall": overall,
        "per_type": per_type,
        "hard_negatives": dict(sorted(negatives.items())),
        "false_alarms_in_hard_negatives": dict(sorted(alarms_in_negatives.items())),
        "misses": misses,
        "false_alarms": false_alarms,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=5000, help="texts to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the best counts")
    parser.add_argument(
        "--neutral-share",
        type=float,
        default=0.25,
        help="share of hard negatives written without the cue word that names them",
    )
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    dataset = [make_text(rng, args.neutral_share) for _ in range(args.texts)]
    best = float("inf")
    predictions: list[list] = []
    for _ in range(max(1, args.repeat)):
        started = time.perf_counter()
        predictions = [detect_pii(text) for text, _ in dataset]
        best = min(best, time.perf_counter() - started)
    result = {
        "texts": len(dataset),
        "seed": args.seed,
        "neutral_share": args.neutral_share,
        "chars": sum(len(t) for t, _ in dataset),
        **evaluate(dataset, predictions),
        "seconds": round(best, 4),
        "texts_per_second": round(len(dataset) / best, 1),
    }
    json.dump(result, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
