"""The quality floor a trained model must beat: TF-IDF n-grams + logistic regression.

Measured on the same train/eval split as the model, so the report can say whether the
transformer earns its cost over a linear bag-of-n-grams classifier.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

BASELINE_METHOD = "tfidf char_wb 1-3 grams + logistic regression"


def tfidf_baseline(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    eval_texts: Sequence[str],
    eval_labels: Sequence[str],
) -> dict[str, Any]:
    """Fit on the training split, score accuracy on the eval split.

    Character n-grams within word boundaries work for both Chinese (no spaces) and English.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    vectorizer = TfidfVectorizer(
        analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, min_df=2, max_features=200_000
    )
    features = vectorizer.fit_transform(train_texts)
    classifier = LogisticRegression(C=4.0, max_iter=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny fixtures
        classifier.fit(features, list(train_labels))
    predicted = classifier.predict(vectorizer.transform(eval_texts))
    correct = sum(int(p == g) for p, g in zip(predicted, eval_labels, strict=True))
    return {
        "method": BASELINE_METHOD,
        "accuracy": correct / max(len(eval_labels), 1),
        "features": int(features.shape[1]),
        "seconds": time.perf_counter() - started,
    }
