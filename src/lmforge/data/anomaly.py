"""Statistical anomaly detection: per-document features, thresholds fitted on the corpus.

Three pure phases, so a sharded executor can run them apart (nothing here is pickled):

1. `document_features` / `batch_features` on each shard (with a `CharLanguageModel` fitted
   once on a sample; its `to_dict` travels as JSON);
2. `AnomalyDetector.fit` on the driver, over a sample of feature rows and their languages;
3. `AnomalyDetector.flag` on each shard, with the detector rebuilt by `from_dict`.

Thresholds are robust z-scores (median +- k * scaled MAD) per language group, on the sides
where an outlier means noise; see `DIRECTIONS` for why each side was chosen.
"""

from __future__ import annotations

import base64
import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmforge.data.charclass import CJK, TOKEN_RE
from lmforge.data.steps.quality import duplicate_line_share
from lmforge.errors import ConfigError, InputDataError

FEATURE_NAMES: tuple[str, ...] = (
    "log_length",  # log(1 + characters)
    "letter_ratio",  # letters (CJK included) / non-space characters
    "digit_ratio",  # numbers / tokens: a price or a date is one token, like a CJK character
    "symbol_ratio",  # punctuation, symbols and emoji / non-space characters
    "upper_ratio",  # upper-case / Latin letters; 0 below MIN_LATIN_FOR_CASE letters
    "cjk_share",  # CJK characters / (CJK characters + Latin words and URLs)
    "dup_line_ratio",  # characters in lines repeating an earlier line / all characters
    "repeated_ngram_coverage",  # token positions inside a 4-gram said 3+ times
    "compression_ratio",  # UTF-8 bytes / zlib-compressed bytes (repetition compresses)
    "mean_token_length",  # characters per token (a CJK character is one token)
    "lm_score",  # CharLanguageModel.score: mean log-probability per character
)
_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}

# Which side of each feature is noise. A side is listed only where an outlier there is junk
# rather than an unusual but fine review:
# - short fragments are noise, long texts are just long (max_chars is a rule's job);
# - few letters, many digits or many symbols is code, tables, prices or symbol soup;
# - shouting in capitals is spam; a text with few capitals is fine;
# - CJK share on both sides: a "zh" text with little CJK, or an "en" one with much, is
#   mixed-up or mis-routed text (the other side falls outside [0, 1] and never fires);
# - repeated lines and n-grams, and high compressibility, mean copy-paste floods; low values
#   are ordinary varied prose;
# - long mean tokens are glued junk, URLs and keyboard mash; short ones are normal for CJK;
# - a low language-model score is text unlike the corpus; a high one is typical text.
DIRECTIONS: dict[str, tuple[bool, bool]] = {  # name -> (low side is noise, high side is noise)
    "log_length": (True, False),
    "letter_ratio": (True, False),
    "digit_ratio": (False, True),
    "symbol_ratio": (False, True),
    "upper_ratio": (False, True),
    "cjk_share": (True, True),
    "dup_line_ratio": (False, True),
    "repeated_ngram_coverage": (False, True),
    "compression_ratio": (False, True),
    "mean_token_length": (False, True),
    "lm_score": (True, False),
}

# Smallest spread (in feature units, on the sigma scale) a threshold may rest on. Sparse
# features (digits, repeated lines) have MAD = 0 on clean text, which would make any
# non-zero value an outlier; the floors are what one would call "a small difference".
MIN_SCALE: dict[str, float] = {
    "log_length": 0.15,
    "letter_ratio": 0.03,
    "digit_ratio": 0.03,
    "symbol_ratio": 0.03,
    "upper_ratio": 0.05,
    "cjk_share": 0.05,
    "dup_line_ratio": 0.05,
    "repeated_ngram_coverage": 0.05,
    "compression_ratio": 0.05,
    "mean_token_length": 0.3,
    "lm_score": 0.1,
}

