"""Streaming writers for the corpus files; each file appears atomically (temp file + rename).

HTML pages are renamed into place one by one, into shards of at most 1000 files; the single
files (posts, records, ground truth) are written to a temp file and renamed when complete.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import sqlite3
import sys
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

from lmforge.demo.doc import CorpusDoc
from lmforge.demo.webpage import render_page
from lmforge.workspace import atomic_path

WEB_DIR = "web"
POSTS_FILE = "posts.jsonl"
CSV_FILE = "records.csv"
SQLITE_FILE = "records.sqlite"
TRUTH_FILE = "ground_truth.jsonl"
SQL_TABLE = "tickets"
RECORD_COLUMNS = ("id", "product", "category", "channel", "region", "comment", "label")
SHARD_SIZE = 1000
_SQL_BATCH = 1000


# Line breaks to str.splitlines() but not to JSON: escaped, so that any line reader agrees.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _json_line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS) + "\n").encode("utf-8")


class WebPages:
    """`web/<shard>/<id>.html`; removes what a previous generation left in the folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0
        self.bytes = 0
        self._shard = -1
        self._dir = root
        self._names: set[str] = set()

    def write(self, doc_id: str, html: str) -> None:
        shard = self.count // SHARD_SIZE
        if shard != self._shard:
            self._finish_shard()
            self._shard = shard
            self._dir = self.root / f"{shard:05d}"
            self._dir.mkdir(parents=True, exist_ok=True)
        name = f"{doc_id}.html"
        data = html.encode("utf-8")
        tmp = self._dir / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self._dir / name)
        self._names.add(name)
        self.count += 1
        self.bytes += len(data)

    def _finish_shard(self) -> None:
        if self._shard >= 0:
            for stale in self._dir.iterdir():
                if stale.name not in self._names:
                    _remove(stale)
        self._names = set()

    def close(self) -> None:
        self._finish_shard()
        if not self.root.exists():
            return
        shards = {f"{i:05d}" for i in range(self._shard + 1)}
        for child in self.root.iterdir():
            if child.name not in shards:
                _remove(child)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class CorpusFiles:
    """All output files of one generation, open for streaming writes."""

    def __init__(self, out_dir: Path, page_rng: random.Random) -> None:
        self.out_dir = out_dir
        self.page_rng = page_rng
        self.web = WebPages(out_dir / WEB_DIR)
        self._stack = ExitStack()
        self._batch: list[tuple[str, ...]] = []
        self.sizes: dict[str, int] = {}

    def __enter__(self) -> CorpusFiles:
        try:
            self._open_all(self._stack)
        except BaseException:
            self._stack.__exit__(*sys.exc_info())  # deletes the temp files already made
            raise
        return self

    def _open_all(self, stack: ExitStack) -> None:
        self._posts = self._open_binary(POSTS_FILE)
        self._truth = self._open_binary(TRUTH_FILE)
        csv_tmp = stack.enter_context(atomic_path(self.out_dir / CSV_FILE))
        csv_fh = open(csv_tmp, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed by stack)
        self._csv_fh = stack.enter_context(csv_fh)
        self._csv = csv.writer(self._csv_fh, lineterminator="\n")
        self._csv.writerow(RECORD_COLUMNS)
        sql_tmp = stack.enter_context(atomic_path(self.out_dir / SQLITE_FILE))
        self._sql = sqlite3.connect(sql_tmp)
        stack.callback(self._sql.close)
        # The temp file is renamed only after a commit, so no journal is needed for safety.
        self._sql.execute("PRAGMA journal_mode=OFF")
        self._sql.execute("PRAGMA synchronous=OFF")
        columns = ", ".join(
            f"{c} TEXT" + (" PRIMARY KEY" if c == "id" else "") for c in RECORD_COLUMNS
        )
        self._sql.execute(f"CREATE TABLE {SQL_TABLE} ({columns})")

    def _open_binary(self, name: str) -> Any:
        tmp = self._stack.enter_context(atomic_path(self.out_dir / name))
        return self._stack.enter_context(open(tmp, "wb"))

    def write_doc(self, doc: CorpusDoc) -> None:
        if doc.source == "web":
            self.web.write(doc.id, render_page(self.page_rng, doc))
        elif doc.source == "posts":
            row = {"id": doc.id, "text": doc.text, "label": doc.label}
            self._posts.write(_json_line({**row, "user": doc.user, "created_at": doc.created_at}))
        else:
            record = (
                doc.id,
                doc.product,
                doc.category,
                doc.channel,
                doc.region,
                doc.text,
                doc.label,
            )
            if doc.source == "records_csv":
                self._csv.writerow(record)
            else:
                self._batch.append(record)
                if len(self._batch) >= _SQL_BATCH:
                    self._flush_sql()

    def write_malformed_post(self, line: str) -> None:
        self._posts.write((line.translate(_LINE_BREAKS) + "\n").encode("utf-8"))

    def write_truth(self, doc: CorpusDoc) -> None:
        self._truth.write(_json_line(doc.truth()))

    def _flush_sql(self) -> None:
        marks = ", ".join("?" * len(RECORD_COLUMNS))
        self._sql.executemany(f"INSERT INTO {SQL_TABLE} VALUES ({marks})", self._batch)
        self._batch = []

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._flush_sql()
            self._sql.commit()
            self.web.close()
        # Closing the stack closes every handle, then renames (or, on error, deletes) temps.
        self._stack.__exit__(exc_type, exc, tb)
        if exc_type is None:
            for name in (POSTS_FILE, CSV_FILE, SQLITE_FILE, TRUTH_FILE):
                self.sizes[name] = (self.out_dir / name).stat().st_size
            self.sizes[WEB_DIR] = self.web.bytes
