"""The shape of a phrase bank: one `Domain` per product area and language.

Banks are written as `|`-separated strings so that a whole domain fits on one screen; `domain`
splits them into tuples once, at import.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Aspect:
    """Something a reviewer judges, with predicates that carry polarity without sentiment words."""

    subject: str  # "the battery life" / "续航"
    copula: str  # "is", "are", "was"; empty for Chinese
    positive: tuple[str, ...]
    negative: tuple[str, ...]


@dataclass(frozen=True)
class Domain:
    """Vocabulary of one product area in one language."""

    name: str
    category: str
    products: tuple[str, ...]
    openers: tuple[str, ...]  # neutral first sentences with a {product} slot
    aspects: tuple[Aspect, ...]
    pos_facts: tuple[str, ...]  # concrete events that imply praise ("lasts two days")
    neg_facts: tuple[str, ...]  # concrete events that imply a complaint ("died after a week")
    neutral_facts: tuple[str, ...]


def split(spec: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in spec.split("|") if part.strip())


def domain(
    name: str,
    category: str,
    products: str,
    openers: str,
    aspects: tuple[tuple[str, str, str, str], ...],
    pos_facts: str,
    neg_facts: str,
    neutral_facts: str,
) -> Domain:
    return Domain(
        name=name,
        category=category,
        products=split(products),
        openers=split(openers),
        aspects=tuple(Aspect(s, c, split(p), split(n)) for s, c, p, n in aspects),
        pos_facts=split(pos_facts),
        neg_facts=split(neg_facts),
        neutral_facts=split(neutral_facts),
    )
