"""Compressed JSONL/CSV, damaged streams, over-long and undecodable lines."""

import gzip
import json
import tracemalloc

import pytest
import zstandard

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources import MAX_LINE_BYTES, SourceReader, kind_for
from lmforge.data.sources.compressed import open_binary


def read(path, **kw) -> list[Document | Malformed]:
    return list(SourceReader(SourceConfig(path=str(path), **kw)))


def jsonl_bytes(n: int, width: int = 60) -> bytes:
    rows = (json.dumps({"id": f"r{i}", "text": f"review {i} " + "w" * width}) for i in range(n))
    return "".join(r + "\n" for r in rows).encode()


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize("ext", [".jsonl.zst", ".json.zst", ".ndjson.zst"])
def test_zstd_jsonl_reads_like_plain_with_offsets_after_decompression(tmp_path, ext):
    data = jsonl_bytes(5)
    path = tmp_path / f"posts{ext}"
    path.write_bytes(zstd(data))
    plain = tmp_path / "posts.jsonl"
    plain.write_bytes(data)
    docs = read(path)
    assert kind_for(path) == "jsonl"
    assert [d.id for d in docs] == [f"r{i}" for i in range(5)]
    assert docs[0].source == "posts"
    assert [d.meta["offset"] for d in docs] == [d.meta["offset"] for d in read(plain)]


def test_zstd_with_several_frames_reads_all_of_them(tmp_path):
    first, second = jsonl_bytes(3), b'{"id": "last", "text": "from the second frame"}\n'
    path = tmp_path / "p.jsonl.zst"
    path.write_bytes(zstd(first) + zstd(second))
    docs = read(path)
    assert [d.id for d in docs] == ["r0", "r1", "r2", "last"]
    assert docs[-1].meta["offset"] == len(first)


