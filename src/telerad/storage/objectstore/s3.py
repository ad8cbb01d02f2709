"""Object store on any S3-compatible endpoint (MinIO, AWS S3, Ceph RGW...), via ``minio``.

Integrity
---------
``put`` stores the object's SHA-256 as user metadata (``x-amz-meta-sha256``), so ``head`` is
one ``HEAD`` request. Over plain HTTP minio also signs the payload hash, which a real server
checks on upload; over TLS it sends ``Content-MD5``. Not every S3 implementation verifies these
(the moto test server does not), and nothing verifies what comes back on a ``GET``, so ``get``
and a fully consumed ``open`` hash what they read and raise
:class:`~telerad.storage.errors.IntegrityError` when it differs from the stored digest. Objects
written by other tools without the metadata are served unverified, and ``head`` hashes them.

Failing fast
------------
The HTTP pool has a short connect timeout and a single retry, so an unreachable endpoint
raises :class:`~telerad.storage.errors.StorageUnavailable` within a few seconds instead of
minio's default of five retries with five-minute timeouts.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error
from urllib3.exceptions import HTTPError

from telerad.storage.errors import (
    IntegrityError,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
)
from telerad.storage.keys import check_key
from telerad.storage.objectstore.base import ObjectInfo, check_prefix, check_range

logger = logging.getLogger(__name__)

T = TypeVar("T")

SHA256_HEADER = "x-amz-meta-sha256"
_HASH_CHUNK = 1 << 20
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject"})
_BUCKET_EXISTS_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})


class S3ObjectStore:
    """Object store in one bucket of an S3-compatible endpoint.

    Parameters
    ----------
    endpoint
        ``host:port`` of the service, without scheme.
    access_key, secret_key
        Credentials.
    bucket
        Bucket holding the objects.
    secure
        Use HTTPS (certificates are verified against ``SSL_CERT_FILE`` or certifi's bundle).
    region
        Bucket region; ``None`` lets minio ask the server.
    create_bucket
        Create the bucket if it does not exist. This makes the constructor contact the
        endpoint, so it raises ``StorageUnavailable`` when the endpoint is down.
    connect_timeout, read_timeout
        Socket timeouts in seconds.
    retries
        How many times a failed connection or a 5xx answer is retried.
    """

    name = "s3"

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str | None = None,
        create_bucket: bool = True,
        connect_timeout: float = 3.0,
        read_timeout: float = 60.0,
        retries: int = 1,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self._http = _pool_manager(connect_timeout, read_timeout, retries)
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=self._http,
        )
        if create_bucket:
            self._call(self._ensure_bucket)

    def __repr__(self) -> str:
        return f"S3ObjectStore(endpoint={self.endpoint!r}, bucket={self.bucket!r})"

    def _ensure_bucket(self) -> None:
        if self._client.bucket_exists(self.bucket):
            return
        try:
            self._client.make_bucket(self.bucket)
            logger.info("created bucket %s on %s", self.bucket, self.endpoint)
        except S3Error as exc:  # another process created it meanwhile
            if exc.code not in _BUCKET_EXISTS_CODES:
                raise

    # -- writing -----------------------------------------------------------------------------

    def put(self, key: str, data: bytes, sha256: str | None = None) -> ObjectInfo:
        """Upload ``data`` under ``key`` with its SHA-256 as user metadata.

        S3 makes a single PUT (and a completed multipart upload) visible atomically.
        """
        check_key(key)
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and sha256 != digest:
            raise IntegrityError(f"sha256 mismatch for {key}: given {sha256}, data {digest}")
        self._call(
            self._client.put_object,
            self.bucket,
            key,
            io.BytesIO(data),
            len(data),
            metadata={SHA256_HEADER: digest},
            key=key,
        )
        logger.debug("stored %s (%d bytes) in %s", key, len(data), self.bucket)
        return ObjectInfo(key=key, size=len(data), sha256=digest)

    def delete(self, key: str) -> None:
        """Remove the object; S3 does not report missing keys, which suits the contract."""
        check_key(key)
        self._call(self._client.remove_object, self.bucket, key, key=key)

    # -- reading -----------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """Return the whole object, verified against its stored SHA-256 (module docstring)."""
        return b"".join(self.open(key))

    def open(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the object; a fully consumed stream is verified like :meth:`get`."""
        check_key(key)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        return self._stream(key, chunk_size)

    def _stream(self, key: str, chunk_size: int) -> Iterator[bytes]:
        response = self._call(self._client.get_object, self.bucket, key, key=key)
        try:
            expected = response.headers.get(SHA256_HEADER)
            hasher = hashlib.sha256()
            chunks = response.stream(chunk_size)
            # Reading can fail mid-stream (reset, timeout): translate each step.
            while chunk := self._call(next, chunks, b"", key=key):
                hasher.update(chunk)
                yield chunk
        finally:
            response.close()
            response.release_conn()
        if expected is not None:
            _verify(key, hasher.hexdigest(), expected)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Return up to ``length`` bytes from ``start``; empty past the end."""
        check_key(key)
        check_range(start, length)
        if length == 0:  # minio reads "length=0" as "to the end"; still report a missing key
            self.head(key)
            return b""
        try:
            response = self._call(
                self._client.get_object, self.bucket, key, offset=start, length=length, key=key
            )
        except _RangeNotSatisfiable:
            return b""
        try:
            return self._call(response.read, key=key)
        finally:
            response.close()
            response.release_conn()

    def head(self, key: str) -> ObjectInfo:
        """Size and SHA-256 from one ``HEAD``; objects without the metadata are hashed."""
        check_key(key)
        stat = self._call(self._client.stat_object, self.bucket, key, key=key)
        sha256 = stat.metadata.get(SHA256_HEADER) if stat.metadata else None
        if sha256 is None:
            sha256 = self._hash_object(key)
        return ObjectInfo(key=key, size=int(stat.size or 0), sha256=sha256)

    def _hash_object(self, key: str) -> str:
        logger.debug("%s has no sha256 metadata; hashing it", key)
        hasher = hashlib.sha256()
        for chunk in self._stream(key, _HASH_CHUNK):
            hasher.update(chunk)
        return hasher.hexdigest()

    def exists(self, key: str) -> bool:
        """True if ``key`` names a stored object."""
        check_key(key)
        try:
            self._call(self._client.stat_object, self.bucket, key, key=key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield the keys starting with ``prefix``; S3 lists in UTF-8 binary (lexical) order."""
        check_prefix(prefix)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[str]:
        objects = iter(
            self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
        )
        # list_objects pages lazily, so errors surface in next(): translate each step.
        while (obj := self._call(next, objects, None)) is not None:
            yield str(obj.object_name)

    def close(self) -> None:
        """Close pooled connections."""
        self._http.clear()

    # -- error translation -------------------------------------------------------------------

    def _call(self, func: Callable[..., T], *args: object, key: str = "", **kwargs: object) -> T:
        """Run one minio call, translating vendor errors into :mod:`telerad.storage.errors`."""
        try:
            return func(*args, **kwargs)
        except S3Error as exc:
            _raise_s3_error(key, exc)
        except (MinioException, HTTPError, OSError) as exc:
            logger.warning("S3 endpoint %s failed: %s", self.endpoint, exc)
            raise StorageUnavailable(f"S3 endpoint {self.endpoint} failed: {exc}") from exc


class _RangeNotSatisfiable(StorageError):
    """The requested range starts at or past the end of the object (HTTP 416)."""


def _raise_s3_error(key: str, exc: S3Error) -> NoReturn:
    if exc.code in _NOT_FOUND_CODES:
        raise ObjectNotFound(key) from exc
    if exc.code == "InvalidRange":
        raise _RangeNotSatisfiable(key) from exc
    raise StorageUnavailable(
        f"S3 refused the request for {key or 'the bucket'}: {exc.code}"
    ) from exc


def _pool_manager(connect_timeout: float, read_timeout: float, retries: int) -> urllib3.PoolManager:
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(
            total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
        ),
    )


def _verify(key: str, actual: str, expected: str) -> None:
    if actual != expected:
        logger.error("integrity failure on %s: stored sha256 %s, read %s", key, expected, actual)
        raise IntegrityError(f"{key}: bytes read do not match the stored sha256")
