import pytest

from lmforge.data.document import Document
from lmforge.data.steps.base import BaseFilter
from lmforge.data.steps.language import LanguageFilter, detect_language
from lmforge.data.steps.quality import (
    BoilerplateFilter,
    GibberishFilter,
    LengthFilter,
    LetterRatioFilter,
    MojibakeFilter,
    RepetitionFilter,
)
from lmforge.errors import ConfigError


def verdict(step: BaseFilter, text: str, content: str | None = None) -> str | None:
    """None if kept, else the drop reason."""
    return step.process(Document(id="d", text=text, source="s", content=content))


def test_length_counts_cjk_characters_as_more_than_one():
    f = LengthFilter(min_chars=8, max_chars=50)
    assert verdict(f, "") == "empty"
    assert verdict(f, "ok") == "too_short"
    assert verdict(f, "不错") == "too_short"
    assert verdict(f, "还不错") is None  # three characters say as much as "Not bad"
    assert verdict(f, "Not bad") == "too_short"
    assert verdict(f, "Not bad!") is None
    assert verdict(f, "x" * 51) == "too_long"


def test_template_records_are_judged_on_their_free_text():
    f = LengthFilter(min_chars=8, max_chars=500)
    assert verdict(f, "Kettle (Home), web: ok", content="ok") == "too_short"
    assert verdict(f, "Kettle (Home), web: boils fast", content="boils fast") is None


def test_letter_ratio_drops_symbol_soup_but_not_emphasis_or_times():
    f = LetterRatioFilter(0.5)
    assert verdict(f, "$9os$==4n-|*s~uk!paxwrp23+m%9sf=-f9m?k$7") == "low_letter_ratio"
    assert verdict(f, "4535585993995022345306960997977467") == "low_letter_ratio"
    assert verdict(f, "Great!!!!!!!!!! Love it........") is None
    assert verdict(f, "16:41才接到电话,16:45才送到") is None


def test_repetition_drops_spam_and_keeps_emphatic_reviews():
    f = RepetitionFilter(0.3)
    spam = "Buy now at http://deals.example.com/x! " * 8
    assert verdict(f, spam) == "repeated_ngram"
    assert verdict(f, "点击链接领取优惠券 http://t.example.cn/x8K2!" * 6) == "repeated_ngram"
    assert verdict(f, "\n".join(["Follow me for more", "great deal"] * 3)) == "duplicate_lines"
    assert verdict(f, "好好好好好好好好") == "repeated_ngram"
    assert verdict(f, "好吃。速度快,哈哈哈哈哈哈") is None
    assert verdict(f, "特别好吃,量特大,而且送餐特别快,特别特别棒") is None
    assert (
        verdict(f, "新家买了台电饭煲,说不上好也说不上坏,说不上好也说不上坏。后续再来追评。") is None
    )
    review = (
        "The battery is great and the screen is great. The battery lasts two days, "
        "the screen is sharp, and the price is fair."
    )
    assert verdict(f, review) is None


def test_boilerplate_only_documents_are_dropped():
    f = BoilerplateFilter()
    assert verdict(f, "Home | Shop | Deals | Account | Cart") == "boilerplate"
    assert verdict(f, "We use cookies to improve your experience. Accept all") == "boilerplate"
    assert (
        verdict(f, "首页 | 商城 | 优惠 | 我的订单 | 购物车 猜你喜欢:热销榜 | 新品推荐")
        == "boilerplate"
    )
    assert verdict(f, "Loading... Please enable JavaScript to view the comments.") == "boilerplate"
    assert verdict(f, 'function(){var a = "x"; window.dataLayer.push({a:1});}') == "boilerplate"
    assert verdict(f, '<div class="nav"><a href="/">Home</a></div><br/>') == "boilerplate"


@pytest.mark.parametrize(
    "review",
    [
        "These cookies taste great and arrived fresh.",
        "I can't sign in to the app since the update, support never answered.",
        "The privacy screen protector scratches easily but fits well.",
        "Battery, screen, camera: all good / fast delivery.",
        "登录不了，客服也不回复。",
        "Home delivery was quick and the box was intact.",
        "在<魔鬼出没的世界>之前.标题好象显示不出来.",  # a title in angle brackets is no tag
        "看完了<步步惊心>，心中深藏的情感似乎很淡薄，只是世事已尽的感慨。",
    ],
)
def test_reviews_that_mention_web_words_are_kept(review):
    assert verdict(BoilerplateFilter(), review) is None


def test_gibberish_is_dropped_and_real_text_kept():
    f = GibberishFilter()
    assert verdict(f, "vbzmznzvzzcvvzvccmcvmnxxxmcbnxvcm") == "few_vowels"
    assert verdict(f, "asdfgh jklqwe asdf qwer zxcv lkjhg") == "unpronounceable"
    assert verdict(f, "lnp zfq rrqz wtk") == "unpronounceable"
    assert verdict(f, "m&qw&lbzu87x*!a+tuo&b&+%!9b6f!hg9i~$2pp#ea") == "symbol_soup"
    assert verdict(f, "weeeeiyiwoeyoeotopwuyrwyqwituquioiyyipqtoupyyeu") == "unpronounceable"
    assert verdict(f, "鐢垫睜缁鑸寰堝ソ鐗╂祦") == "rare_characters"
    assert (
        verdict(f, "Its strengths are worthwhile: a steady rhythm and twelfth-gen chips.") is None
    )
    assert verdict(f, "蒙牛冠益乳很好吃 我在:http:t.cn/zjvN4Md") is None
    assert verdict(f, "The TP-LINK TL-WR886N router works fine.") is None
    assert verdict(f, "The stitching felt tight.") is None
    assert verdict(f, "好吃~~~还不贵~~~还比预计的时间早~~~") is None
    assert verdict(f, "I paid $5 + $3 = $8 for both, mail me@example.com") is None


def test_unrepaired_mojibake_is_dropped():
    assert verdict(MojibakeFilter(), "The ä¸­æ–‡ text Ã© is broken Ã¨") == "unrepaired_mojibake"
    assert verdict(MojibakeFilter(), "Ærø café naïve, ½ price") is None


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("电池续航很好，物流也快。", "zh"),
        ("我买了 iPhone 15 Pro Max，拍照很清楚", "zh"),
        ("魚香油太多,有點不好收拾", "zh"),
        ("The battery lasts two days and the screen is sharp.", "en"),
        ("Great phone, fast delivery.", "en"),
        ("cold movie", "en"),
        ("Der Akku hält nicht lange und das Display ist zu dunkel.", "other"),
        ("La batterie ne tient pas et l'écran est trop sombre.", "other"),
        ("No recomiendo esta aspiradora, hace demasiado ruido.", "other"),
        ("Батарея держит плохо, экран слишком тёмный.", "other"),
        ("このイヤホンは音がとても良いです。", "other"),
        ("배터리가 오래가고 화면이 선명해요.", "other"),
    ],
)
def test_detect_language(text, lang):
    assert detect_language(text) == lang


def test_language_filter_sets_lang_and_keeps_configured_languages():
    doc = Document(id="d", text="Der Akku hält nicht lange, leider.", source="s")
    assert LanguageFilter(["zh", "en"]).process(doc) == "lang_other"
    assert doc.lang == "other"
    assert LanguageFilter(["en", "other"]).process(doc) is None
    with pytest.raises(ConfigError, match=r"'de' cannot be detected; use zh, en, other"):
        LanguageFilter(["en", "de"])
