"""The narrow object-store protocol every back end implements.

Objects are immutable blobs addressed by a key made of lowercase hex path segments (see
:mod:`telerad.storage.keys`). ``put`` is atomic: a reader sees the whole object or nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from telerad.storage.errors import InvalidKey
from telerad.storage.keys import check_key

#: The part of a list prefix after its last ``/``: the start of a key segment.
_PARTIAL_SEGMENT_RE = re.compile(r"[a-z0-9_.-]*")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What ``head`` returns about a stored object."""

    key: str
    size: int
    sha256: str


@runtime_checkable
class ObjectStore(Protocol):
    """Back-end protocol. Errors are :class:`telerad.storage.errors.StorageError` subclasses."""

    name: str

    def put(self, key: str, data: bytes, sha256: str | None = None) -> ObjectInfo:
        """Store ``data`` atomically under ``key``.

        If ``sha256`` (lowercase hex) is given it is checked against ``data`` before anything is
        written, raising ``IntegrityError`` on mismatch. Overwrites an existing object.
        """
        ...

    def get(self, key: str) -> bytes:
        """Return the whole object; ``ObjectNotFound`` if absent."""
        ...

    def open(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the object in chunks; ``ObjectNotFound`` if absent (raised on first ``next``)."""
        ...

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Return ``length`` bytes from ``start`` (fewer at the end of the object)."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Size and SHA-256 of the object; ``ObjectNotFound`` if absent."""
        ...

    def exists(self, key: str) -> bool:
        """True if the object exists."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield every key starting with ``prefix``, in lexical order."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def check_prefix(prefix: str) -> str:
    """Validate a ``list`` prefix: whole key segments, then the start of one more.

    ``"studies/ab/"`` and ``"studies/a"`` are valid; ``"../"``, ``"a//"`` and ``"A"`` raise
    :class:`~telerad.storage.errors.InvalidKey`, so a prefix can no more leave the store than a
    key can.
    """
    directory, _, partial = prefix.rpartition("/")
    if directory:
        check_key(directory)
    elif prefix.startswith("/"):
        raise InvalidKey(f"invalid prefix: {prefix[:80]!r}")
    if _PARTIAL_SEGMENT_RE.fullmatch(partial) is None:
        raise InvalidKey(f"invalid prefix: {prefix[:80]!r}")
    return prefix


def check_range(start: int, length: int) -> None:
    """Reject a negative ``get_range`` start or length with ``ValueError``."""
    if start < 0 or length < 0:
        raise ValueError(f"invalid range: start={start}, length={length}")
