"""Small general word lists for language id, gibberish and boilerplate detection.

Frequent function words and everyday words of each language, not tuned to any corpus.
"""

from __future__ import annotations

import re


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


ENGLISH_COMMON = _words(
    """
    a about above after again against all also always am an and any are around as at away
    back bad be because been before being below best better between big both bought but buy
    by came can can't could day did didn't do does doesn't doing don't done down during each
    easy either enough even ever every far fast few first for found from full get gets getting
    give go goes going good got great had has hasn't have haven't having he her here hers him
    his how however i i'd i'll i'm i've if in into is isn't it it's its itself just keep kind
    know last least less like little long look looks lot lots love made make makes many may
    me might more most much must my myself need never new next nice no nor not nothing now of
    off often ok okay old on once one only or other our out over own perfect pretty quite
    rather really right said same say see seems she should since so some something still such
    sure take than thank thanks that that's the their them then there these they thing things
    think this those though through time to too took two under until up us use used using very
    want was wasn't way we well went were weren't what when where which while who why will
    with won't work works worked worth would wouldn't yes yet you you're your
    """
)

# Function words of other Latin-script languages, minus words that are also English.
FOREIGN_COMMON = (
    _words(
        """
    aber alle als auch auf bei bin bis das dass dem den der des dich diese dieser doch durch
    ein eine einem einen einer es für gut habe hat ich ihr ist jetzt kann kein keine mich mir
    mit nach nicht noch nur oder sehr sich sie sind uns und von war wenn werden wie wir wird
    zu zum zur schon leider immer ganz
    au aux avec ce cette ces comme dans des du elle est et être ici il ils je la le les leur
    mais mes moi mon même nous où par pas peu plus pour qu que qui sans ses son sont sur
    très trop tout tous une vous bien était été avoir fait
    al algo como con del ella ellos en era es esta está este esto estos fue hay las los más
    mi muy nada nos para pero por porque qué sin sobre su sus también tiene todo una uno
    bueno buena mucho muy
    anche che della delle di gli il lo molto nella non per più questo sono è
    ao com da das de do dos em isso mais muito não os para por que se um uma você
    """
    )
    - ENGLISH_COMMON
    - {"war", "hat", "pour", "per", "plus", "con", "bin"}
)

_VOWELS = "aeiouyàáâãäåæèéêëìíîïòóôõöøùúûüýÿœ"
VOWEL_RE = re.compile(f"[{_VOWELS}]", re.IGNORECASE)
CONSONANT_RUN_RE = re.compile(f"[^{_VOWELS}\\W\\d_]{{6,}}", re.IGNORECASE)  # "worthwhile" has 5
SAME_CHAR_RUN_RE = re.compile(r"(\w)\1\1")

_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
KEYBOARD_RUNS = frozenset(
    row[i : i + 4]
    for base in _KEYBOARD_ROWS
    for row in (base, base[::-1])
    for i in range(len(row) - 3)
) - {"erty"}  # "property", "liberty"

# Page chrome that ordinary prose (a review of an app, of cookies, ...) hardly ever says.
# One hit makes a short line boilerplate; two hits make any line boilerplate.
BOILERPLATE_PHRASES = re.compile(
    r"\b(?:we|this (?:site|website)) uses? cookies\b|\b(?:accept|allow|reject|manage|"
    r"necessary|essential|third[- ]party) (?:all )?cookies\b|\bcookies? (?:policy|settings|"
    r"preferences|consent|notice)\b|improve (?:your|the) (?:browsing )?experience|"
    r"privacy (?:policy|statement|settings)|terms (?:of (?:use|service)|and conditions|"
    r"& conditions)|all rights reserved|copyright|©|\bshare (?:on|this|via|to)\b|"
    r"\bfollow us\b|subscribe to our|newsletter|\bcontact us\b|\babout us\b|"
    r"skip to (?:main )?content|back to top|site ?map|\bread more\b|"
    r"related (?:articles|posts|products|links|stories)|you may also like|"
    r"\bdownload (?:the|our) app\b|powered by|\baccept all\b|enable javascript|"
    r"forgot (?:your )?password|\b(?:sign|log) ?in to (?:see|view|read|write|comment|continue)|"
    r"manage (?:your )?(?:preferences|settings)|\bloading\.\.\.|"
    r"(?:使用|接受|允许|拒绝)\s*cookies?|版权所有|版权声明|隐私政策|隐私条款|使用条款|用户协议|"
    r"服务条款|免责声明|分享到|分享至|关注我们|联系我们|关于我们|返回顶部|网站地图|上一篇|下一篇|"
    r"相关推荐|相关阅读|猜你喜欢|热门推荐|下载APP|下载客户端|ICP备|公网安备|阅读全文|扫码关注|"
    r"(?:开启|启用)\s*JavaScript|忘记密码|登录后(?:查看|可见|评论)|管理偏好|正在加载|加载中\.\.\.|"
    r"复制链接",
    re.IGNORECASE,
)
NAV_SEPARATORS = re.compile(r"\s*(?:\||·|•|»|›|>)\s*")
MARKUP_RESIDUE = re.compile(
    r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]{0,300})?/?>|\{[^{}]*[:;][^{}]*\}|\bfunction\s*\(|\bvar\s+\w+\s*=|=\s*\"|"
    r"\b(?:px|em|rgba?)\b\s*[;)]|\bwindow\.\w+|\bdocument\.\w+"
)
