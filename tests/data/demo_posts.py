"""The posts of a small generated demo corpus, with what the ground truth planted in each."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.config import CorpusConfig
from lmforge.demo import generate_corpus


def generated_posts(folder: Path, seed: int, docs: int) -> list[tuple[str, set[str]]]:
    """(text, planted noise kinds) of every post, in file order; an empty set is clean."""
    generate_corpus(folder, CorpusConfig(docs=docs, seed=seed))
    kinds = {}
    with open(folder / "ground_truth.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            kinds[row["id"]] = set(row["noise"])
    posts = []
    with open(folder / "posts.jsonl", encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the generator plants a few truncated lines
            posts.append((row["text"], kinds[row["id"]]))
    return posts
