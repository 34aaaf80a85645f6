"""The embedded demo corpus: a seeded, bilingual, multi-source review corpus with planted noise
and a ground-truth side file (docs/demo-corpus.md)."""

from lmforge.demo.generator import corpus_sources, generate_corpus

__all__ = ["corpus_sources", "generate_corpus"]
