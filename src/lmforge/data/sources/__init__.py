"""Readers for every input kind, and the dispatch from a SourceConfig to them.

`SourceReader(src)` yields `Document`s and `Malformed` records in a deterministic order
(files sorted by path, records in file order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources.delimited import read_delimited
from lmforge.data.sources.html import read_html
from lmforge.data.sources.jsonl import read_jsonl
from lmforge.data.sources.sqlite import read_sqlite
from lmforge.data.sources.text import read_text
from lmforge.errors import InputDataError

Reader = Callable[[Path, str, SourceConfig, str], Iterator[Document | Malformed]]

READERS: dict[str, Reader] = {
    "jsonl": read_jsonl,
    "csv": partial(read_delimited, delimiter=","),
    "tsv": partial(read_delimited, delimiter="\t"),
    "sqlite": read_sqlite,
    "html": read_html,
    "text": read_text,
}

EXTENSIONS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".jsonl.gz": "jsonl",
    ".json.gz": "jsonl",
    ".ndjson.gz": "jsonl",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".tsv": "tsv",
    ".tsv.gz": "tsv",
    ".sqlite": "sqlite",
    ".sqlite3": "sqlite",
    ".db": "sqlite",
    ".html": "html",
    ".htm": "html",
    ".txt": "text",
}


def kind_for(path: Path) -> str | None:
    """Reader kind from a file name's extension (".jsonl.gz" counts as one extension)."""
    name = path.name.lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return EXTENSIONS[ext]
    return None


def _stem(path: Path) -> str:
    name = path.name
    kind_ext = [e for e in EXTENSIONS if name.lower().endswith(e)]
    if kind_ext and path.is_file():
        return name[: -len(max(kind_ext, key=len))] or name
    return name


def _supported() -> str:
    return ", ".join(sorted(EXTENSIONS))


class SourceReader:
    """Reads one configured source: a file, or a folder read file by file."""

    def __init__(self, src: SourceConfig) -> None:
        self.src = src
        self.path = Path(src.path)
        if not self.path.exists():
            raise InputDataError(f"input not found: {self.path}; check the path in data.sources")
        self.name = src.name or _stem(self.path)
        self.skipped: list[str] = []  # folder files no reader handles
        self.files = self._files()

    def _files(self) -> list[tuple[Path, str, str]]:
        """(file, path relative to the source, reader kind) in reading order."""
        if self.path.is_file():
            kind = self.src.kind if self.src.kind != "auto" else kind_for(self.path)
            if kind is None:
                raise InputDataError(
                    f"cannot tell how to read {self.path} from its extension; use one of "
                    f"{_supported()}, or set `kind` in the data.sources entry"
                )
            return [(self.path, self.path.name, kind)]
        found = []
        for f in sorted(self.path.rglob("*")):
            rel = f.relative_to(self.path)
            if not f.is_file() or any(part.startswith(".") for part in rel.parts):
                continue
            kind = kind_for(f)
            if self.src.kind != "auto" and kind != self.src.kind:
                kind = None
            if kind is None:
                self.skipped.append(str(f))
                continue
            found.append((f, rel.as_posix(), kind))
        return found

    def __iter__(self) -> Iterator[Document | Malformed]:
        for path, rel, kind in self.files:
            yield from READERS[kind](path, rel, self.src, self.name)
