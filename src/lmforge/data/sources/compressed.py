"""Open a plain, gzip or zstd file as one stream of bytes, chosen by the file name."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import BinaryIO

import zstandard

# The decompression object has no output limit, so the input fed per step is sized from the
# compression ratio seen so far: one step yields about _TARGET_OUTPUT bytes even for data that
# compresses thousands of times (zstd can pack a 128 KiB block into a few bytes).
_TARGET_OUTPUT = 1024 * 1024
_FIRST_FEED, _MIN_FEED, _MAX_FEED = 256, 64, 64 * 1024
_READ_BUFFER = 128 * 1024


class TruncatedStreamError(OSError):
    """The compressed stream ended in the middle of a frame."""


class _ZstdRaw(io.RawIOBase):
    """Raw reader over concatenated zstd frames that fails loudly on a cut-off frame.

    zstandard's own stream reader returns a quiet end of file when the data stops mid-frame,
    which would make a truncated download look complete; the decompression object reports
    whether the frame was finished, so this reader raises instead.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._pending = b""  # decompressed bytes not yet handed out, from `_pos` on
        self._pos = 0
        self._in_frame = False  # bytes of the current frame seen, frame not finished
        self._feed_size = _FIRST_FEED

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while self._pos >= len(self._pending):
            if not self._fill():
                return 0
        # An index instead of slicing the rest off: no copy of what is still pending.
        n = min(len(buffer), len(self._pending) - self._pos)
        buffer[:n] = memoryview(self._pending)[self._pos : self._pos + n]
        self._pos += n
        return n

    def _fill(self) -> bool:
        """Decompress the next input chunk into `_pending`; False at a clean end of data."""
        chunk = self._fh.read(self._feed_size)
        if not chunk:
            if self._in_frame:
                raise TruncatedStreamError("zstd data ends in the middle of a frame")
            return False
        self._pending = self._feed(chunk)
        self._pos = 0
        ratio = max(1, len(self._pending) // len(chunk))
        self._feed_size = max(_MIN_FEED, min(_MAX_FEED, _TARGET_OUTPUT // ratio))
        return True

    def _feed(self, data: bytes) -> bytes:
        out = []
        while data:
            self._in_frame = True
            try:
                out.append(self._obj.decompress(data))
            except zstandard.ZstdError as exc:
                raise OSError(f"invalid zstd data: {exc}") from None
            if not self._obj.eof:
                break
            # A finished frame; whatever follows starts the next one.
            data = self._obj.unused_data
            self._obj = self._dctx.decompressobj()
            self._in_frame = False
        return b"".join(out)

    def close(self) -> None:
        self._fh.close()
        super().close()


def open_binary(path: Path) -> BinaryIO:
    """The decompressed bytes of `path` (.gz and .zst by name, anything else as is).

    Reading a damaged compressed file raises EOFError, OSError or zlib.error at the damage.
    """
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if name.endswith(".zst"):
        raw = _ZstdRaw(open(path, "rb"))  # noqa: SIM115 - closed with the returned stream
        return io.BufferedReader(raw, buffer_size=_READ_BUFFER)  # type: ignore[return-value]
    return open(path, "rb")
