from lmforge.train.baseline import tfidf_baseline


def test_baseline_learns_a_character_ngram_rule_in_both_languages():
    good = ["这个很好用", "质量很好", "great value", "works great"]
    bad = ["这个太差了", "质量太差", "poor value", "works poorly"]
    train_texts = [t + f" {i}" for i in range(10) for t in good + bad]
    train_labels = (["good"] * 4 + ["bad"] * 4) * 10
    result = tfidf_baseline(train_texts, train_labels, ["服务很好", "服务太差"], ["good", "bad"])
    assert result["accuracy"] == 1.0
    assert result["features"] > 0 and result["seconds"] >= 0


def test_baseline_cannot_beat_chance_on_labels_unrelated_to_text():
    texts = [f"same words here {i % 3}" for i in range(60)]
    labels = ["a", "b"] * 30
    result = tfidf_baseline(texts[:40], labels[:40], texts[40:], labels[40:])
    assert result["accuracy"] <= 0.75
