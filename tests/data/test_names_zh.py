"""The shipped Chinese name tagger: names in hand-written sentences, none in plain reviews,
exact offsets in long mixed text, and held-out MSRA F1 when the corpus is available."""

from pathlib import Path

import pytest

from lmforge.data.names import find_chinese_names, find_person_names, zh_names
from lmforge.data.names.msra import read_msra, span_score, split_sentences, tag_spans
from lmforge.data.names.zh_names import chunks, get_tagger

MSRA = Path(__file__).resolve().parents[2].parent / "shared/data/chinese/msra_ner.zip"


def names(text: str) -> list[str]:
    return [text[a:b] for a, b in find_chinese_names(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("昨天张伟和李娜去了北京。", ["张伟", "李娜"]),
        ("我的同事王小明在上海工作，他下周要去出差。", ["王小明"]),
        ("记者刘洋报道，这家工厂今年的产量翻了一番。", ["刘洋"]),
        ("陈静老师表扬了班上的同学。", ["陈静"]),
        ("会议由赵建国主持，杨丽华做了发言。", ["赵建国", "杨丽华"]),
    ],
)
def test_finds_names_in_written_sentences(text, expected):
    assert names(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "这款手机电池很耐用，屏幕清晰，物流也很快，非常满意。",
        "味道一般，送餐太慢了，下次不会再点这家店。",
        "酒店位置很好，离地铁站很近，房间干净。",
        "no Chinese at all, only English text",
        "",
    ],
)
def test_no_names_in_plain_text(text):
    assert names(text) == []


def test_long_mixed_text_offsets_map_back():
    filler = "这款耳机音质不错，佩戴也很舒服。" * 30
    text = filler + "客服张伟回复很及时！" + filler + "\nCall John Smith today. 李娜也觉得好用。"
    spans = find_person_names(text)
    assert [text[a:b] for a, b in spans] == ["张伟", "John Smith", "李娜"]
    assert spans == sorted(spans)


def test_chunks_cover_text_and_stay_short():
    text = "第一句。第二句很长" + "，非常长" * 80 + "！最后一句没有标点"
    pieces = chunks(text)
    assert "".join(text[a:b] for a, b in pieces) == text
    assert all(0 < b - a <= zh_names.MAX_CHUNK for a, b in pieces)
    assert all(pieces[k][1] == pieces[k + 1][0] for k in range(len(pieces) - 1))


def test_text_without_cjk_never_loads_the_model(monkeypatch):
    def boom():
        raise AssertionError("model used on text without Chinese")

    monkeypatch.setattr(zh_names, "get_tagger", boom)
    assert find_chinese_names("Mr. Smith bought 3 apples, 2 pears.") == []


def test_batched_and_single_tagging_agree():
    tagger = get_tagger()
    texts = [
        "昨天张伟和李娜去了北京。",
        "好",
        "会议由赵建国主持，杨丽华做了发言，大家都很认真地听。",
    ]
    assert tagger.spans(texts) == [tagger.spans([t])[0] for t in texts]


def test_shipped_weights_are_small_and_surnames_cover_common_ones():
    tagger = get_tagger()
    assert zh_names.WEIGHTS.stat().st_size <= 3_000_000
    assert set("王李张刘陈杨黄赵吴周") <= tagger.surnames


@pytest.mark.skipif(not MSRA.is_file(), reason=f"MSRA NER data not found at {MSRA}")
def test_held_out_msra_per_f1():
    test = split_sentences(read_msra(MSRA)).test[:1000]
    predicted = get_tagger().spans([s.text for s in test])
    score = span_score([tag_spans(s.tags) for s in test], predicted)
    assert score.gold > 200
    assert score.f1 >= 0.88, score
