"""Caps, weights and empty files: what a source contributes and how the read step reports it."""

import json
import os
import subprocess
import sys

import pytest

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources import SourceReader
from lmforge.data.steps.read import ReadStep
from lmforge.errors import InputDataError


def write_jsonl(path, n, start=0):
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(start, start + n):
            fh.write(json.dumps({"id": f"d{i}", "text": f"document number {i}"}) + "\n")


def ids(reader) -> list[str]:
    return [r.id for r in reader if isinstance(r, Document)]


def run_read(*sources: SourceConfig) -> tuple[ReadStep, list[Document], list[tuple[str, str]]]:
    step = ReadStep([SourceReader(s) for s in sources])
    rejected: list[tuple[str, str]] = []
    docs = list(step.run(lambda doc, _step, reason: rejected.append((doc.meta["file"], reason))))
    return step, docs, rejected


def test_max_docs_stops_after_that_many_records_malformed_included(tmp_path):
    path = tmp_path / "p.jsonl"
    write_jsonl(path, 10)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("not json\n")
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[-1], *lines[1:-1]]) + "\n")  # bad line 2nd

    reader = SourceReader(SourceConfig(path=str(path), max_docs=4))
    records = list(reader)
    assert [type(r).__name__ for r in records] == ["Document", "Malformed", "Document", "Document"]
    assert [r.id for r in records if isinstance(r, Document)] == ["d0", "d1", "d2"]
    assert reader.capped

    exact = SourceReader(SourceConfig(path=str(path), max_docs=11))
    assert len(list(exact)) == 11 and not exact.capped


def test_cap_spans_the_files_of_a_folder_in_order(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", 3)
    write_jsonl(tmp_path / "b.jsonl", 3, start=3)
    reader = SourceReader(SourceConfig(path=str(tmp_path), max_docs=5))
    assert ids(reader) == ["d0", "d1", "d2", "d3", "d4"]


def test_weight_keeps_about_that_share_and_the_same_records_every_run(tmp_path):
    path = tmp_path / "big.jsonl"
    write_jsonl(path, 2000)
    src = SourceConfig(path=str(path), weight=0.5)
    reader = SourceReader(src)
    first = ids(reader)
    assert 900 <= len(first) <= 1100
    assert reader.sampled_out == 2000 - len(first)
    assert ids(SourceReader(src)) == first  # same records, same order
    # a smaller weight keeps a subset of what a larger one keeps
    quarter = ids(SourceReader(SourceConfig(path=str(path), weight=0.25)))
    assert 400 <= len(quarter) <= 600 and set(quarter) <= set(first)
    # another source name is another sample
    other = ids(SourceReader(SourceConfig(path=str(path), weight=0.5, name="other")))
    assert other != first


def test_weight_sample_is_the_same_in_another_process(tmp_path):
    path = tmp_path / "big.jsonl"
    write_jsonl(path, 300)
    here = ids(SourceReader(SourceConfig(path=str(path), weight=0.3)))
    code = (
        "import json, sys\n"
        "from lmforge.config import SourceConfig\n"
        "from lmforge.data.sources import SourceReader\n"
        "src = SourceConfig(path=sys.argv[1], weight=0.3)\n"
        "print(json.dumps([r.id for r in SourceReader(src)]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # Python's hash() would differ now
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == here


def test_weight_then_cap(tmp_path):
    path = tmp_path / "p.jsonl"
    write_jsonl(path, 500)
    sampled = ids(SourceReader(SourceConfig(path=str(path), weight=0.5)))
    reader = SourceReader(SourceConfig(path=str(path), weight=0.5, max_docs=20))
    assert ids(reader) == sampled[:20] and reader.capped


def test_empty_file_in_a_folder_is_counted_and_the_run_goes_on(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", 2)
    (folder / "b.jsonl").write_bytes(b"")
    (folder / "c.csv").write_text("id,text\n", encoding="utf-8")  # a header, no rows
    (folder / "d.parquet").write_bytes(b"")
    (folder / "e.txt").write_text("  \n", encoding="utf-8")
    step, docs, rejected = run_read(SourceConfig(path=str(folder)))
    assert [d.id for d in docs] == ["d0", "d1"]
    assert [(os.path.basename(f), reason.split(":")[0]) for f, reason in rejected] == [
        ("b.jsonl", "empty file"),
        ("c.csv", "empty file"),
        ("d.parquet", "empty file"),
        ("e.txt", "empty file"),
    ]
    assert step.source_stats()["in"] == {
        "records": 6,
        "documents": 2,
        "malformed": 4,
        "empty_files": 4,
    }
    assert step.stats.dropped == {"empty file": 4}


def test_a_source_that_is_only_empty_files_stops_the_run(tmp_path):
    good = tmp_path / "good.jsonl"
    write_jsonl(good, 1)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(InputDataError, match=r"no documents in .*empty.jsonl \(1 malformed .*1 of"):
        run_read(SourceConfig(path=str(good)), SourceConfig(path=str(empty)))
    folder = tmp_path / "only_empty"
    folder.mkdir()
    (folder / "x.jsonl").write_bytes(b"")
    (folder / "y.csv").write_bytes(b"")
    with pytest.raises(InputDataError, match=r"only_empty \(2 malformed records, 2 of them empty"):
        run_read(SourceConfig(path=str(folder)))


def test_a_weight_that_keeps_nothing_says_so(tmp_path):
    path = tmp_path / "tiny.jsonl"
    write_jsonl(path, 3)
    src = SourceConfig(path=str(path), weight=0.001)
    with pytest.raises(InputDataError, match=r"weight 0.001 kept none of its 3 records"):
        run_read(src)


def test_read_step_reports_sampling_and_cap_per_source(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl(a, 100)
    write_jsonl(b, 100)
    step, docs, _ = run_read(
        SourceConfig(path=str(a), weight=0.5), SourceConfig(path=str(b), max_docs=10)
    )
    stats = step.source_stats()
    assert stats["a"]["documents"] + stats["a"]["sampled_out"] == 100
    assert stats["b"] == {"records": 10, "documents": 10, "malformed": 0, "capped_at": 10}
    assert len(docs) == stats["a"]["documents"] + 10


def test_empty_file_record_is_never_sampled_out(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", 50)
    (folder / "b.jsonl").write_bytes(b"")
    records = list(SourceReader(SourceConfig(path=str(folder), weight=0.01)))
    assert isinstance(records[-1], Malformed) and records[-1].reason == "empty file"
