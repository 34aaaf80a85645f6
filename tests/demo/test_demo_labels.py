"""Labels: balanced, bilingual, compositional, and learnable but not trivially."""

import random
import re
from collections import Counter

import numpy as np

from lmforge.demo.reviews import GRAMMARS, LABELS, Clause, compose_review, label_for

TOKEN = re.compile(r"[a-z']+|[\u4e00-\u9fff]")  # English words, Chinese characters


def test_no_class_dominates(noisy_corpus):
    counts = Counter(t["label"] for t in noisy_corpus.truth)
    assert set(counts) == set(LABELS)
    assert max(counts.values()) / sum(counts.values()) <= 0.45


def test_both_languages_by_zh_share(noisy_corpus, tmp_path):
    langs = Counter(t["lang"] for t in noisy_corpus.truth)
    assert abs(langs["zh"] - langs["en"]) < 200 and langs["other"] > 0


def _train_naive_bayes(texts, labels):
    vocab: dict[str, int] = {}
    rows = [[vocab.setdefault(w, len(vocab)) for w in TOKEN.findall(t.lower())] for t in texts]
    counts = np.ones((len(LABELS), len(vocab)))
    prior = np.zeros(len(LABELS))
    for row, label in zip(rows, labels, strict=True):
        k = LABELS.index(label)
        prior[k] += 1
        np.add.at(counts[k], row, 1)
    return vocab, np.log(counts / counts.sum(1, keepdims=True)), np.log(prior / prior.sum())


def _predict(model, text):
    vocab, log_word, log_prior = model
    ids = [vocab[w] for w in TOKEN.findall(text.lower()) if w in vocab]
    return LABELS[int(np.argmax(log_prior + log_word[:, ids].sum(1)))]


def test_bag_of_words_learns_the_task_but_not_perfectly(clean_corpus):
    """A unigram naive Bayes beats the majority class clearly, yet negation, contrast and
    hedges keep it far from perfect (and ~3% of labels are flipped annotator noise)."""
    docs = [clean_corpus.docs[t["id"]] for t in clean_corpus.truth]
    train, test = docs[:2000], docs[2000:]
    model = _train_naive_bayes([d.rendered for d in train], [d.label for d in train])
    accuracy = np.mean([_predict(model, d.rendered) == d.label for d in test])
    majority = max(Counter(d.label for d in test).values()) / len(test)
    assert accuracy > majority + 0.25, (accuracy, majority)
    assert accuracy < 0.95, accuracy


def test_label_is_not_readable_off_one_keyword(clean_corpus):
    """Even the most telling single token predicts its best label in well under 90% of docs."""
    by_token: dict[str, Counter] = {}
    for t in clean_corpus.truth:
        for token in set(TOKEN.findall(clean_corpus.docs[t["id"]].text.lower())):
            by_token.setdefault(token, Counter())[t["label"]] += 1
    frequent = {tok: c for tok, c in by_token.items() if sum(c.values()) >= 100}
    purity = {tok: max(c.values()) / sum(c.values()) for tok, c in frequent.items()}
    assert max(purity.values()) < 0.9, max(purity, key=purity.get)


def test_composed_reviews_use_negation_and_contrast():
    rng = random.Random(0)
    wanted = LABELS * 300
    for lang, cues in (
        ("en", ("n't", "at all", ", but", "Although")),
        ("zh", ("并不", "一点也不", "但", "虽然")),
    ):
        reviews = [compose_review(rng, lang, label) for label in wanted]
        text = " ".join(r.text for r in reviews)
        assert all(cue in text for cue in cues)
        # The computed label is the requested one, except when no draft could reach it.
        assert np.mean([r.label == w for r, w in zip(reviews, wanted, strict=True)]) > 0.97


def test_the_clause_after_but_decides():
    rng = random.Random(0)
    grammar = GRAMMARS["en"]
    praise, complaint = Clause("it looks great", 1.0), Clause("it died after a week", -1.0)
    text, score = grammar.contrast(rng, praise, complaint)
    assert label_for(score) == "negative" and text.index("looks") < text.index("died")
    _, score = grammar.contrast(rng, complaint, praise)
    assert label_for(score) == "positive"
    # A hedged last clause only balances a strong first one: neutral.
    _, score = grammar.contrast(rng, Clause("it is really great", 1.5), Clause("a bit slow", -0.5))
    assert label_for(score) == "neutral"


def test_neutral_band():
    assert label_for(0.0) == label_for(0.5) == label_for(-0.5) == "neutral"
    assert label_for(1.0) == "positive" and label_for(-1.0) == "negative"
