"""Decides, document by document, what to generate: source, language, label, noise kinds, text.

All randomness comes from `random.Random` instances seeded from the config's seed, one per
concern (plan, text, noise, metadata), so the output is a pure function of the parameters.
Memory: a fixed pool of recent clean originals is kept for duplicates, and every original's
hash and shingle fingerprints (about 0.5-1 KB) to keep originals apart.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
from collections import deque

from lmforge.config import CorpusConfig
from lmforge.demo import bank_en, bank_misc, bank_zh, noise
from lmforge.demo.distinct import NearTwinGuard
from lmforge.demo.doc import RECORD_SOURCES, SOURCES, CorpusDoc
from lmforge.demo.pii import make_identifier, plant_identifiers
from lmforge.demo.reviews import LABELS, Review, compose_review
from lmforge.text.hashing import HashSet64, dedup_key

SOURCE_WEIGHTS = (0.25, 0.40, 0.20, 0.15)  # web, posts, records_csv, records_sql
LABEL_WEIGHTS = (0.34, 0.30, 0.36)  # negative, neutral, positive (before flips)
FLIP_RATE = 0.03  # labels replaced by another class: annotator noise
POOL_SIZE = 512  # recent clean originals per source family, for duplicates
_UNIQUE_TRIES = 50  # redraws of a review whose text was already used
NOISE_BLOCK = 100  # the noisy share is exact within every block of this many documents
_ID_PREFIX = {"web": "web", "posts": "post", "records_csv": "csv", "records_sql": "sql"}
_EPOCH = dt.datetime(2024, 1, 1)
_BANKS = {"en": bank_en, "zh": bank_zh}
_MIN_CARRIER_HOST = {"en": 80, "zh": 30}  # shortest original that stays near after a PII sentence


def stream_rng(seed: int, stream: str) -> random.Random:
    """An independent, reproducible random stream (string seeds hash with SHA-512)."""
    return random.Random(f"lmforge-demo/{seed}/{stream}")


class NoiseSchedule:
    """Which documents are noisy: round(rate * n) of the first n, stratified by block.

    Drawing each document independently would miss the target by a few percent on small
    corpora; here every block of 100 gets its exact share at random positions.
    """

    def __init__(self, rng: random.Random, rate: float, docs: int) -> None:
        self.rng, self.rate, self.docs = rng, rate, docs
        self._block = -1
        self._noisy: set[int] = set()

    def is_noisy(self, index: int) -> bool:
        block = index // NOISE_BLOCK
        if block != self._block:
            start = block * NOISE_BLOCK
            end = min(start + NOISE_BLOCK, self.docs)
            count = round(self.rate * end) - round(self.rate * start)
            self._noisy = set(self.rng.sample(range(start, end), count))
            self._block = block
        return index in self._noisy


class OriginalsPool:
    """Recent clean documents that duplicates copy from; their ground truth waits here,
    because a later copy adds a `dup_group` to the original's line."""

    def __init__(self, size: int) -> None:
        self._pools: dict[str, deque[CorpusDoc]] = {"text": deque(), "record": deque()}
        self.size = size
        self.groups = 0

    def add(self, doc: CorpusDoc) -> CorpusDoc | None:
        pool = self._pools[doc.family]
        pool.append(doc)
        return pool.popleft() if len(pool) > self.size else None

    def pick(self, rng: random.Random, family: str) -> CorpusDoc | None:
        pool = self._pools[family]
        if not pool:
            return None
        original = pool[rng.randrange(len(pool))]
        if original.dup_group is None:
            original.dup_group = f"dup-{original.id}"
            self.groups += 1
        return original

    def drain(self) -> list[CorpusDoc]:
        out = [*self._pools["text"], *self._pools["record"]]
        for pool in self._pools.values():
            pool.clear()
        return out