@pytest.mark.parametrize("ext, compress", [(".gz", gzip.compress), (".zst", zstd)])
def test_truncated_file_gives_complete_lines_then_one_malformed(tmp_path, ext, compress):
    data = jsonl_bytes(3000)
    packed = compress(data)
    path = tmp_path / f"cut.jsonl{ext}"
    path.write_bytes(packed[: len(packed) // 2])
    records = read(path)
    *docs, last = records
    assert isinstance(last, Malformed) and last.reason.startswith("corrupt or truncated file")
    assert docs and all(isinstance(d, Document) for d in docs)
    assert len(docs) < 3000
    # every document is a whole line of the original, in order
    originals = [json.loads(line) for line in data.splitlines()]
    assert [(d.id, d.text) for d in docs] == [(o["id"], o["text"]) for o in originals[: len(docs)]]
    assert last.meta["offset"] == sum(len(line) + 1 for line in data.splitlines()[: len(docs)])


def test_garbage_in_a_zst_file_is_one_malformed_record(tmp_path):
    path = tmp_path / "junk.jsonl.zst"
    path.write_bytes(b"this is not zstd data at all" * 10)
    (record,) = read(path)
    assert isinstance(record, Malformed) and record.reason.startswith("corrupt or truncated")


def write_with_long_line(path, opener=open):
    # Written in pieces: the test never builds the 10 MB line as one string either.
    with opener(path, "wb") as fh:
        fh.write(b'{"id": "a", "text": "before"}\n')
        fh.write(b'{"id": "big", "text": "')
        chunk = b"x" * (1024 * 1024)
        for _ in range(MAX_LINE_BYTES // len(chunk) + 1):
            fh.write(chunk)
        fh.write(b'"}\n')
        fh.write(b'{"id": "b", "text": "after"}\n')


@pytest.mark.parametrize("name, opener", [("long.jsonl", open), ("long.jsonl.gz", gzip.open)])
def test_a_line_over_the_limit_is_malformed_and_the_next_line_is_read(tmp_path, name, opener):
    path = tmp_path / name
    write_with_long_line(path, opener)
    first, big, after = read(path)
    assert (first.id, after.id, after.text) == ("a", "b", "after")
    assert isinstance(big, Malformed) and big.reason.startswith("line too long")
    assert big.meta["offset"] == len(b'{"id": "a", "text": "before"}\n')
    assert big.raw.startswith('{"id": "big"') and len(big.raw) < 2000  # a preview only
    big_size = len(b'{"id": "big", "text": "') + (MAX_LINE_BYTES // 2**20 + 1) * 2**20 + 3
    assert after.meta["offset"] == big.meta["offset"] + big_size


def test_a_line_of_exactly_the_limit_is_still_read(tmp_path):
    path = tmp_path / "edge.jsonl"
    prefix, suffix = b'{"text": "', b'"}'
    filler = MAX_LINE_BYTES - len(prefix) - len(suffix)
    path.write_bytes(prefix + b"y" * filler + suffix + b"\n")
    (doc,) = read(path)
    assert isinstance(doc, Document) and len(doc.text) == filler


def test_invalid_utf8_line_is_malformed_with_a_readable_raw_text(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"id": "a", "text": "fine"}\n'  # a BOM on the first line is fine
        b'{"id": "b", "text": "caf\xe9 latin-1"}\n'
        b'{"id": "c", "text": "also fine"}\n'
    )
    first, bad, last = read(path)
    assert (first.id, last.id) == ("a", "c")
    assert isinstance(bad, Malformed) and bad.reason.startswith("undecodable bytes")
    assert bad.raw == '{"id": "b", "text": "caf\ufffd latin-1"}'
    assert bad.meta["offset"] == len('\ufeff{"id": "a", "text": "fine"}\n'.encode())


def test_csv_zst_with_undecodable_and_overlong_rows(tmp_path):
    rows = [b"id,text\n", b"1,good row\n", b"2,bad \xff byte\n"]
    rows += [b"3," + b"z" * (MAX_LINE_BYTES + 10) + b"\n", b'4,"quoted, fine"\n']
    path = tmp_path / "reviews.csv.zst"
    path.write_bytes(zstd(b"".join(rows)))
    records = read(path)
    assert kind_for(path) == "csv"
    assert [type(r).__name__ for r in records] == ["Document", "Malformed", "Malformed", "Document"]
    assert records[1].reason.startswith("undecodable bytes")
    assert records[1].raw == "2,bad \ufffd byte"
    assert records[2].reason.startswith("line too long")
    assert [r.meta["row"] for r in records] == [1, 2, 3, 4]
    assert records[3].text == "quoted, fine"


def test_tsv_zst_and_truncated_csv_gz(tmp_path):
    tsv = tmp_path / "a.tsv.zst"
    tsv.write_bytes(zstd(b"label\ttext\npos\tnice one\n"))
    (doc,) = read(tsv)
    assert (doc.text, doc.label, doc.meta["reader"]) == ("nice one", "pos", "tsv")

    body = b"id,text\n" + b"".join(b"%d,row number %d here\n" % (i, i) for i in range(20000))
    packed = gzip.compress(body)
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    *docs, last = read(cut)
    assert last.reason.startswith("corrupt or truncated file")
    assert [d.text for d in docs] == [f"row number {i} here" for i in range(len(docs))]


def test_text_file_undecodable_or_too_long_is_malformed(tmp_path):
    bad = tmp_path / "legacy.txt"
    bad.write_bytes("电池很好".encode("gbk"))
    (record,) = read(bad)
    assert isinstance(record, Malformed) and record.reason.startswith("undecodable bytes")
    assert "\ufffd" in record.raw

    big = tmp_path / "big.txt"
    with open(big, "wb") as fh:
        fh.truncate(MAX_LINE_BYTES + 1)  # a sparse file: no need to write 10 MB
    (record,) = read(big)
    assert record.reason.startswith("file too long") and len(record.raw) < 2000


def test_an_overlong_line_is_skipped_without_holding_it_in_memory(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as fh:
        fh.truncate(4 * MAX_LINE_BYTES)  # one 40 MB line of NUL bytes, sparse on disk
        fh.seek(0, 2)
        fh.write(b'\n{"text": "after the huge line"}\n')
    tracemalloc.start()
    try:
        big, after = read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert big.reason.startswith("line too long") and after.text == "after the huge line"
    assert peak < 1.5 * MAX_LINE_BYTES


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_csv_row_endings_and_quoted_newlines(tmp_path, newline):
    nl = newline
    path = tmp_path / "r.csv"
    path.write_bytes(f'id,text{nl}1,hello{nl}2,"two{nl}lines"{nl}3,bye{nl}'.encode())
    records = read(path)
    assert [(r.id, r.text, r.meta["row"]) for r in records] == [
        ("1", "hello", 1),
        ("2", f"two{nl}lines", 2),
        ("3", "bye", 3),
    ]


def test_very_compressible_zstd_is_decompressed_in_small_steps(tmp_path):
    path = tmp_path / "zeros.jsonl.zst"
    with open(path, "wb") as fh, zstandard.ZstdCompressor().stream_writer(fh) as writer:
        block = (b" " * 1023 + b"\n") * 1024  # 1 MiB of blank lines
        for _ in range(64):
            writer.write(block)
    assert path.stat().st_size < 64 * 1024  # 64 MiB squeezed more than a thousand times
    tracemalloc.start()
    try:
        with open_binary(path) as fh:
            total = sum(len(chunk) for chunk in iter(lambda: fh.read(1 << 20), b""))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 64 * 2**20
    assert peak < 8 * 2**20
