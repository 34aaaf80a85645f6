"""Line-by-line reading of (possibly compressed) text files with bounded memory.

A line longer than `MAX_LINE_BYTES` is never held whole: its first bytes are kept as a
preview and the rest is skipped in chunks. Lines that are not valid UTF-8, too long, or cut
off by a damaged compressed stream come back marked with a `problem`, so each reader can
turn them into a Malformed record in place and go on.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lmforge.data.sources.compressed import open_binary

MAX_LINE_BYTES = 10 * 1024 * 1024
PREVIEW_BYTES = 1024  # what a rejected record shows of a line or file that was too long
_CHUNK = 1024 * 1024  # most bytes asked of the stream at once

TOO_LONG = "line too long"
UNDECODABLE = "undecodable bytes"
CORRUPT = "corrupt or truncated file"


@dataclass(slots=True)
class Line:
    """One line of a file. `offset` is its first byte in the (decompressed) stream.

    `text` keeps the line ending. With a problem, `reason` says what is wrong and `text`
    is what a person can be shown: the line with replacement characters, or a preview.
    """

    offset: int
    text: str
    problem: str | None = None
    reason: str = ""


def decode_utf8(data: bytes) -> tuple[str, str | None]:
    """(text, None) for valid UTF-8, else (text with U+FFFD, a reason naming the first bad
    byte): the replacement text lets a person see the record in the rejected output."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        reason = f"{UNDECODABLE}: not valid UTF-8 at byte {exc.start} of the record"
        return data.decode("utf-8", errors="replace"), reason


def too_long_preview(head: bytes) -> str:
    return head[:PREVIEW_BYTES].decode("utf-8", errors="replace") + "…"


def read_head(path: Path, limit: int = MAX_LINE_BYTES) -> tuple[bytes, bool]:
    """The file's bytes, or its first `limit` of them and True when it is longer: one
    record never takes more memory than a JSONL line may."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    return data[:limit], len(data) > limit


def read_lines(path: Path, limit: int = MAX_LINE_BYTES) -> Iterator[Line]:
    """Every line of `path` in order. A damaged compressed stream ends the iteration with
    one Line whose problem is CORRUPT; the complete lines before it are yielded first."""
    offset = 0
    first = min(_CHUNK, limit + 1)
    with open_binary(path) as fh:
        readline = fh.readline
        while True:
            try:
                data = readline(first)
                # Fast path: a whole line (or the last one) in one call.
                if len(data) == first and not data.endswith(b"\n"):
                    data, size, too_long = _rest_of_line(fh, data, limit)
                else:
                    size, too_long = len(data), False
            except (EOFError, OSError, zlib.error) as exc:
                yield Line(offset, "", CORRUPT, f"{CORRUPT}: {exc}")
                return
            if not size:
                return
            if too_long:
                reason = f"{TOO_LONG}: {size} bytes, the limit is {limit}"
                yield Line(offset, too_long_preview(data), TOO_LONG, reason)
            else:
                try:
                    line = Line(offset, data.decode("utf-8"))
                except UnicodeDecodeError:
                    text, bad = decode_utf8(data)
                    line = Line(offset, text, UNDECODABLE, bad or "")
                if not offset:
                    line.text = line.text.removeprefix("\ufeff")  # a BOM is not part of a record
                yield line
            offset += size


def _rest_of_line(fh: BinaryIO, head: bytes, limit: int) -> tuple[bytes, int, bool]:
    """Finish a line whose first piece is `head`: (line, bytes it takes in the stream,
    whether it is over `limit`).

    Read in pieces: `readline(limit)` would gather the whole limit in its own buffers and
    then copy it, twice the memory. An over-long line comes back as a preview only.
    """
    pieces = [head]
    size = len(head)
    piece = head
    while size <= limit:
        piece = fh.readline(min(_CHUNK, limit + 1 - size))
        if not piece:
            break
        pieces.append(piece)
        size += len(piece)
        if piece.endswith(b"\n"):
            break
    if size <= limit or piece.endswith(b"\n"):
        return b"".join(pieces), size, False
    preview = head[:PREVIEW_BYTES]
    pieces.clear()  # drop the kept part before reading on
    while piece and not piece.endswith(b"\n"):
        piece = fh.readline(_CHUNK)
        size += len(piece)
    return preview, size, True
