"""Readers for every input kind, and the dispatch from a SourceConfig to them.

`SourceReader(src)` yields `Document`s and `Malformed` records in a deterministic order
(files sorted by path, records in file order), sampled by the source's `weight` and cut at
its `max_docs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing
from functools import partial
from pathlib import Path

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources.delimited import read_delimited
from lmforge.data.sources.hf import import_datasets, is_hf_folder, read_hf
from lmforge.data.sources.html import read_html
from lmforge.data.sources.jsonl import read_jsonl
from lmforge.data.sources.lines import MAX_LINE_BYTES
from lmforge.data.sources.parquet import read_parquet
from lmforge.data.sources.sampling import keeps, position_key
from lmforge.data.sources.sql import SqlSource
from lmforge.data.sources.sqlite import read_sqlite
from lmforge.data.sources.text import read_text
from lmforge.errors import ConfigError, InputDataError

__all__ = [
    "EMPTY_FILE",
    "EXTENSIONS",
    "MAX_LINE_BYTES",
    "READERS",
    "SourceReader",
    "kind_for",
]

Reader = Callable[[Path, str, SourceConfig, str], Iterator[Document | Malformed]]
Records = Iterator[Document | Malformed]

READERS: dict[str, Reader] = {
    "jsonl": read_jsonl,
    "csv": partial(read_delimited, delimiter=","),
    "tsv": partial(read_delimited, delimiter="\t"),
    "parquet": read_parquet,
    "sqlite": read_sqlite,
    "html": read_html,
    "text": read_text,
    "hf": read_hf,
}

EXTENSIONS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".jsonl.gz": "jsonl",
    ".json.gz": "jsonl",
    ".ndjson.gz": "jsonl",
    ".jsonl.zst": "jsonl",
    ".json.zst": "jsonl",
    ".ndjson.zst": "jsonl",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".csv.zst": "csv",
    ".tsv": "tsv",
    ".tsv.gz": "tsv",
    ".tsv.zst": "tsv",
    ".parquet": "parquet",
    ".sqlite": "sqlite",
    ".sqlite3": "sqlite",
    ".db": "sqlite",
    ".html": "html",
    ".htm": "html",
    ".txt": "text",
}

# Reason of the record that stands in for a file with nothing in it, so the rejected
# output lists every empty file of a folder.
EMPTY_FILE = "empty file"


def kind_for(path: Path) -> str | None:
    """Reader kind from a file name's extension (".jsonl.gz" counts as one extension), or
    "hf" for a folder written by a Hugging Face dataset's save_to_disk."""
    if is_hf_folder(path):
        return "hf"
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
    """Reads one configured source: a file, a folder read file by file, or a database URL.

    After (or during) iteration, `sampled_out` counts records left out by `weight` and
    `capped` says whether `max_docs` stopped the source before its end.
    """

    def __init__(self, src: SourceConfig) -> None:
        self.src = src
        self.skipped: list[str] = []  # folder files no reader handles
        self.sampled_out = 0
        self.capped = False
        self.sql: SqlSource | None = None
        self.path: Path | None = None
        self.files: list[tuple[Path, str, str]] = []
        if src.url is not None:
            if src.kind not in ("auto", "sql"):
                raise ConfigError(
                    f"a data.sources entry with `url` is read with kind 'sql', not {src.kind!r}; "
                    "drop `kind` or set it to sql"
                )
            self.sql = SqlSource(src)
            self.location = self.sql.url  # password hidden
            self.name = src.name or src.table or "sql"
            self.sql.check()
            return
        if src.kind == "sql":
            raise ConfigError(
                "kind 'sql' reads a database `url` (e.g. url: sqlite:///data.db); for a SQLite "
                f"file in `path` ({src.path}) use kind sqlite or auto"
            )
        self.path = Path(str(src.path))
        if not self.path.exists():
            raise InputDataError(f"input not found: {self.path}; check the path in data.sources")
        self.location = str(self.path)
        self.name = src.name or _stem(self.path)
        self.files = self._files(self.path)
        if any(kind == "hf" for _, _, kind in self.files):
            import_datasets()  # a missing optional extra is reported before reading starts

    def _files(self, root: Path) -> list[tuple[Path, str, str]]:
        """(file, path relative to the source, reader kind) in reading order."""
        wanted = self.src.kind
        if root.is_file():
            kind = wanted if wanted != "auto" else kind_for(root)
            if kind is None:
                raise InputDataError(
                    f"cannot tell how to read {root} from its extension; use one of "
                    f"{_supported()}, or set `kind` in the data.sources entry"
                )
            if kind == "hf":
                raise InputDataError(
                    f"kind 'hf' reads a folder written by a dataset's save_to_disk, and {root} "
                    "is a file; drop `kind` or point `path` at the dataset folder"
                )
            return [(root, root.name, kind)]
        if is_hf_folder(root):
            if wanted not in ("auto", "hf"):
                raise InputDataError(
                    f"{root} is a folder written by a Hugging Face dataset's save_to_disk; "
                    f"read it with kind hf (or auto), not {wanted!r}"
                )
            return [(root, root.name, "hf")]
        found = []
        for f in _walk(root):
            kind = kind_for(f)
            if wanted != "auto" and kind != wanted:
                kind = None
            if kind is None:
                self.skipped.append(str(f))
                continue
            found.append((f, f.relative_to(root).as_posix(), kind))
        return found

    def __iter__(self) -> Iterator[Document | Malformed]:
        self.sampled_out = 0
        self.capped = False
        cap, weight = self.src.max_docs, self.src.weight
        kept = 0
        for rel, records in self._parts():
            with closing(records):  # a cap stops mid-file: close files and connections now
                if cap is None and weight >= 1.0:
                    yield from records
                    continue
                for record in records:
                    if weight < 1.0 and not self._kept_by_weight(rel, record):
                        self.sampled_out += 1
                        continue
                    if cap is not None and kept >= cap:
                        self.capped = True
                        return
                    kept += 1
                    yield record

    def _kept_by_weight(self, rel: str, record: Document | Malformed) -> bool:
        """Whether `weight` keeps the record. An empty-file record reports a file, not a
        record, so it is always kept."""
        if isinstance(record, Malformed) and record.reason.startswith(EMPTY_FILE):
            return True
        return keeps(position_key(self.name, rel, record.meta), self.src.weight)

    def _parts(self) -> Iterator[tuple[str, Records]]:
        """(path relative to the source, its records) for each file or the database."""
        if self.sql is not None:
            yield "", self.sql.read(self.name)
            return
        for path, rel, kind in self.files:
            yield rel, self._read_file(path, rel, kind)

    def _read_file(self, path: Path, rel: str, kind: str) -> Records:
        """The file's records; one EMPTY_FILE record when it holds none."""
        lineage = {"source": self.name, "reader": kind, "file": str(path)}
        if path.is_file() and path.stat().st_size == 0:
            # Never handed to a reader: Parquet or SQLite would call an empty file corrupt.
            yield Malformed(EMPTY_FILE, "", self.name, lineage)
            return
        records = READERS[kind](path, rel, self.src, self.name)
        first = next(records, None)
        if first is None:
            yield Malformed(f"{EMPTY_FILE}: no records in it", "", self.name, lineage)
            return
        yield first
        yield from records


def _walk(folder: Path) -> Iterator[Path]:
    """Files under `folder` in sorted path order, hidden ones left out. A saved Hugging Face
    dataset counts as one entry: its .json/.arrow internals are not records."""
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            if is_hf_folder(entry):
                yield entry
            else:
                yield from _walk(entry)
        elif entry.is_file():
            yield entry
