"""Labelled review texts composed from aspect clauses.

A review is a few clauses, each with a polarity: domain facts ("the battery drains within
hours"), aspect judgements with optional intensifier, hedge or negation ("the sound isn't
muddy at all", "音质一点也不差"), overall verdicts and neutral remarks. In a contrast ("A, but
B") the last clause weighs three times the first. The label is the sign of the weighted sum,
with a neutral band, so no single keyword decides it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from types import ModuleType

from lmforge.demo import bank_en, bank_zh
from lmforge.demo.lexicon import Aspect, Domain

LABELS = ("negative", "neutral", "positive")
NEUTRAL_BAND = 0.55  # |score| below this is neutral
LEAD_WEIGHT, LAST_WEIGHT = 0.5, 1.5  # contrast: the clause after "but" dominates
_MAX_TRIES = 24
_MIN_CHARS = {"en": 24, "zh": 12}  # below this a clean review gets an opener (min_chars filters)


@dataclass(frozen=True)
class Clause:
    text: str
    polarity: float


@dataclass(frozen=True)
class Review:
    text: str
    label: str
    score: float
    domain: str
    product: str
    category: str


def label_for(score: float) -> str:
    if score >= NEUTRAL_BAND:
        return "positive"
    if score <= -NEUTRAL_BAND:
        return "negative"
    return "neutral"


def _sign(label: str) -> int:
    return LABELS.index(label) - 1


class _Grammar:
    """What differs between languages: clause templates, connectors, sentence assembly."""

    bank: ModuleType
    lang: str

    def adjective_clause(self, rng: random.Random, aspect: Aspect, sign: int, mode: str) -> Clause:
        raise NotImplementedError

    def render(self, rng: random.Random, parts: list[tuple[str, float]]) -> str:
        raise NotImplementedError

    # -- shared: the choice of realisation and its polarity --

    def polar(self, rng: random.Random, dom: Domain, product: str, sign: int) -> Clause:
        roll = rng.random()
        if roll < 0.42:
            return self.adjective_clause(rng, rng.choice(dom.aspects), sign, _pick_mode(rng))
        if roll < 0.62:
            facts = dom.pos_facts if sign > 0 else dom.neg_facts
            return Clause(rng.choice(facts), float(sign))
        if roll < 0.8:
            phrases = self.bank.GENERIC_POS if sign > 0 else self.bank.GENERIC_NEG
            return Clause(rng.choice(phrases), 1.2 * sign)
        overall = Aspect(
            rng.choice(self.bank.OVERALL_SUBJECTS).format(product=product),
            rng.choice(("is", "was")),
            self.bank.OVERALL_POS,
            self.bank.OVERALL_NEG,
        )
        return self.adjective_clause(rng, overall, sign, _pick_mode(rng))

    def hedged(self, rng: random.Random, dom: Domain, sign: int) -> Clause:
        return self.adjective_clause(rng, rng.choice(dom.aspects), sign, "hedge")

    def neutral(self, rng: random.Random, dom: Domain) -> Clause:
        if rng.random() < 0.6:
            return Clause(rng.choice(dom.neutral_facts), 0.0)
        return Clause(rng.choice(self.bank.GENERIC_NEUTRAL), 0.0)

    def closer(self, rng: random.Random, sign: int) -> Clause:
        table = {1: self.bank.CLOSERS_POS, -1: self.bank.CLOSERS_NEG, 0: self.bank.CLOSERS_NEUTRAL}
        return Clause(rng.choice(table[sign]), float(sign))

    def contrast(self, rng: random.Random, a: Clause, b: Clause) -> tuple[str, float]:
        templates = self.bank.CONTRAST_ANY
        if b.polarity > 0:
            templates += self.bank.CONTRAST_TO_POS
        elif b.polarity < 0:
            templates += self.bank.CONTRAST_TO_NEG
        text = rng.choice(templates).format(a=a.text, b=b.text)
        return text, LEAD_WEIGHT * a.polarity + LAST_WEIGHT * b.polarity


def _pick_mode(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.48:
        return "plain"
    if roll < 0.72:
        return "intense"
    if roll < 0.84:
        return "hedge"
    if roll < 0.92:
        return "negate_mild"
    return "negate_strong"


_MODE_WEIGHT = {"plain": 1.0, "intense": 1.5, "hedge": 0.5, "negate_mild": 0.6}
_MODE_WEIGHT["negate_strong"] = 1.0


_NEGATED = {"is": "isn't", "are": "aren't", "was": "wasn't", "were": "weren't"}


class _English(_Grammar):
    bank = bank_en
    lang = "en"

    def adjective_clause(self, rng: random.Random, aspect: Aspect, sign: int, mode: str) -> Clause:
        subj, cop = aspect.subject, aspect.copula
        if mode.startswith("negate"):
            # Negating the opposite pole: "not muddy at all" praises, "isn't sturdy" complains.
            adj = rng.choice(aspect.negative if sign > 0 else aspect.positive)
            if mode == "negate_mild":
                forms = ("{s} {n} {a}", "{s} {c} not exactly {a}", "I wouldn't call {s} {a}")
            else:
                forms = (
                    "{s} {c} not {a} at all",
                    "{s} {c} far from {a}",
                    "{s} {n} {a} in the least",
                )
            text = rng.choice(forms).format(s=subj, c=cop, n=_NEGATED[cop], a=adj)
        else:
            adj = rng.choice(aspect.positive if sign > 0 else aspect.negative)
            if mode == "intense":
                adj = f"{rng.choice(self.bank.INTENSIFIERS)} {adj}"
            elif mode == "hedge":
                hedges = self.bank.HEDGES_POS if sign > 0 else self.bank.HEDGES_NEG
                adj = f"{rng.choice(hedges)} {adj}"
            forms = ("{s} {c} {a}", "I found {s} {a}", "{s} turned out {a}", "{s} felt {a}")
            text = rng.choice(forms).format(s=subj, c=cop, a=adj)
        return Clause(text, _MODE_WEIGHT[mode] * sign)

    def render(self, rng: random.Random, parts: list[tuple[str, float]]) -> str:
        sentences = []
        i = 0
        while i < len(parts):
            text, pol = parts[i]
            i += 1
            # Two same-tone clauses (not full sentences already) sometimes share a sentence.
            if (
                i < len(parts)
                and parts[i][1] * pol > 0
                and text[-1] not in ".!?"
                and parts[i][0][-1] not in ".!?"
                and rng.random() < 0.3
            ):
                text = f"{text}, and {parts[i][0]}"
                i += 1
            text = text[0].upper() + text[1:]
            if text[-1] not in ".!?":
                text += "!" if abs(pol) >= 1.2 and rng.random() < 0.35 else "."
            sentences.append(text)
        return " ".join(sentences)


class _Chinese(_Grammar):
    bank = bank_zh
    lang = "zh"

    def adjective_clause(self, rng: random.Random, aspect: Aspect, sign: int, mode: str) -> Clause:
        subj = aspect.subject
        if mode.startswith("negate"):
            options = aspect.negative if sign > 0 else aspect.positive
            # "不不错" or "不有弹性" are not Chinese; such adjectives are only used plainly.
            options = tuple(a for a in options if a[0] not in "不有没")
            if not options:
                mode = "plain"
            else:
                adj = rng.choice(options)
                words = (
                    bank_zh.NEGATIONS_MILD if mode == "negate_mild" else bank_zh.NEGATIONS_STRONG
                )
                return Clause(f"{subj}{rng.choice(words)}{adj}", _MODE_WEIGHT[mode] * sign)
        adj = rng.choice(aspect.positive if sign > 0 else aspect.negative)
        if mode == "intense":
            if rng.random() < 0.3:
                text = f"{subj}太{adj}了"
            else:
                text = f"{subj}{rng.choice(bank_zh.INTENSIFIERS)}{adj}"
        elif mode == "hedge":
            hedges = bank_zh.HEDGES_POS if sign > 0 else bank_zh.HEDGES_NEG
            text = f"{subj}{rng.choice(hedges)}{adj}"
        else:
            degree = rng.choice(("", *bank_zh.DEFAULT_DEGREE))
            lead = "感觉" if rng.random() < 0.2 else ""
            text = f"{lead}{subj}{degree}{adj}" + ("的" if degree == "挺" else "")
        return Clause(text, _MODE_WEIGHT[mode] * sign)

    def render(self, rng: random.Random, parts: list[tuple[str, float]]) -> str:
        out = []
        run = 0
        for i, (text, pol) in enumerate(parts):
            out.append(text)
            run += 1
            last = i == len(parts) - 1
            if last or run >= 3 or rng.random() < 0.35:
                out.append("！" if abs(pol) >= 1.2 and rng.random() < 0.4 else "。")
                run = 0
            else:
                out.append("，")
        return "".join(out)


GRAMMARS: dict[str, _Grammar] = {"en": _English(), "zh": _Chinese()}


def compose_review(rng: random.Random, lang: str, label: str) -> Review:
    """A review in `lang` ("en"/"zh") whose computed label is `label` (almost always)."""
    grammar = GRAMMARS[lang]
    dom = rng.choice(grammar.bank.DOMAINS)
    product = rng.choice(dom.products)
    target = _sign(label)
    for _ in range(_MAX_TRIES):
        parts, score = _draft(rng, grammar, dom, product, target)
        if label_for(score) == label:
            break
    text = grammar.render(rng, parts)
    if len(text) < _MIN_CHARS[lang]:
        opener = rng.choice(dom.openers).format(product=product)
        text = grammar.render(rng, [(opener, 0.0)]) + ("" if lang == "zh" else " ") + text
    return Review(text, label_for(score), round(score, 3), dom.name, product, dom.category)


def _draft(
    rng: random.Random, g: _Grammar, dom: Domain, product: str, target: int
) -> tuple[list[tuple[str, float]], float]:
    """One random arrangement of clauses leaning towards `target`; returns parts and score."""
    parts: list[tuple[str, float]] = []
    score = 0.0

    def add(clause: Clause) -> None:
        nonlocal score
        parts.append((clause.text, clause.polarity))
        score += clause.polarity

    if rng.random() < 0.55:
        parts.append((rng.choice(dom.openers).format(product=product), 0.0))
    roll = rng.random()
    if target != 0:
        if roll < 0.74:
            for i in range(rng.choice((1, 2, 2, 3))):
                if i == 1 and rng.random() < 0.25:
                    add(g.neutral(rng, dom))
                add(g.polar(rng, dom, product, target))
        elif roll < 0.9:
            text, weighted = g.contrast(
                rng, g.polar(rng, dom, product, -target), g.polar(rng, dom, product, target)
            )
            parts.append((text, weighted))
            score += weighted
        else:
            add(g.hedged(rng, dom, -target))
            add(g.polar(rng, dom, product, target))
            add(g.polar(rng, dom, product, target))
    else:
        if roll < 0.5:
            add(g.neutral(rng, dom))
            if rng.random() < 0.5:
                add(g.neutral(rng, dom))
        elif roll < 0.75:
            add(g.hedged(rng, dom, rng.choice((-1, 1))))
            add(g.neutral(rng, dom))
        else:
            side = rng.choice((-1, 1))
            text, weighted = g.contrast(
                rng, g.polar(rng, dom, product, side), g.hedged(rng, dom, -side)
            )
            parts.append((text, weighted))
            score += weighted
    if rng.random() < 0.45:
        add(g.closer(rng, target if rng.random() < 0.7 else 0))
    return parts, score
