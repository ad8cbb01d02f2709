"""Object stores: where instance bytes live, behind one narrow protocol.

Back ends are chosen by name from :data:`BACKENDS`::

    store = open_object_store("filesystem", root=Path("/var/lib/telerad/objects"))
    store = open_object_store("s3", endpoint="minio:9000", access_key=..., secret_key=...,
                              bucket="telerad")

Every back end raises only :mod:`telerad.storage.errors` exceptions and passes the same
contract test suite (``tests/storage/test_objectstore.py``).
"""

from __future__ import annotations

from typing import Any

from telerad.storage.objectstore.base import ObjectInfo, ObjectStore
from telerad.storage.objectstore.filesystem import FilesystemObjectStore
from telerad.storage.objectstore.s3 import S3ObjectStore

__all__ = [
    "BACKENDS",
    "FilesystemObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "S3ObjectStore",
    "open_object_store",
]

#: Back-end classes by their ``name``.
BACKENDS: dict[str, type[ObjectStore]] = {
    FilesystemObjectStore.name: FilesystemObjectStore,
    S3ObjectStore.name: S3ObjectStore,
}


def open_object_store(backend: str, **options: Any) -> ObjectStore:
    """Build the object store called ``backend`` from its constructor ``options``.

    Parameters
    ----------
    backend
        A key of :data:`BACKENDS`: ``"filesystem"`` or ``"s3"``.
    **options
        Keyword arguments of that back end's constructor.

    Raises
    ------
    ValueError
        ``backend`` is not a known back end.
    """
    try:
        cls = BACKENDS[backend]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(f"unknown object store back end {backend!r} (known: {known})") from None
    return cls(**options)
