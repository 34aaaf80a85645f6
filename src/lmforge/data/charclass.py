"""Character classes and token counts shared by the normalizer and the quality filters.

Counting goes through compiled regexes (C speed) instead of per-character Python loops.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
KANA = "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f"
HANGUL = "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
CJK = HAN + KANA + HANGUL

_HAN_RE = re.compile(f"[{HAN}]")
_KANA_RE = re.compile(f"[{KANA}]")
_HANGUL_RE = re.compile(f"[{HANGUL}]")
_CYRILLIC_RE = re.compile("[\u0400-\u04ff]")
_LATIN_RE = re.compile("[A-Za-z\u00c0-\u024f\u1e00-\u1eff]")
_LETTER_RE = re.compile(r"[^\W\d_]")
_SPACE_RE = re.compile(r"\s")
_CJK_RE = re.compile(f"[{CJK}]")

# A token is a URL, a run of alphabetic letters, one CJK character (CJK has no spaces, so a
# character is the closest unit to a word), or a number.
TOKEN_RE = re.compile(
    rf"https?://[!-~]+|www\.[!-~]+|[{CJK}]|[A-Za-z\u00c0-\u024f\u1e00-\u1eff\u0370-\u04ff'’]+|\d+"
)
LATIN_WORD_RE = re.compile(r"[A-Za-z\u00c0-\u024f\u1e00-\u1eff]+(?:['’][A-Za-z]+)?")

# One CJK character carries about as much as three Latin characters (a Chinese translation
# of an English text is roughly a third as long in characters), so lengths weigh it 3.
CJK_CHAR_WEIGHT = 3


def _decode_range(codec: str, leads: range, trails: list[int]) -> set[str]:
    chars = set()
    for hi in leads:
        for lo in trails:
            try:
                chars.add(bytes((hi, lo)).decode(codec))
            except UnicodeDecodeError:
                continue
    return chars


# Frequently used Chinese characters: GB2312 level 1 (3,755 simplified characters, bytes
# B0A1-D7F9) and Big5 level 1 (5,401 traditional characters, bytes A440-C67E).
COMMON_SIMPLIFIED = frozenset(_decode_range("gb2312", range(0xB0, 0xD8), list(range(0xA1, 0xFF))))
COMMON_HAN = COMMON_SIMPLIFIED | frozenset(
    c
    for c in _decode_range("big5", range(0xA4, 0xC7), [*range(0x40, 0x7F), *range(0xA1, 0xFF)])
    if "\u3400" <= c <= "\u9fff"
)


# The most frequent Chinese characters, most frequent first (modern Chinese character
# frequency lists agree closely on this head). Used to pick the likeliest reading of a
# byte that a mis-decoding destroyed.
FREQUENT_HAN = (
    "的一是不了在人有我他这个们中来上大为和国地到以说时要就出会可也你对生能而子那得于着下自之年过发后作里"
    "用道行所然家种事成方多经么去法学如都同现当没动面起看定天分还进好小部其些主样理心她本前开但因只从想实"
    "日军者意无力它与长把机十民第公此已工使情明性知全三又关点正业外将两高间由问很最重并物手应战向头文体政"
    "美相见被利什二等产或新己制身果加西斯月话合回特代内信表化老给世位次度门任常先海通教儿原东声提立及比员"
    "解水名真论处走义各入几口认条平系气题活尔更别打女变四神总何电数安少报才结反受目太量再感建务做接必场件"
    "计管期市直德资命山金指克许统区保至队形社便空决治展马科司五基眼书非则听白却界达光放强即像难且权思王象"
    "完设式色路记南品住告类求据程北边死张该交规万取拉格望觉术领共确传师观清今切院让识候带导争运笑飞风步改"
    "收根干造言联持组每济车亲极林服快办议往元英士证近失转夫令准布始怎呢存未远叫台单影具罗字爱击流备兵连调"
    "深商算质团集百需价花党华城石级整府离况亚请技际约示复病息究线似官火断精满支视消越器容照须九增研写称企"
    "八功吗包片史委乎查轻易早曾除农找装广显吧阿李标谈吃图念六引历首医局突专费号尽另周较注语仅考落青随选列"
    "武红响虽推势参希古众构房半节土投某案黑维革划敌致陈律足态护七兴派孩验责营星够章音跟志底站严巴例防族供"
    "效续施留讲型料终答紧黄绝奇察母京段依批群项故按河米围江织害斗双境客纪采举杀攻父苏密低朝友诉止细愿千值"
    "仍男钱破网热助倒育属坐帝限船脸职速刻乐否刚威毛状率甚独球般普怕弹校苦创假久错承印晚兰试股拿脑预谁益阳"
    "若哪微尼继送急血惊伤素药适波夜省初喜卫源食险待述陆习置居劳财环排福纳欢雷警获模充负云停木游龙树疑层冷"
    "洲冲射略范竟句室异激汉村哈策演简卡罪判担州静退既衣您宗积余痛检差富灵协角占配征修皮挥胜降阶审沉坚善妈"
    "刘读啊超免压银买皇养伊怀执副乱抗犯追帮宣佛岁航优怪香著田铁控税左右份穿艺背阵草脚概恶块顿敢守酒岛托央"
    "户烈洋哥索胡款靠评版宝座释景顾弟登货互付伯慢欧换闻危忙核暗姐介坏讨丽良序升监临亮露永呼味野架域沙掉括"
    "舰鱼杂误湾吉减编楚肯测败屋跑梦散温困剑渐封救贵枪缺楼县尚毫移娘朋画班智亦耳恩短掌恐遗固席松秘谢鲁遇康"
    "虑幸均销钟诗藏赶剧票损忽巨炮旧端探湖录叶春乡附吸予礼港雨呀板庭妇归睛饭额含顺输摇招婚脱补谓督毒油疗旅"
    "泽材灭逐莫笔亡鲜词圣择寻厂睡博勒烟授诺伦岸奥唐卖俄炸载洛健堂旁宫喝借君禁阴园谋宋避抓荣姑孙逃牙束跳顶"
)
HAN_RANK = {c: i for i, c in enumerate(FREQUENT_HAN)}


def count(pattern: re.Pattern[str], text: str) -> int:
    return len(pattern.findall(text))


@dataclass(frozen=True, slots=True)
class ScriptCounts:
    han: int
    kana: int
    hangul: int
    cyrillic: int
    latin: int
    letters: int  # every Unicode letter, CJK included
    non_space: int


def script_counts(text: str) -> ScriptCounts:
    return ScriptCounts(
        han=count(_HAN_RE, text),
        kana=count(_KANA_RE, text),
        hangul=count(_HANGUL_RE, text),
        cyrillic=count(_CYRILLIC_RE, text),
        latin=count(_LATIN_RE, text),
        letters=count(_LETTER_RE, text),
        non_space=len(text) - count(_SPACE_RE, text),
    )


def weighted_length(text: str) -> int:
    """Length in Latin-character equivalents: CJK characters count CJK_CHAR_WEIGHT each."""
    cjk = count(_CJK_RE, text)
    return len(text) - cjk + CJK_CHAR_WEIGHT * cjk


def han_chars(text: str) -> list[str]:
    return _HAN_RE.findall(text)


def common_han_share(chars: list[str], common: frozenset[str] = COMMON_HAN) -> float:
    """Share of Han characters that are in `common`; 1.0 when there are none."""
    if not chars:
        return 1.0
    return sum(1 for c in chars if c in common) / len(chars)


def tokens(text: str) -> list[str]:
    return [t.lower() for t in TOKEN_RE.findall(text)]
