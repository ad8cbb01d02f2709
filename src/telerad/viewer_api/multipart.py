"""Streaming reader of ``multipart/related`` request bodies (RFC 2387, PS3.18 §8.6.1.2).

Wraps python-multipart's push parser (the one Starlette uses for forms) so that STOW-RS can
hand each part to the ingest path as soon as it is complete, without buffering the whole body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message

from python_multipart.multipart import MultipartParser


class MultipartError(ValueError):
    """The body is not a well-formed multipart/related payload."""


@dataclass
class Part:
    """One body part: its headers (lower-cased names) and its bytes."""

    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)

    @property
    def content_type(self) -> str:
        """The part's media type without parameters, lower-cased ('' if absent)."""
        return media_type(self.headers.get("content-type", ""))[0]


def media_type(header: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type header into (type, parameters), as the email package parses it."""
    message = Message()
    message["content-type"] = header or "application/octet-stream"
    params = {k.lower(): v for k, v in message.get_params(failobj=[])[1:]}
    return message.get_content_type().lower(), params


class _Collector:
    """Callbacks for the push parser; completed parts are queued in ``ready``."""

    def __init__(self) -> None:
        self.ready: list[Part] = []
        self.current = Part()
        self.field = bytearray()
        self.value = bytearray()
        self.finished = False

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self.field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self.value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_part_data": lambda d, s, e: self.current.data.extend(d[s:e]),
            "on_part_end": lambda: self.ready.append(self.current),
            "on_end": self._end,
        }

    def _begin(self) -> None:
        self.current = Part()

    def _header_end(self) -> None:
        name = self.field.decode("latin-1").strip().lower()
        self.current.headers[name] = self.value.decode("latin-1").strip()
        self.field.clear()
        self.value.clear()

    def _end(self) -> None:
        self.finished = True


async def iter_parts(chunks: AsyncIterator[bytes], boundary: str) -> AsyncIterator[Part]:
    """Yield each part of the body as soon as it is complete.

    Raises :class:`MultipartError` on a malformed or truncated body; errors raised by
    ``chunks`` (a decoding or size limit, :mod:`telerad.viewer_api.encoding`) pass through.
    """
    collector = _Collector()
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    async for chunk in chunks:
        with _parser_errors():
            parser.write(chunk)
        while collector.ready:
            yield collector.ready.pop(0)
    with _parser_errors():
        parser.finalize()
    if not collector.finished:
        raise MultipartError("multipart body ends before its closing boundary")


@contextmanager
def _parser_errors() -> Iterator[None]:
    """Translate python-multipart's own error types."""
    try:
        yield
    except Exception as exc:
        raise MultipartError(f"malformed multipart body: {exc}") from exc
