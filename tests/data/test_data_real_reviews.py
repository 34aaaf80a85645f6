"""False drops on real, human-written reviews (../shared/data): the filters must keep them.

Real reviews include very short ones, which the length rule drops by design; every other
rule should let through nearly all of them.
"""

import csv
from pathlib import Path

import pytest

from lmforge.config import DataConfig
from lmforge.data.clean import build_steps
from lmforge.data.document import Document

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared real data not found at {DATA}")


def drop_reasons(texts: list[str], lang: str) -> list[str]:
    reasons: list[str] = []
    docs = [Document(id=str(i), text=t, source="real") for i, t in enumerate(texts)]
    stream = iter(docs)
    for step in build_steps(DataConfig(dedup=False)):
        stream = step.run(stream, lambda doc, step, reason: reasons.append(f"{step}:{reason}"))
    kept = list(stream)
    assert all(d.lang == lang for d in kept)
    return reasons


def test_chinese_delivery_reviews_are_kept():
    with open(DATA / "chinese" / "waimai_10k.csv", encoding="utf-8") as fh:
        texts = [row["review"] for row in csv.DictReader(fh)][::4]
    reasons = drop_reasons(texts, "zh")
    other = [r for r in reasons if r != "length:too_short"]
    assert len(other) <= 0.005 * len(texts), other


def test_english_movie_review_snippets_are_kept():
    with open(DATA / "sst2" / "dev.tsv", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    col = rows[0].index("content") if "content" in rows[0] else 1
    texts = [r[col] for r in rows[1:]]
    reasons = drop_reasons(texts, "en")
    other = [r for r in reasons if r != "length:too_short"]
    assert len(other) <= 0.01 * len(texts), other