MIN_LATIN_FOR_CASE = 20  # "APP" or "OK" in a Chinese review is not shouting
MAD_TO_SIGMA = 1.4826  # MAD * this estimates the standard deviation of a normal sample
MAX_RATE = 0.001  # the most a feature side may flag of the documents it was fitted on
SHORT_TEXT_PRIOR = 20  # characters added to the denominator of the symbol share
SHORT_TEXT_PRIOR_TOKENS = 10  # tokens added to the denominator of the number share
POOLED = "all"  # the group name of the thresholds fitted on every row
POOLED_ANCHOR = 0.01  # pooled thresholds: k scales beyond the 1st / 99th percentile

_SPACE_RE = re.compile(r"\s")
# Runs, not single characters: far fewer matches to build, the same count of characters.
_LETTER_RE = re.compile(r"[^\W\d_]+")
_DIGIT_RE = re.compile(r"\d+")
_LATIN_RE = re.compile(r"[A-Za-z]+")
_UPPER_RE = re.compile(r"[A-Z]+")
_CJK_RE = re.compile(f"[{CJK}]+")
# Masked PII ("[PHONE]", "[BANK_CARD]") is the cleaning line's mark, not the author's text:
# its capitals in a Chinese review would read as mixed script and shouting.
_PLACEHOLDER_RE = re.compile(r"\[[A-Z][A-Z_]{1,15}\]")
NGRAM_N, NGRAM_MIN_REPEATS = 4, 3  # a phrase said twice is prose; three times starts a flood


# --- the character language model ---------------------------------------------------------

_SEP = "\x00"  # joins texts: marks the start and end of each, so boundaries are bigrams too
_MULT_A = np.uint64(0x9E3779B97F4A7C15)
_MULT_B = np.uint64(0xC2B2AE3D27D4EB4F)
_SHIFT = np.uint64(32)


