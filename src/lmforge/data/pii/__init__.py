"""PII detection and masking: span detectors, overlap resolution, three masking modes.

`detect_pii` finds identifier spans on the original text; `mask_pii` / `PiiRewriter`
rewrite them as placeholders, keyed pseudonyms or nothing. The cleaning step that uses them
is `lmforge.data.steps.pii.PiiMasker`.
"""

from lmforge.data.pii.detect import NameFinder, PiiDetector, detect_pii
from lmforge.data.pii.masking import MODES, PiiRewriter, canonical_value, mask_pii
from lmforge.data.pii.spans import PII_TYPES, PRIORITY, PiiSpan

__all__ = [
    "MODES",
    "PII_TYPES",
    "PRIORITY",
    "NameFinder",
    "PiiDetector",
    "PiiRewriter",
    "PiiSpan",
    "canonical_value",
    "detect_pii",
    "mask_pii",
]
