"""A learned noise model: hashed n-grams + logistic regression, trained on weak labels.

The rule filters label the corpus for free: what they rejected is noisy, what they kept is
clean (both with errors). A linear model over hashed character 1-3-grams (CJK has no spaces,
so characters carry the signal there) and word 1-2-grams learns what those documents have
in common and generalises to noise that no rule names. A few human labels can be mixed in
with a higher weight.

The hashing is stateless, so the fitted model is just a coefficient vector, an intercept and
the hashing parameters: `save` writes them to one `.npz` (arrays plus a JSON string), which
`load` reads back with allow_pickle=False. Workers rebuild the vectorizer from the params.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression

from lmforge.errors import ConfigError, InputDataError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class HashingParams:
    """How texts become features; everything a worker needs to rebuild the vectorizer."""

    char_ngrams: tuple[int, int] = (1, 3)
    word_ngrams: tuple[int, int] = (1, 2)
    char_features: int = 1 << 19
    word_features: int = 1 << 18

    def __post_init__(self) -> None:
        for name in ("char_ngrams", "word_ngrams"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ConfigError(f"noise model {name}=({low}, {high}): use 1 <= min <= max")
        for name in ("char_features", "word_features"):
            if getattr(self, name) < 2:
                raise ConfigError(f"noise model {name}={getattr(self, name)}: use at least 2")

    @property
    def n_features(self) -> int:
        return self.char_features + self.word_features

    def vectorizers(self) -> tuple[HashingVectorizer, HashingVectorizer]:
        # No alternating signs: every n-gram adds, so a collision merges two features rather
        # than cancelling them. Each block is l2-normalised, so length is not a feature here.
        common = {"alternate_sign": False, "norm": "l2", "lowercase": True, "dtype": np.float64}
        chars = HashingVectorizer(
            analyzer="char", ngram_range=self.char_ngrams, n_features=self.char_features, **common
        )
        words = HashingVectorizer(
            analyzer="word", ngram_range=self.word_ngrams, n_features=self.word_features, **common
        )
        return chars, words


def _transform(params: HashingParams, texts: Sequence[str]) -> sp.csr_matrix:
    chars, words = params.vectorizers()
    docs = list(texts)
    return sp.hstack([chars.transform(docs), words.transform(docs)], format="csr")


def _npz_path(path: Path | str) -> Path:
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def evaluate(pred: Sequence[bool], truth: Sequence[bool]) -> dict[str, Any]:
    """Precision, recall and F1 of the positive class ("noisy"); support = true positives in
    `truth`. A ratio with nothing to divide by (no predictions, no positives) is None."""
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise InputDataError(f"{len(p)} predictions for {len(t)} truth labels; pass one each")
    tp = int(np.sum(p & t))
    fp = int(np.sum(p & ~t))
    fn = int(np.sum(~p & t))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": tp + fn,
        "predicted": tp + fp,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def _pick_threshold(
    proba: np.ndarray, noisy: np.ndarray, min_precision: float, max_clean_rate: float
) -> float:
    """The lowest threshold (>= 0.5) at which the held-out weak labels show at least
    `min_precision` and at most `max_clean_rate` of the clean documents above it; lowest,
    because that keeps the most recall. With none, a threshold above every score."""
    order = np.argsort(-proba, kind="stable")
    ranked, hits = proba[order], noisy[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    clean_total = max(int((~noisy).sum()), 1)
    ok = (tp / np.arange(1, len(ranked) + 1) >= min_precision) & (
        fp / clean_total <= max_clean_rate
    )
    # A cut falls only between distinct scores: position i counts if the next score is lower.
    distinct = np.append(ranked[1:] < ranked[:-1], True)
    ok &= distinct & (ranked >= 0.5)
    if not ok.any():
        return 1.0 + 1e-9
    return float(ranked[np.flatnonzero(ok).max()])


class NoiseModel:
    """P(noisy | text) from a linear model over hashed n-grams, and a drop threshold.

    `threshold` is chosen at fit time on a held-out share of the weak labels (never trained
    on): the lowest probability at which the held-out precision on noise is at least
    `min_precision` (0.9) while at most `max_clean_rate` (0.5 %) of the held-out clean
    documents would be dropped; see `fit_report` for the held-out figures.
    """

    def __init__(
        self,
        coef: np.ndarray,
        intercept: float,
        params: HashingParams,
        threshold: float,
        fit_report: dict[str, Any] | None = None,
    ) -> None:
        coef = np.asarray(coef, dtype=np.float64).ravel()
        if len(coef) != params.n_features:
            raise InputDataError(
                f"noise model has {len(coef)} coefficients but its hashing params make "
                f"{params.n_features} features; refit and save it again"
            )
        self.coef = coef
        self.intercept = float(intercept)
        self.params = params
        self.threshold = float(threshold)
        self.fit_report = fit_report or {}

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        noisy: Sequence[bool],
        *,
        seed: int = 0,
        sample_weight: Sequence[float] | None = None,
        labelled: Sequence[tuple[str, bool]] = (),
        labelled_weight: float = 5.0,
        holdout: float = 0.2,
        min_precision: float = 0.9,
        max_clean_rate: float = 0.005,
        c: float = 4.0,
        params: HashingParams | None = None,
    ) -> NoiseModel:
        """Train on weak labels (`noisy[i]` for `texts[i]`) plus optional human `labelled`
        pairs, which go to training only, each weighing `labelled_weight`.

        A stratified `holdout` share of the weak labels is kept out of training to choose
        `threshold`. Deterministic for a given seed.
        """
        y = np.asarray(noisy, dtype=bool)
        if len(texts) != len(y):
            raise InputDataError(f"{len(texts)} texts but {len(y)} labels; pass one label each")
        weights = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, float)
        if weights.shape != y.shape or (weights < 0).any():
            raise InputDataError(
                f"sample_weight must hold {len(y)} non-negative numbers, one per text"
            )
        if not 0 < holdout < 1:
            raise ConfigError(f"noise model holdout={holdout}: use a share between 0 and 1")
        if not 0 < min_precision <= 1 or not 0 <= max_clean_rate <= 1:
            raise ConfigError(
                f"noise model min_precision={min_precision}, max_clean_rate={max_clean_rate}: "
                "both are shares in [0, 1] (min_precision > 0)"
            )
        n_noisy, n_clean = int(y.sum()), int((~y).sum())
        if min(n_noisy, n_clean) < 10:
            raise InputDataError(
                f"noise model needs at least 10 noisy and 10 clean weak labels, got {n_noisy} "
                f"noisy and {n_clean} clean; give it a larger sample"
            )
        params = params or HashingParams()

        # Stratified split: the same share of each class is held out.
        rng = np.random.default_rng(seed)
        held = np.zeros(len(y), dtype=bool)
        for cls_rows in (np.flatnonzero(y), np.flatnonzero(~y)):
            take = max(1, round(holdout * len(cls_rows)))
            held[rng.choice(cls_rows, size=take, replace=False)] = True
        train = ~held

        train_texts = [t for t, keep in zip(texts, train, strict=True) if keep]
        train_y = y[train]
        train_w = weights[train]
        if labelled:
            train_texts += [text for text, _ in labelled]
            train_y = np.append(train_y, [bool(label) for _, label in labelled])
            train_w = np.append(train_w, np.full(len(labelled), float(labelled_weight)))

        clf = LogisticRegression(C=c, solver="liblinear", random_state=seed, max_iter=200)
        clf.fit(_transform(params, train_texts), train_y, sample_weight=train_w)
        model = cls(clf.coef_[0], float(clf.intercept_[0]), params, threshold=0.5)

        held_texts = [t for t, keep in zip(texts, held, strict=True) if keep]
        proba = model.predict_proba(held_texts)
        model.threshold = _pick_threshold(proba, y[held], min_precision, max_clean_rate)
        at = evaluate(proba >= model.threshold, y[held])
        model.fit_report = {
            "train_docs": int(train.sum()),
            "labelled_docs": len(labelled),
            "holdout_docs": int(held.sum()),
            "holdout_noisy": int(y[held].sum()),
            "min_precision": min_precision,
            "max_clean_rate": max_clean_rate,
            "holdout_precision": at["precision"],
            "holdout_recall": at["recall"],
            "holdout_clean_dropped_rate": at["fp"] / max(int((~y[held]).sum()), 1),
        }
        return model

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        return _transform(self.params, texts) @ self.coef + self.intercept

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """P(noisy) per text."""
        if not len(texts):
            return np.zeros(0)
        z = np.clip(self.decision_function(texts), -50.0, 50.0)
        return 1.0 / (1.0 + np.exp(-z))

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """True where the text should be dropped (P(noisy) >= threshold)."""
        return self.predict_proba(texts) >= self.threshold

    def save(self, path: Path | str) -> Path:
        """One .npz (".npz" is appended when `path` lacks it): the non-zero coefficients, the
        intercept and a JSON string of the rest. Returns the path written."""
        path = _npz_path(path)
        index = np.flatnonzero(self.coef)
        meta = {
            "format_version": FORMAT_VERSION,
            "hashing": asdict(self.params),
            "threshold": self.threshold,
            "fit_report": self.fit_report,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            coef_index=index.astype(np.int64),
            coef_value=self.coef[index],
            intercept=np.array([self.intercept]),
            meta=np.array(json.dumps(meta)),
        )
        return path

    @classmethod
    def load(cls, path: Path | str) -> NoiseModel:
        """Read a model written by `save` (the same `path`, with or without ".npz")."""
        path = _npz_path(path)
        if not path.is_file():
            raise InputDataError(f"noise model not found: {path}; fit one and save it first")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                index, values = data["coef_index"], data["coef_value"]
                intercept = float(data["intercept"][0])
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version {meta.get('format_version')!r}")
            hashing = meta["hashing"]
            params = HashingParams(
                char_ngrams=tuple(hashing["char_ngrams"]),
                word_ngrams=tuple(hashing["word_ngrams"]),
                char_features=int(hashing["char_features"]),
                word_features=int(hashing["word_features"]),
            )
            coef = np.zeros(params.n_features)
            coef[index] = values
            threshold = float(meta["threshold"])
            if math.isnan(threshold):
                raise ValueError("threshold is NaN")
        except (KeyError, TypeError, ValueError, IndexError, OSError) as exc:
            raise InputDataError(
                f"{path} is not a saved noise model ({exc}); refit it and use NoiseModel.save"
            ) from None
        return cls(coef, intercept, params, threshold, meta.get("fit_report"))