def _codes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Code points of all texts joined as SEP t1 SEP t2 ... SEP, and where each text's
    leading SEP sits. Text i owns bigrams starts[i] .. starts[i] + len(text_i)."""
    # Lower-cased one by one: lower() may change a length ("İ" becomes two code points),
    # and the offsets below must count what is hashed.
    clean = [(t.replace(_SEP, " ") if _SEP in t else t).lower() for t in texts]
    joined = _SEP + _SEP.join(clean) + _SEP
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    lengths = np.fromiter((len(t) + 1 for t in clean), dtype=np.int64, count=len(clean))
    starts = np.zeros(len(clean), dtype=np.int64)
    if len(clean) > 1:
        np.cumsum(lengths[:-1], out=starts[1:])
    return codes, starts


class CharLanguageModel:
    """A character bigram model, bigrams hashed into `buckets`, add-k smoothed.

    P(b | a) = (n[hash(a, b)] + k) / (n[a] + k * V), where n[a] counts bigrams that start
    with a (a's code point modulo 2**16) and V is the number of characters seen in fitting.
    Text is lower-cased (case is the upper_ratio feature's job). Scoring is vectorised over
    a whole batch of texts with numpy.
    """

    def __init__(
        self,
        bigram_counts: np.ndarray,
        context_counts: np.ndarray,
        vocab: int,
        k: float = 0.1,
    ) -> None:
        buckets = len(bigram_counts)
        if buckets < 2 or buckets & (buckets - 1):
            raise ConfigError(f"CharLanguageModel buckets={buckets}: use a power of two >= 2")
        if len(context_counts) != 1 << 16:
            raise InputDataError(
                f"CharLanguageModel context counts have {len(context_counts)} entries, "
                f"expected {1 << 16}; refit the model"
            )
        if k <= 0:
            raise ConfigError(f"CharLanguageModel k={k}: the smoothing constant must be > 0")
        self.bigram_counts = np.asarray(bigram_counts, dtype=np.uint32)
        self.context_counts = np.asarray(context_counts, dtype=np.uint32)
        self.vocab = max(int(vocab), 1)
        self.k = float(k)
        self._mask = np.uint64(buckets - 1)
        self._log_bigram = np.log(self.bigram_counts + self.k)
        self._log_context = np.log(self.context_counts + self.k * self.vocab)

    @property
    def buckets(self) -> int:
        return len(self.bigram_counts)

    def _hashes(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = codes[:-1], codes[1:]
        mixed = (a * _MULT_A) ^ (b * _MULT_B)  # uint64 arithmetic wraps, as a hash should
        return (mixed >> _SHIFT) & self._mask, a & np.uint64(0xFFFF)

    @classmethod
    def fit(cls, texts: Sequence[str], buckets: int = 1 << 18, k: float = 0.1) -> CharLanguageModel:
        """Count the character bigrams of a sample of (kept, typical) documents."""
        if not texts:
            raise InputDataError("CharLanguageModel.fit got no texts; pass a sample of documents")
        if buckets < 2 or buckets & (buckets - 1):
            raise ConfigError(f"CharLanguageModel buckets={buckets}: use a power of two >= 2")
        codes, _ = _codes(texts)
        model = cls(np.zeros(buckets, np.uint32), np.zeros(1 << 16, np.uint32), 1, k)
        bigram, context = model._hashes(codes)
        vocab = len(np.unique(codes))
        return cls(
            np.bincount(bigram.astype(np.int64), minlength=buckets).astype(np.uint32),
            np.bincount(context.astype(np.int64), minlength=1 << 16).astype(np.uint32),
            vocab,
            k,
        )

    def score_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Mean log-probability per character (start and end included) of each text."""
        if not texts:
            return np.zeros(0)
        codes, starts = _codes(texts)
        bigram, context = self._hashes(codes)
        logp = self._log_bigram[bigram] - self._log_context[context]
        totals = np.add.reduceat(logp, starts)
        lengths = np.diff(np.append(starts, len(logp)))
        return totals / lengths

    def score(self, text: str) -> float:
        """Mean log-probability per character; higher is more typical of the fitted texts."""
        return float(self.score_batch([text])[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the count arrays as base64 of zlib-compressed little-endian uint32."""
        return {
            "kind": "char_bigram",
            "buckets": self.buckets,
            "vocab": self.vocab,
            "k": self.k,
            "bigram_counts": _pack(self.bigram_counts),
            "context_counts": _pack(self.context_counts),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharLanguageModel:
        try:
            if data["kind"] != "char_bigram":
                raise ValueError(f"kind {data['kind']!r}")
            bigram = _unpack(data["bigram_counts"])
            context = _unpack(data["context_counts"])
            if len(bigram) != int(data["buckets"]):
                raise ValueError("bucket count does not match the counts")
            return cls(bigram, context, int(data["vocab"]), float(data["k"]))
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            raise InputDataError(
                f"not a CharLanguageModel dict ({exc}); rebuild it with CharLanguageModel.to_dict"
            ) from None


def _pack(counts: np.ndarray) -> str:
    raw = np.ascontiguousarray(counts, dtype="<u4").tobytes()
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def _unpack(text: str) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<u4").astype(np.uint32)


# --- per-document features -----------------------------------------------------------------


def repeated_ngram_coverage(
    toks: Sequence[str], n: int = NGRAM_N, min_count: int = NGRAM_MIN_REPEATS
) -> float:
    """Share of token positions inside an n-gram that occurs at least `min_count` times.

    Every repeated n-gram counts, not only the most frequent one: a phrase of six tokens
    said over and over is six different n-grams, each as frequent as the others. An n-gram
    of a single token ("哈哈哈哈") is emphasis, not a flood, and is skipped.
    """
    if len(toks) < n + min_count - 1:
        return 0.0
    counts = Counter(zip(*(toks[i:] for i in range(n)), strict=False))
    if max(counts.values()) < min_count:
        return 0.0  # the usual case, without the position scan
    covered = bytearray(len(toks))
    for i, gram in enumerate(zip(*(toks[i:] for i in range(n)), strict=False)):
        if counts[gram] >= min_count and len(set(gram)) > 1:
            covered[i : i + n] = b"\x01" * n
    return sum(covered) / len(toks)


def _run_chars(pattern: re.Pattern[str], text: str) -> int:
    return sum(map(len, pattern.findall(text)))


def _text_features(text: str) -> list[float]:
    """Every feature but the LM score."""
    if "[" in text:
        text = _PLACEHOLDER_RE.sub("", text)
    chars = len(text)
    non_space = chars - len(_SPACE_RE.findall(text))
    letters = _run_chars(_LETTER_RE, text)
    digits = _run_chars(_DIGIT_RE, text)
    latin = _run_chars(_LATIN_RE, text)
    # Case is judged in Latin-script text only: in Chinese text, Latin letters are mostly
    # model names and acronyms ("LG W800", "TFT"), written in capitals by convention.
    judge_case = latin >= MIN_LATIN_FOR_CASE and latin >= 0.5 * letters
    upper = _run_chars(_UPPER_RE, text) if judge_case else 0
    lines = text.split("\n")
    toks = TOKEN_RE.findall(text.lower())
    raw = text.encode("utf-8")
    per_char = 1.0 / non_space if non_space else 0.0
    # Symbols are a share of a text with SHORT_TEXT_PRIOR extra characters, numbers of one
    # with SHORT_TEXT_PRIOR_TOKENS extra tokens: in a ten-character review ("等了70分钟",
    # "太慢了。。。") a few of them are normal, not junk.
    per_char_shrunk = 1.0 / (non_space + SHORT_TEXT_PRIOR)
    # Counted in tokens, a review quoting prices ("1299买的，现在1249") or a model name in
    # Latin letters ("硬盘很安静（Seagate的）") is ordinary; a log of dates, a table of
    # figures or a Latin text filed as Chinese still stands out.
    numbers = sum(1 for t in toks if t[0].isdigit())
    cjk_tokens = sum(1 for t in toks if len(t) == 1 and _CJK_RE.match(t))
    words = len(toks) - numbers - cjk_tokens
    return [
        math.log1p(chars),
        letters * per_char,
        numbers / (len(toks) + SHORT_TEXT_PRIOR_TOKENS),
        (non_space - letters - digits) * per_char_shrunk,
        upper / latin if judge_case else 0.0,
        cjk_tokens / (cjk_tokens + words) if cjk_tokens + words else 0.0,
        duplicate_line_share(lines) if len(lines) > 1 else 0.0,
        repeated_ngram_coverage(toks),
        len(raw) / len(zlib.compress(raw, 6)) if raw else 0.0,
        sum(map(len, toks)) / len(toks) if toks else 0.0,
    ]


def document_features(text: str, lm: CharLanguageModel | None) -> np.ndarray:
    """The FEATURE_NAMES of one text (float64); lm_score is NaN without a language model."""
    return batch_features([text], lm)[0]


def batch_features(texts: Sequence[str], lm: CharLanguageModel | None) -> np.ndarray:
    """document_features of many texts, rows in order; the LM scores them in one pass."""
    out = np.empty((len(texts), len(FEATURE_NAMES)), dtype=np.float64)
    for i, text in enumerate(texts):
        out[i, :-1] = _text_features(text)
    if lm is None:
        out[:, -1] = math.nan
    else:
        out[:, -1] = lm.score_batch([_PLACEHOLDER_RE.sub("", t) if "[" in t else t for t in texts])
    return out


# --- the detector ----------------------------------------------------------------------------

_STAT_KEYS = ("low", "high", "median", "mad")


def _check_rows(features: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES):
        raise InputDataError(
            f"features have shape {x.shape}; expected (rows, {len(FEATURE_NAMES)}) as "
            "returned by batch_features"
        )
    if len(groups) != len(x):
        raise InputDataError(
            f"{len(groups)} groups for {len(x)} feature rows; pass one language per row"
        )
    return x


class AnomalyDetector:
    """Robust z-score thresholds per language group and feature.

    For each group with at least `min_group_rows` rows: median m and scale
    s = max(MAD_TO_SIGMA * MAD, MIN_SCALE[feature]); a row is anomalous on a noise side where
    x < m - k*s or x > m + k*s. NaN features (no LM) never fire and are ignored in fitting.

    The pooled table ("all") is fitted on every row. Rows of several languages differ (CJK
    share is ~0 or ~1, a token is ~1 or ~4.5 characters long), so a median over all of them
    sits in one language and calls the others outliers: pooled thresholds start from the
    POOLED_ANCHOR and 1 - POOLED_ANCHOR quantiles instead of the median.

    A row of a small or unseen group is judged against every table in `fallback` and is an
    anomaly only if it is one under all of them: a German text is neither typical English
    (LM score) nor typical Chinese (CJK share), while a Chinese text filed under "other" is
    typical Chinese. `fallback` holds the fitted groups, plus the pooled table when the fit
    had rows outside them (so languages too rare for a group of their own are no outliers),
    or the pooled table alone when no group was large enough.
    """

    def __init__(
        self,
        stats: dict[str, dict[str, dict[str, float | None]]],
        k: float,
        fallback: Sequence[str] = (POOLED,),
    ) -> None:
        missing = [g for g in (POOLED, *fallback) if g not in stats]
        if missing or not fallback:
            raise InputDataError(
                f"detector stats lack the group(s) {missing or fallback!r}; refit the detector"
            )
        self.stats = stats
        self.k = k
        self.fallback = tuple(fallback)
        self._tables = {g: self._table(s) for g, s in stats.items()}

    @staticmethod
    def _table(stats: dict[str, dict[str, float | None]]) -> tuple[np.ndarray, ...]:
        """Low and high bounds (+-inf where a side never fires) and the medians."""

        def value(name: str, key: str, missing: float) -> float:
            v = stats[name][key]
            return missing if v is None else float(v)

        low = np.array([value(n, "low", -np.inf) for n in FEATURE_NAMES])
        high = np.array([value(n, "high", np.inf) for n in FEATURE_NAMES])
        median = np.array([value(n, "median", 0.0) for n in FEATURE_NAMES])
        return low, high, median

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        groups: Sequence[str],
        k: float = 6.0,
        min_group_rows: int = 200,
    ) -> AnomalyDetector:
        """Fit thresholds on feature rows (from batch_features) and each row's language."""
        x = _check_rows(features, groups)
        if not k > 0:
            raise ConfigError(f"anomaly k={k}: use a positive number of MADs (default 6)")
        if len(x) == 0:
            raise InputDataError("AnomalyDetector.fit got no rows; pass a sample of documents")
        labels = np.asarray([str(g) for g in groups], dtype=object)
        stats = {POOLED: cls._fit_group(x, k, POOLED_ANCHOR)}
        fitted: list[str] = []
        covered = np.zeros(len(x), dtype=bool)
        for group in sorted(set(labels.tolist())):
            rows = labels == group
            if group != POOLED and rows.sum() >= min_group_rows:
                stats[group] = cls._fit_group(x[rows], k, 0.5)
                fitted.append(group)
                covered |= rows
        fallback = fitted if covered.all() else [*fitted, POOLED]
        return cls(stats, k, fallback)

    @staticmethod
    def _fit_group(x: np.ndarray, k: float, anchor: float) -> dict[str, dict[str, float | None]]:
        out: dict[str, dict[str, float | None]] = {}
        for name in FEATURE_NAMES:
            column = x[:, _INDEX[name]]
            column = column[~np.isnan(column)]
            low_side, high_side = DIRECTIONS[name]
            if len(column) == 0:  # e.g. no LM: the feature cannot fire
                out[name] = {"low": None, "high": None, "median": None, "mad": None}
                continue
            median = float(np.median(column))
            mad = float(np.median(np.abs(column - median)))
            scale = max(MAD_TO_SIGMA * mad, MIN_SCALE[name])
            low = high = median
            if anchor != 0.5:
                low, high = np.quantile(column, [anchor, 1 - anchor]).tolist()
            # An outlier is rare by definition: on a heavy-tailed feature (digits in short
            # reviews that give delivery times) median + k * MAD can still cut into the
            # body of the data, so a side never flags more than MAX_RATE of the sample.
            tail_low, tail_high = np.quantile(column, [MAX_RATE, 1 - MAX_RATE]).tolist()
            out[name] = {
                "low": min(low - k * scale, tail_low) if low_side else None,
                "high": max(high + k * scale, tail_high) if high_side else None,
                "median": median,
                "mad": mad,
            }
        return out

    def thresholds(self) -> dict[str, dict[str, dict[str, float | None]]]:
        """group -> feature -> {"low", "high", "median", "mad"}; None marks a side that is
        not noise. "all" is the pooled table (see the class notes and `fallback`)."""
        return {g: {f: dict(v) for f, v in s.items()} for g, s in self.stats.items()}

    def _excess(self, x: np.ndarray, key: str) -> np.ndarray:
        """(rows, features, 2): how far past the low/high bound of table `key` each value
        is, in units of the bound's distance from the median (<= 0: inside; -inf: no bound)."""
        low, high, median = self._tables[key]
        with np.errstate(invalid="ignore", divide="ignore"):
            low_w = np.maximum(median - low, 1e-12)
            high_w = np.maximum(high - median, 1e-12)
            both = np.stack([(low - x) / low_w, (x - high) / high_w], axis=-1)
        return np.where(np.isnan(both), -np.inf, both)  # NaN values and absent sides

    def scores(self, features: np.ndarray, groups: Sequence[str]) -> np.ndarray:
        """How far past its thresholds each feature of each row is: (rows, features, 2) for
        the low and high sides, > 0 outside. Rows of groups without a table get the
        fallback table under which they look least anomalous."""
        x = _check_rows(features, groups)
        out = np.full((len(x), len(FEATURE_NAMES), 2), -np.inf)
        labels = np.asarray([str(g) for g in groups], dtype=object)
        for group in set(labels.tolist()):
            rows = labels == group
            if group in self._tables:
                out[rows] = self._excess(x[rows], group)
                continue
            options = np.stack([self._excess(x[rows], key) for key in self.fallback])
            worst = options.reshape(len(options), rows.sum(), -1).max(axis=2)
            out[rows] = options[worst.argmin(axis=0), np.arange(rows.sum())]
        return out

    def flag(self, features: np.ndarray, groups: Sequence[str]) -> list[str | None]:
        """Per row: None, or "anomaly:<feature>_<low|high>" for the feature furthest past
        its threshold."""
        flat = self.scores(features, groups).reshape(len(features), -1)
        reasons: list[str | None] = []
        for row, idx in enumerate(flat.argmax(axis=1).tolist() if len(flat) else []):
            if flat[row, idx] > 0:
                name, side = FEATURE_NAMES[idx // 2], ("low", "high")[idx % 2]
                reasons.append(f"anomaly:{name}_{side}")
            else:
                reasons.append(None)
        return reasons

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "robust_z",
            "k": self.k,
            "features": list(FEATURE_NAMES),
            "fallback": list(self.fallback),
            "groups": self.thresholds(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnomalyDetector:
        try:
            if data["kind"] != "robust_z":
                raise ValueError(f"kind {data['kind']!r}")
            if tuple(data["features"]) != FEATURE_NAMES:
                raise ValueError("the feature list differs from this version's FEATURE_NAMES")
            stats = {
                str(g): {f: {key: s[f][key] for key in _STAT_KEYS} for f in FEATURE_NAMES}
                for g, s in data["groups"].items()
            }
            return cls(stats, float(data["k"]), [str(g) for g in data["fallback"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputDataError(
                f"not an AnomalyDetector dict ({exc}); refit and save it with to_dict"
            ) from None
