import pytest

from lmforge.data.document import Document
from lmforge.data.htmltext import extract_html
from lmforge.data.mojibake import mojibake_score, repair_mojibake
from lmforge.data.steps.normalize import Normalizer, normalize_text

ZH = "今天师傅是不是手抖了，微辣格外辣！电池续航很好，物流也快。"
EN = "I don’t think it’s worth €50 — the café said so."


def garble(text: str, codec: str) -> str:
    return text.encode("utf-8").decode(codec, errors="replace")


@pytest.mark.parametrize("codec", ["latin-1", "cp1252"])
def test_utf8_read_as_single_byte_codec_is_restored(codec):
    assert repair_mojibake(garble(EN, codec)) == EN
    fixed = repair_mojibake(garble(ZH, codec))
    # cp1252 destroys five byte values (U+FFFD): those characters are guessed from a
    # frequency prior; nearly all of the text comes back and no garbled fragment is left.
    same = sum(a == b for a, b in zip(fixed, ZH, strict=True))
    assert same >= len(ZH) - 2
    assert mojibake_score(fixed) == 0


def test_gbk_mojibake_of_chinese_is_restored():
    assert garble("屏幕清晰", "gbk") == "灞忓箷娓呮櫚"
    assert repair_mojibake("灞忓箷娓呮櫚") == "屏幕清晰"
    # Bytes the GBK decoder rejected became U+FFFD; those characters are guessed, the rest
    # of the text and its length come back.
    garbled = garble(ZH, "gbk")
    fixed = repair_mojibake(garbled)
    assert len(fixed) == len(ZH)
    assert sum(a == b for a, b in zip(fixed, ZH, strict=True)) >= 0.8 * len(ZH)
    assert not set(garbled) - set(ZH) & set(fixed)  # no garbled character survives


def test_garbled_span_inside_good_text_is_repaired_in_place():
    text = "物流很快，" + garble("屏幕清晰", "gbk") + "，推荐购买。" + garble(" Don’t", "cp1252")
    assert repair_mojibake(text) == "物流很快，屏幕清晰，推荐购买。 Don’t"


@pytest.mark.parametrize(
    "clean",
    [
        ZH,
        EN,
        "Ærø naïve façade, Straße, São Paulo, ¿Qué tal? ¡Olé! 3×4 ½ © 2024",
        "魚香油太多,有點不好收拾,還沒筷子",  # traditional characters
        "送歺太慢！",
    ],
)
def test_clean_text_is_left_alone(clean):
    assert repair_mojibake(clean) == clean


def test_normalize_applies_nfkc_and_removes_controls_and_extra_space():
    text, fixes = normalize_text(
        "ＡＢＣ１２３，好\u200b的\x00\n\n\n  two   spaces\t\ttab \u3000end "
    )
    assert text == "ABC123,好的\ntwo spaces tab end"
    assert {"nfkc", "control_chars_removed"} <= set(fixes)


def test_normalize_repairs_mojibake_before_nfkc():
    # NFKC would turn "¼" (a byte of "，" in cp1252 mojibake) into "1⁄4" and lose the bytes.
    text, fixes = normalize_text(garble("好，", "latin-1"))
    assert text == "好,"
    assert fixes[0] == "mojibake_repaired"


def test_markup_in_text_sources_is_stripped_with_its_chrome():
    text, fixes = normalize_text(
        'Great <b>phone</b>,<br>battery ok &amp; cheap <nav class="x">Home | Shop</nav>'
        "<script>track()</script>"
    )
    assert text == "Great phone,\nbattery ok & cheap"
    assert "markup_stripped" in fixes


def test_escaped_markup_is_stripped_too():
    assert normalize_text("Nice &lt;br/&gt;&lt;br/&gt; kettle")[0] == "Nice\nkettle"


def test_prose_with_angle_brackets_is_not_markup():
    assert normalize_text("I <3 it, a < b and c > d")[0] == "I <3 it, a < b and c > d"


def test_normalizer_keeps_original_text_for_rejected_shards():
    doc = Document(id="1", text="ＡＢＣ  d", source="s")
    Normalizer().transform(doc)
    assert doc.text == "ABC d" and doc.raw_text == "ＡＢＣ  d"


def test_extractor_prefers_article_over_main_and_drops_link_lists():
    page = (
        "<main><h1>Title</h1><p>Byline</p><article><p>Body one.</p>"
        "<p><a>l1</a> <a>l2</a> <a>l3</a></p><p>See <a>this</a> too, it is long text.</p>"
        "</article></main><p>outside</p>"
    )
    assert extract_html(page).text == "Body one.\nSee this too, it is long text."


def test_extractor_without_content_marks_keeps_the_body_minus_chrome():
    page = (
        '<body><div id="sidebar">side</div><div role="navigation">nav</div>'
        '<p>Real text.</p><div aria-hidden="true">hidden</div></body>'
    )
    assert extract_html(page).text == "Real text."


def test_empty_article_means_no_content():
    page = "<main><h1>Kettle review</h1><p>anna 2024</p><article></article></main>"
    assert extract_html(page).text == ""
