"""Planted noise: rate, ground-truth tags, markers on disk, identifiers, duplicates."""

import difflib
import re
import unicodedata
from collections import Counter, defaultdict

import pytest

from lmforge.config import CorpusConfig
from lmforge.demo import generate_corpus
from lmforge.text.identifiers import cn_id_valid, luhn_valid

REMOVAL = {"html_junk", "too_short", "gibberish", "wrong_language", "spam"}
CJK = r"\u4e00-\u9fff"
PII_KINDS = {"email", "cn_mobile", "cn_landline", "e164", "cn_id", "bank_card", "ipv4", "ipv6"}


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def test_noisy_share_matches_noise_rate(noisy_corpus):
    share = sum(bool(t["noise"]) for t in noisy_corpus.truth) / len(noisy_corpus.truth)
    assert abs(share - 0.37) <= 0.02
    assert noisy_corpus.meta["noise_rate"] == pytest.approx(share, abs=1e-4)


@pytest.mark.parametrize("rate", [0.1, 0.6])
def test_noisy_share_follows_other_rates(tmp_path, rate):
    stats = generate_corpus(tmp_path, CorpusConfig(docs=1000, noise_rate=rate, seed=5))
    assert abs(stats["noise_rate"] - rate) <= 0.02


def test_noise_rate_zero_plants_nothing(clean_corpus):
    assert not any(t["noise"] or t["markers"] or t["dup_group"] for t in clean_corpus.truth)
    assert clean_corpus.meta["noise_rate"] == 0.0


def test_every_kind_is_planted_and_some_documents_have_two(noisy_corpus):
    kinds = {k for t in noisy_corpus.truth for k in t["noise"]}
    assert kinds == REMOVAL | {"exact_duplicate", "near_duplicate", "pii", "mojibake"}
    pairs = {tuple(t["noise"]) for t in noisy_corpus.truth if len(t["noise"]) == 2}
    assert ("near_duplicate", "pii") in pairs and ("pii", "mojibake") in pairs


def test_markers_are_literally_in_the_files_on_disk(noisy_corpus):
    checked = defaultdict(int)
    for t in noisy_corpus.truth:
        doc = noisy_corpus.docs[t["id"]]
        for marker in t["markers"]:
            # For a page that is the HTML file itself, for a post its JSON line.
            assert marker in doc.raw, (t["id"], marker)
            assert marker in doc.text
            checked[t["source"]] += 1
        # Markers exactly for the kinds that have them.
        assert bool(t["markers"]) == bool({"pii", "mojibake"} & set(t["noise"])), t
    assert set(checked) == {"web", "posts", "records_csv", "records_sql"}


def _identifier_kind(value: str) -> str:
    digits = re.sub(r"[ ()+-]", "", value)
    if "@" in value:
        return "email"
    if re.fullmatch(r"\d{17}[\dX]", value) and cn_id_valid(value):
        return "cn_id"  # an 18-digit card number fails this check and is tested below
    if re.fullmatch(r"(\+86 )?1[3-9]\d(( |-)?\d{4}){2}", value):
        return "cn_mobile"
    if re.fullmatch(r"(0\d{2,3}-|\(0\d{2,3}\))[2-8]\d{6,7}", value):
        return "cn_landline"
    if value.startswith("+"):
        assert re.fullmatch(r"\+\d{1,3}( ?\d{1,4})+", value), value
        return "e164"
    if re.fullmatch(r"(\d{1,3}\.){3}\d{1,3}", value):
        assert all(int(part) < 256 for part in value.split("."))
        return "ipv4"
    if ":" in value:
        assert re.fullmatch(r"[0-9a-f:]+", value) and value.count(":") >= 2, value
        return "ipv6"
    assert 16 <= len(digits) <= 19 and luhn_valid(digits), value
    return "bank_card"


def test_pii_markers_are_structurally_valid_identifiers(noisy_corpus):
    kinds = set()
    for t in noisy_corpus.truth:
        if "pii" in t["noise"] and "mojibake" not in t["noise"]:
            pii_markers = t["markers"]
        elif "pii" in t["noise"]:
            pii_markers = [m for m in t["markers"] if m.isascii()]
        else:
            continue
        kinds.update(_identifier_kind(m) for m in pii_markers)
    assert kinds == PII_KINDS


def test_mojibake_markers_exist_only_in_garbled_text(noisy_corpus):
    clean_ids = {t["id"] for t in noisy_corpus.truth if not t["noise"]}
    clean_text = " ".join(noisy_corpus.docs[i].text for i in clean_ids)
    for t in noisy_corpus.truth:
        if t["noise"] == ["mojibake"]:
            for marker in t["markers"]:
                assert marker not in clean_text
                assert all(ch.isprintable() and not ch.isascii() for ch in marker)


def test_duplicate_groups_copy_one_clean_original(noisy_corpus):
    groups = defaultdict(list)
    for t in noisy_corpus.truth:
        if t["dup_group"]:
            groups[t["dup_group"]].append(t)
    assert len(groups) == noisy_corpus.meta["dup_groups"] > 20
    cross_source = 0
    for members in groups.values():
        originals = [m for m in members if not m["noise"]]
        assert len(originals) == 1, members
        original = noisy_corpus.docs[originals[0]["id"]]
        for m in members:
            if m is originals[0]:
                continue
            copy = noisy_corpus.docs[m["id"]]
            assert m["label"] == originals[0]["label"]
            cross_source += copy.source != original.source
            if "exact_duplicate" in m["noise"]:
                assert _norm(copy.rendered) == _norm(original.rendered)
            else:
                assert "near_duplicate" in m["noise"]
                assert _norm(copy.rendered) != _norm(original.rendered)
                matcher = difflib.SequenceMatcher(None, copy.text, original.text, autojunk=False)
                floor = 0.5 if "pii" in m["noise"] else 0.75  # a PII sentence adds more
                assert matcher.ratio() > floor, (copy.text, original.text)
    assert cross_source > 10


def test_some_exact_duplicates_differ_before_normalisation(noisy_corpus):
    originals = {
        t["dup_group"]: t["id"] for t in noisy_corpus.truth if t["dup_group"] and not t["noise"]
    }
    variants = 0
    for t in noisy_corpus.truth:
        if t["noise"] == ["exact_duplicate"]:
            original = noisy_corpus.docs[originals[t["dup_group"]]]
            variants += noisy_corpus.docs[t["id"]].text != original.text
    assert variants > 10


def test_removal_kinds_look_like_what_they_are(noisy_corpus):
    for t in noisy_corpus.truth:
        text = noisy_corpus.docs[t["id"]].text
        if "too_short" in t["noise"]:
            assert len(text) <= 5
        if "wrong_language" in t["noise"] or "gibberish" in t["noise"]:
            assert t["lang"] == "other"
        if "wrong_language" in t["noise"]:
            assert not re.search(f"[{CJK}]", text) or re.search(r"[\u3040-\u30ff]", text)
        if "spam" in t["noise"]:
            grams = Counter(text[i : i + 6] for i in range(len(text) - 5))
            assert grams.most_common(1)[0][1] >= 6, text
        assert t["source"] in ("web", "posts") or not REMOVAL & set(t["noise"])


def test_chinese_reviews_have_no_spaces_between_words(clean_corpus):
    zh = [t["id"] for t in clean_corpus.truth if t["lang"] == "zh"]
    assert len(zh) > 1000
    for doc_id in zh:
        text = clean_corpus.docs[doc_id].text
        assert not re.search(f"[{CJK}，。] +[{CJK}]", text), text
        assert len(re.findall(f"[{CJK}]", text)) > 0.6 * len(re.findall(r"\w", text)), text
