"""The data stage: read multi-source text, normalize, filter, dedup, mask PII, write shards.

Entry points: `lmforge.data.clean.clean_sources` (a library call and `lmforge data clean`)
and `lmforge.data.stage` (the pipeline stage).
"""

from lmforge.data.document import Document, Malformed

__all__ = ["Document", "Malformed"]
