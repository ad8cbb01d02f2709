"""Content codings of request bodies (RFC 9110 §8.4), decoded as a stream with a size cap.

``Content-Encoding`` lists the codings in the order they were applied, so they are undone
from the last to the first. Accepted: ``gzip`` (RFC 1952, several members allowed; ``x-gzip``
is the same coding, §8.4.1.3), ``deflate`` (the zlib format of RFC 1950, §8.4.1.2; the bare
RFC 1951 stream some clients send instead is accepted too) and ``identity``. Any other coding
is refused with 415 and an ``Accept-Encoding`` header naming these (§15.5.16, §12.5.3).

The cap applies to the *decoded* size, each zlib step producing at most :data:`STEP_BYTES`,
so a small body that inflates to gigabytes costs one step of memory before it is refused.

Errors: :class:`ContentCodingError` → :class:`UnsupportedContentCoding` (415),
:class:`CorruptContent` (400), :class:`ContentTooLarge` (413); ``problems.py`` maps them.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator, Sequence

ACCEPTED_CODINGS = ("gzip", "deflate", "identity")
#: Largest piece of decoded output one zlib call may produce.
STEP_BYTES = 256 * 1024
_ALIASES = {"x-gzip": "gzip"}
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -zlib.MAX_WBITS


class ContentCodingError(ValueError):
    """A request body's content coding cannot be undone."""


class UnsupportedContentCoding(ContentCodingError):
    """A coding other than those of :data:`ACCEPTED_CODINGS` (RFC 9110 §15.5.16)."""


class CorruptContent(ContentCodingError):
    """The body is not a valid (or is a truncated) stream of its declared coding."""


class ContentTooLarge(ContentCodingError):
    """The decoded body exceeds the allowed size (RFC 9110 §15.5.14)."""


def content_codings(header: str | None) -> list[str]:
    """The codings named by a ``Content-Encoding`` header, in the order they were applied.

    ``identity`` (and an absent or empty header) contributes nothing; names are
    case-insensitive (RFC 9110 §8.4.1). Raises :class:`UnsupportedContentCoding`.
    """
    codings = []
    for token in (header or "").split(","):
        coding = _ALIASES.get(token.strip().lower(), token.strip().lower())
        if coding not in ACCEPTED_CODINGS and coding != "":
            raise UnsupportedContentCoding(f"content coding {coding[:40]!r} is not supported")
        if coding not in ("", "identity"):
            codings.append(coding)
    return codings


def decoded_body(
    chunks: AsyncIterator[bytes], codings: Sequence[str], max_bytes: int
) -> AsyncIterator[bytes]:
    """The body ``chunks`` with ``codings`` (as :func:`content_codings` returns) undone.

    Raises (while iterating) :class:`ContentTooLarge` once more than ``max_bytes`` have been
    decoded at any layer, and :class:`CorruptContent` on a malformed or truncated stream.
    """
    if not codings:
        return _capped(chunks, max_bytes)
    for coding in reversed(codings):
        chunks = _capped(_inflated(chunks, coding), max_bytes)
    return chunks


class Inflater:
    """Incremental decoder of one ``gzip`` or ``deflate`` coded stream.

    :meth:`feed` yields the output of each input chunk in pieces of at most
    :data:`STEP_BYTES`; :meth:`finish` checks that the stream ended.
    """

    def __init__(self, coding: str) -> None:
        if coding not in ("gzip", "deflate"):
            raise UnsupportedContentCoding(f"no decoder for {coding!r}")
        self.coding = coding
        self._zlib: zlib._Decompress | None = None
        self._head = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decode the next chunk of input."""
        data = self._head + data
        if self._zlib is None and self.coding == "deflate" and len(data) < 2:
            self._head = data  # too short to tell a zlib header from a bare stream
            return
        self._head = b""
        while True:
            if self._zlib is None or (self._zlib.eof and data):
                self._zlib = self._next_stream(data)
            piece = self._step(data)
            if piece:
                yield piece
            data = self._zlib.unused_data if self._zlib.eof else self._zlib.unconsumed_tail
            if not data and (self._zlib.eof or len(piece) < STEP_BYTES):
                return  # zlib stopped for want of input, not for want of room

    def finish(self) -> None:
        """Raise :class:`CorruptContent` unless the input ended exactly at a stream's end."""
        if self._zlib is None or not self._zlib.eof:
            raise CorruptContent(f"the {self.coding} stream is truncated")

    def _next_stream(self, data: bytes) -> zlib._Decompress:
        if self._zlib is not None and self.coding != "gzip":
            raise CorruptContent("data after the end of the deflate stream")
        return zlib.decompressobj(_GZIP_WBITS if self.coding == "gzip" else _deflate_wbits(data))

    def _step(self, data: bytes) -> bytes:
        assert self._zlib is not None
        try:
            return self._zlib.decompress(data, STEP_BYTES)
        except zlib.error as exc:
            raise CorruptContent(f"corrupt {self.coding} data: {exc}") from exc


def _deflate_wbits(head: bytes) -> int:
    """zlib-wrapped (RFC 1950 header: CM 8, header checksum) or a bare RFC 1951 stream."""
    zlib_header = head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
    return zlib.MAX_WBITS if zlib_header else _RAW_DEFLATE_WBITS


async def _inflated(chunks: AsyncIterator[bytes], coding: str) -> AsyncIterator[bytes]:
    inflater = Inflater(coding)
    async for chunk in chunks:
        for piece in inflater.feed(chunk):
            yield piece
    inflater.finish()


async def _capped(chunks: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise ContentTooLarge(f"request body larger than {max_bytes} bytes once decoded")
        yield chunk
