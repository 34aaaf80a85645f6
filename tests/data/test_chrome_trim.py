"""Footers glued to a review are cut; the review stays, sentences that mention chrome stay."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from lmforge.config import DataConfig, SourceConfig
from lmforge.data.clean import clean_sources
from lmforge.data.document import Document
from lmforge.data.steps.chrome import ChromeTrimmer, trim_chrome, trim_trailing_chrome

CTRIP = (
    "房间以及环境都不错，用房卡到四楼还可以打折。就是退房时速度有点慢！免费注册 网站导航 宾馆索引 "
    "服务说明 关于携程 诚聘英才 代理合作 广告业务 联系我们Copyright? 1999-2008, ctrip.com. "
    "all rights reserved."
)


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        (CTRIP, "房间以及环境都不错，用房卡到四楼还可以打折。就是退房时速度有点慢！"),
        (
            "Great hotel, would stay again. Home About us Contact us Privacy policy © 2024 Foo",
            "Great hotel, would stay again.",
        ),
        (
            "The staff were friendly and the room was clean Privacy Policy Terms of Use Copyright",
            "The staff were friendly and the room was clean",
        ),
    ],
)
def test_a_glued_footer_is_cut(line, kept):
    assert trim_trailing_chrome(line) == kept


@pytest.mark.parametrize(
    "line",
    [
        "客服说联系我们就行，结果房间很脏。Copyright 2008",  # mostly a sentence
        "I used the contact us page and they answered within a day, great service.",
        "质量很好，物流也快，分享到微信了，朋友也说不错。",
        "We use cookies to improve your experience. Accept all",  # all chrome: the filter's job
        "Privacy Policy | Terms of Use | Contact us",
    ],
)
def test_sentences_and_pure_chrome_are_left_alone(line):
    assert trim_trailing_chrome(line) == line


def test_only_the_line_with_the_footer_changes():
    text = "First line stays.\n" + CTRIP + "\nLast line stays."
    lines = trim_chrome(text).split("\n")
    assert lines[0] == "First line stays." and lines[2] == "Last line stays."
    assert lines[1].endswith("速度有点慢！")


def test_step_counts_trimmed_documents_and_keeps_the_original():
    step = ChromeTrimmer()
    doc = Document(id="1", text=CTRIP, source="s")
    kept = list(step.run([doc, Document(id="2", text="plain review", source="s")], print))
    assert [d.id for d in kept] == ["1", "2"]
    assert doc.text.endswith("速度有点慢！") and doc.raw_text == CTRIP
    assert step.stats.events == {"trimmed": 1}


def test_the_cleaning_line_keeps_the_review_without_its_footer(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_text(json.dumps({"id": "r1", "text": CTRIP}, ensure_ascii=False) + "\n")
    out = tmp_path / "out"
    stats = clean_sources(
        [SourceConfig(name="reviews", path=str(path))],
        out,
        DataConfig(workers=1, anomaly={"enabled": False}, noise_model={"enabled": False}),
    )
    rows = pq.read_table(next((out / "clean").glob("part-*.parquet"))).to_pylist()
    # NFKC made the full-width comma and exclamation mark ASCII before the cut
    assert [r["text"] for r in rows] == [
        "房间以及环境都不错,用房卡到四楼还可以打折。就是退房时速度有点慢!"
    ]
    trim = next(f for f in stats["funnel"] if f["step"] == "trim_chrome")
    assert trim["events"] == {"trimmed": 1}