class DocumentPlanner:
    """Builds the documents of a corpus in order; `finished()` yields final ground truth."""

    def __init__(self, cfg: CorpusConfig) -> None:
        def rng(stream: str) -> random.Random:
            return stream_rng(cfg.seed, stream)

        self.cfg = cfg
        self.plan_rng, self.text_rng = rng("plan"), rng("text")
        self.noise_rng, self.meta_rng = rng("noise"), rng("meta")
        self.schedule = NoiseSchedule(rng("schedule"), cfg.noise_rate, cfg.docs)
        self.pool = OriginalsPool(POOL_SIZE)
        self._review_keys = HashSet64()
        self._twins = NearTwinGuard()
        self.tagged_reviews = 0  # reviews no draw could keep apart: a tag makes them distinct
        self._ready: list[CorpusDoc] = []

    def build(self, index: int) -> CorpusDoc:
        r = self.plan_rng
        source = r.choices(SOURCES, weights=SOURCE_WEIGHTS)[0]
        lang = "zh" if r.random() < self.cfg.zh_share else "en"
        target = r.choices(LABELS, weights=LABEL_WEIGHTS)[0]
        family = "record" if source in RECORD_SOURCES else "text"
        kinds = noise.pick_kinds(r, family) if self.schedule.is_noisy(index) else ()
        doc = self._skeleton(index, source, lang, target)
        original = None
        if any(k in noise.DUPLICATE_KINDS for k in kinds):
            original = self.pool.pick(self.noise_rng, family)
            if original is None:  # nothing to copy yet: plant PII instead
                kinds = tuple(k for k in kinds if k not in noise.DUPLICATE_KINDS) or ("pii",)
            elif "pii" in kinds and len(original.text) < _MIN_CARRIER_HOST[original.lang]:
                kinds = ("near_duplicate",)  # a carrier sentence would outweigh a short text
        if original is not None:
            self._copy(doc, original, kinds)
        elif any(k in noise.REMOVAL_KINDS for k in kinds):
            self._junk(doc, kinds)
        else:
            self._review(doc, kinds)
        doc.noise = tuple(k for k in noise.NOISE_KINDS if k in kinds)
        assert all(m in doc.text for m in doc.markers), doc.id
        assert doc.markers or not {"pii", "mojibake"} & set(kinds), doc.id
        if doc.noise:
            self._ready.append(doc)
        elif (evicted := self.pool.add(doc)) is not None:
            self._ready.append(evicted)
        return doc

    def finished(self) -> list[CorpusDoc]:
        """Documents whose ground-truth line can no longer change."""
        out, self._ready = self._ready, []
        return out

    def drain(self) -> list[CorpusDoc]:
        return self.finished() + self.pool.drain()

    def malformed_post(self, number: int) -> str:
        """A posts.jsonl line cut short, as a crashed exporter leaves it: not a document."""
        lang = "en" if self.meta_rng.random() < 0.5 else "zh"
        review = compose_review(self.text_rng, lang, "neutral")
        row = {"id": f"post-x{number:07d}", "text": review.text, "label": review.label}
        line = json.dumps(
            {**row, "user": "anon", "created_at": self._timestamp()}, ensure_ascii=False
        )
        return line[: self.meta_rng.randrange(12, len(line) - 1)]

    # -- document kinds --------------------------------------------------------------------

    def _skeleton(self, index: int, source: str, lang: str, label: str) -> CorpusDoc:
        m = self.meta_rng
        doc = CorpusDoc(
            id=f"{_ID_PREFIX[source]}-{index:08d}",
            source=source,
            lang=lang,
            label=label,
            text="",
            product="",
            category="",
            site_lang=lang,
            created_at=self._timestamp(),
        )
        if doc.family == "record":
            doc.channel = m.choice(bank_misc.CHANNELS[lang])
            doc.region = m.choice(bank_misc.REGIONS[lang])
        else:
            doc.user = f"{m.choice(bank_misc.NICKS[lang])}{m.randrange(10, 10000)}"
        return doc

    def _timestamp(self) -> str:
        moment = _EPOCH + dt.timedelta(seconds=self.meta_rng.randrange(366 * 86400))
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _flip(self, label: str) -> str:
        if self.plan_rng.random() < FLIP_RATE:
            return self.plan_rng.choice([other for other in LABELS if other != label])
        return label

    def _unique_review(self, lang: str, label: str) -> Review:
        """A review no earlier review repeats or nearly repeats: the ground truth calls every
        non-copy clean, so an accidental twin would be a duplicate it does not know of."""
        for _ in range(_UNIQUE_TRIES):
            review = compose_review(self.text_rng, lang, label)
            key = dedup_key(review.text)
            if key not in self._review_keys and self._twins.admit(review.text):
                self._review_keys.add(key)
                return review
        # The phrase banks are nearly exhausted for this label: append a distinguishing detail.
        self.tagged_reviews += 1
        while not self._review_keys.add(dedup_key(review.text)):
            tag = f" #{self.meta_rng.randrange(10**6)}"
            review = dataclasses.replace(review, text=review.text + tag)
        return review

    def _review(self, doc: CorpusDoc, kinds: tuple[str, ...]) -> None:
        review = self._unique_review(doc.lang, doc.label)
        doc.label = self._flip(review.label)
        doc.product, doc.category, doc.text = review.product, review.category, review.text
        markers: list[str] = []
        if "pii" in kinds:
            doc.text, markers = plant_identifiers(self.noise_rng, doc.text, doc.lang)
        if "mojibake" in kinds:
            # With PII planted, only single-byte codecs keep the ASCII identifiers intact.
            if "pii" in kinds:
                codecs: tuple[str, ...] = ("cp1252", "latin-1")
            else:
                codecs = ("cp1252", "cp1252", "latin-1") + (("gbk",) if doc.lang == "zh" else ())
            garbled, fragments = noise.garble(self.noise_rng, doc.text, doc.lang, codecs)
            if not fragments:  # latin-1 leaves no printable fragment in some English texts
                garbled, fragments = noise.garble(
                    self.noise_rng, doc.text, doc.lang, ("cp1252",), partial=False
                )
            doc.text = garbled
            markers += fragments
        doc.markers = tuple(markers)

    def _copy(self, doc: CorpusDoc, original: CorpusDoc, kinds: tuple[str, ...]) -> None:
        n = self.noise_rng
        doc.lang = doc.site_lang = original.lang
        doc.label = original.label
        doc.product, doc.category = original.product, original.category
        doc.dup_group = original.dup_group
        if doc.family == "record":
            doc.channel = original.channel  # part of the rendered text
        if "near_duplicate" in kinds:
            doc.text = noise.near_edit(n, original.text, doc.lang)
        else:
            doc.text = noise.exact_variant(n, original.text)
        if "pii" in kinds:
            doc.text, markers = plant_identifiers(n, doc.text, doc.lang, most=1)
            doc.markers = tuple(markers)

    def _junk(self, doc: CorpusDoc, kinds: tuple[str, ...]) -> None:
        n = self.noise_rng
        dom = n.choice(_BANKS[doc.site_lang].DOMAINS)
        doc.product, doc.category = n.choice(dom.products), dom.category
        doc.label = n.choice(LABELS)  # junk still carries whatever label the source had
        if "html_junk" in kinds:
            doc.text = noise.html_junk_text(n, doc.lang)
        elif "too_short" in kinds:
            doc.text = noise.too_short_text(n, doc.lang)
        elif "gibberish" in kinds:
            doc.text, doc.lang = noise.gibberish_text(n), "other"
        elif "wrong_language" in kinds:
            doc.text, doc.lang = noise.wrong_language_text(n), "other"
        elif "pii" in kinds:
            contact = make_identifier(n, n.choice(("email", "cn_mobile", "e164")))
            doc.text = noise.spam_text(n, doc.lang, contact)
            doc.markers = (contact,)
        else:
            doc.text = noise.spam_text(n, doc.lang)
