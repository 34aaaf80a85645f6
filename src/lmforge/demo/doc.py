"""One generated document, as the writers need it, and its ground-truth line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SOURCES = ("web", "posts", "records_csv", "records_sql")
RECORD_SOURCES = ("records_csv", "records_sql")


@dataclass(slots=True)
class CorpusDoc:
    """A document of any source; `text` is the review body (the `comment` of a record)."""

    id: str
    source: str
    lang: str  # "zh", "en" or "other"
    label: str
    text: str
    product: str
    category: str
    site_lang: str  # the language of the page, shop or app it came from ("zh"/"en")
    created_at: str
    noise: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    dup_group: str | None = None
    channel: str = ""
    region: str = ""
    user: str = ""

    @property
    def family(self) -> str:
        return "record" if self.source in RECORD_SOURCES else "text"

    def truth(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "lang": self.lang,
            "label": self.label,
            "noise": list(self.noise),
            "markers": list(self.markers),
            "dup_group": self.dup_group,
        }
