"""The object-store contract, run against every back end, plus back-end specific behaviour.

The S3 back end talks HTTP to a real moto server (``tests/s3server.py``); the filesystem back
end writes to ``tmp_path``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from minio import Minio

from telerad.storage.errors import (
    IntegrityError,
    InvalidKey,
    ObjectNotFound,
    StorageUnavailable,
)
from telerad.storage.objectstore import (
    BACKENDS,
    FilesystemObjectStore,
    ObjectInfo,
    ObjectStore,
    S3ObjectStore,
    open_object_store,
)
from tests.s3server import ACCESS_KEY, SECRET_KEY
from tests.storage.conftest import unique_bucket

MIB = 1 << 20
KEY = "studies/ab/0123abcd/instance.dcm"
#: 1024 bytes whose every offset is distinguishable modulo 256 and by block.
RANGE_DATA = bytes(range(256)) * 2 + bytes(reversed(range(256))) * 2

INVALID_KEYS = ["../x", "a//b", "A/b", ""]
INVALID_PREFIXES = ["../x", "a//b", "A/b", "/a", "a/../"]

#: Each method called with an offending key; ``open`` must refuse before any iteration.
KEY_METHODS: dict[str, Callable[[ObjectStore, str], object]] = {
    "put": lambda s, k: s.put(k, b"x"),
    "get": lambda s, k: s.get(k),
    "open": lambda s, k: s.open(k),
    "get_range": lambda s, k: s.get_range(k, 0, 1),
    "head": lambda s, k: s.head(k),
    "exists": lambda s, k: s.exists(k),
    "delete": lambda s, k: s.delete(k),
}
#: The reading methods, fully consumed, for missing-key behaviour.
READ_METHODS: dict[str, Callable[[ObjectStore, str], object]] = {
    "get": lambda s, k: s.get(k),
    "open": lambda s, k: b"".join(s.open(k)),
    "get_range": lambda s, k: s.get_range(k, 0, 10),
    "get_range-length-0": lambda s, k: s.get_range(k, 0, 0),
    "head": lambda s, k: s.head(k),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TestObjectStoreContract:
    """What every :class:`ObjectStore` back end guarantees."""

    @pytest.mark.parametrize("size", [0, 1, 5 * MIB], ids=["empty", "1-byte", "5-MiB"])
    def test_put_then_get_round_trips(self, store: ObjectStore, size: int) -> None:
        data = os.urandom(size)
        assert store.put(KEY, data) == ObjectInfo(key=KEY, size=size, sha256=sha256(data))
        assert store.get(KEY) == data

    def test_put_accepts_the_correct_sha256(self, store: ObjectStore) -> None:
        data = b"pixel data"
        assert store.put(KEY, data, sha256=sha256(data)).sha256 == sha256(data)
        assert store.get(KEY) == data

    def test_put_with_a_wrong_sha256_stores_nothing(self, store: ObjectStore) -> None:
        with pytest.raises(IntegrityError):
            store.put(KEY, b"pixel data", sha256=sha256(b"other data"))
        assert not store.exists(KEY)
        assert list(store.list()) == []

    def test_put_with_a_wrong_sha256_keeps_the_previous_object(self, store: ObjectStore) -> None:
        store.put(KEY, b"first")
        with pytest.raises(IntegrityError):
            store.put(KEY, b"second", sha256=sha256(b"third"))
        assert store.get(KEY) == b"first"

    def test_put_overwrites(self, store: ObjectStore) -> None:
        store.put(KEY, b"first version, longer")
        store.put(KEY, b"second")
        assert store.get(KEY) == b"second"
        assert store.head(KEY) == ObjectInfo(key=KEY, size=6, sha256=sha256(b"second"))
        assert list(store.list()) == [KEY]

    def test_head_reports_size_and_sha256(self, store: ObjectStore) -> None:
        data = os.urandom(4099)
        store.put(KEY, data)
        assert store.head(KEY) == ObjectInfo(key=KEY, size=4099, sha256=sha256(data))

    def test_head_of_an_empty_object(self, store: ObjectStore) -> None:
        store.put(KEY, b"")
        assert store.head(KEY) == ObjectInfo(key=KEY, size=0, sha256=sha256(b""))

    def test_exists(self, store: ObjectStore) -> None:
        assert not store.exists(KEY)
        store.put(KEY, b"x")
        assert store.exists(KEY)
        assert not store.exists("studies/ab/0123abcd")  # a prefix is not an object

    @pytest.mark.parametrize(
        ("start", "length", "expected"),
        [
            (0, 10, RANGE_DATA[:10]),
            (300, 400, RANGE_DATA[300:700]),
            (1000, 24, RANGE_DATA[1000:]),
            (1000, 100, RANGE_DATA[1000:]),  # runs past the end: truncated
            (1023, 1, RANGE_DATA[1023:]),
            (1024, 10, b""),  # starts exactly at the end
            (5000, 10, b""),  # starts past the end
            (10, 0, b""),
            (0, 1024, RANGE_DATA),
        ],
        ids=["start", "middle", "end", "past-end", "last-byte", "at-end", "beyond", "len-0", "all"],
    )
    def test_get_range(self, store: ObjectStore, start: int, length: int, expected: bytes) -> None:
        store.put(KEY, RANGE_DATA)
        assert store.get_range(KEY, start, length) == expected

    def test_get_range_of_an_empty_object_is_empty(self, store: ObjectStore) -> None:
        store.put(KEY, b"")
        assert store.get_range(KEY, 0, 10) == b""

    @pytest.mark.parametrize(("start", "length"), [(-1, 10), (0, -1)])
    def test_get_range_rejects_negative_values(
        self, store: ObjectStore, start: int, length: int
    ) -> None:
        store.put(KEY, RANGE_DATA)
        with pytest.raises(ValueError, match="invalid range"):
            store.get_range(KEY, start, length)

    def test_open_streams_the_same_bytes_as_get(self, store: ObjectStore) -> None:
        data = os.urandom(2 * MIB + 123)
        store.put(KEY, data)
        chunks = list(store.open(KEY, chunk_size=256 * 1024))
        assert len(chunks) > 1
        assert all(0 < len(c) <= 256 * 1024 for c in chunks)
        assert b"".join(chunks) == data == store.get(KEY)

    def test_open_of_an_empty_object_yields_nothing(self, store: ObjectStore) -> None:
        store.put(KEY, b"")
        assert b"".join(store.open(KEY)) == b""

    @pytest.mark.parametrize("method", READ_METHODS.values(), ids=READ_METHODS.keys())
    def test_reading_a_missing_key_raises_object_not_found(
        self, store: ObjectStore, method: Callable[[ObjectStore, str], object]
    ) -> None:
        store.put("studies/ab/other.dcm", b"a neighbour must not be mistaken for the key")
        with pytest.raises(ObjectNotFound):
            method(store, KEY)

    def test_delete_removes_and_is_idempotent(self, store: ObjectStore) -> None:
        store.put(KEY, b"x")
        store.put("studies/ab/keep.dcm", b"y")
        store.delete(KEY)
        assert not store.exists(KEY)
        with pytest.raises(ObjectNotFound):
            store.get(KEY)
        store.delete(KEY)  # second delete: no error
        store.delete("never/existed")
        assert list(store.list()) == ["studies/ab/keep.dcm"]

    def test_list_yields_keys_under_a_prefix_in_lexical_order(self, store: ObjectStore) -> None:
        # "-" < "/" < "c": a per-directory walk would put "a/b/c" before "a/b-c".
        keys = ["a/b/c", "a/b-c", "a/bc", "a/b/d.dcm", "ab/y", "b/x", "a/b/c1/z"]
        for key in random.sample(keys, len(keys)):
            store.put(key, key.encode())
        assert list(store.list()) == sorted(keys)
        assert list(store.list("a/")) == ["a/b-c", "a/b/c", "a/b/c1/z", "a/b/d.dcm", "a/bc"]
        assert list(store.list("a/b/")) == ["a/b/c", "a/b/c1/z", "a/b/d.dcm"]
        assert list(store.list("a/b")) == ["a/b-c", "a/b/c", "a/b/c1/z", "a/b/d.dcm", "a/bc"]
        assert list(store.list("a")) == sorted(k for k in keys if k.startswith("a"))
        assert list(store.list("a/b/c")) == ["a/b/c", "a/b/c1/z"]

    @pytest.mark.parametrize("prefix", ["zzz/", "zzz", "a/b/c/", "a/q"])
    def test_list_of_an_unused_prefix_is_empty(self, store: ObjectStore, prefix: str) -> None:
        store.put("a/b/c", b"x")
        assert list(store.list(prefix)) == []

    @pytest.mark.parametrize("key", INVALID_KEYS)
    @pytest.mark.parametrize("method", KEY_METHODS.values(), ids=KEY_METHODS.keys())
    def test_invalid_keys_are_refused(
        self, store: ObjectStore, method: Callable[[ObjectStore, str], object], key: str
    ) -> None:
        with pytest.raises(InvalidKey):
            method(store, key)
        assert list(store.list()) == []

    @pytest.mark.parametrize("prefix", INVALID_PREFIXES)
    def test_invalid_list_prefixes_are_refused(self, store: ObjectStore, prefix: str) -> None:
        with pytest.raises(InvalidKey):
            store.list(prefix)

    def test_concurrent_puts_of_different_keys(self, store: ObjectStore) -> None:
        blobs = {f"studies/ab/series/{i:03d}.dcm": os.urandom(1000 + i) for i in range(32)}
        with ThreadPoolExecutor(max_workers=8) as pool:
            infos = list(pool.map(lambda item: store.put(*item), blobs.items()))
        assert [i.key for i in infos] == list(blobs)
        assert list(store.list("studies/")) == sorted(blobs)
        for key, data in blobs.items():
            assert store.get(key) == data
            assert store.head(key).sha256 == sha256(data)

    def test_concurrent_overwrites_leave_one_whole_version(self, store: ObjectStore) -> None:
        versions = [bytes([i]) * (10_000 + i) for i in range(16)]

        def put(data: bytes) -> None:
            # moto's server (not S3) now and then answers a PUT racing another PUT of the same
            # key with 500: it closes the replaced object's buffer while answering the other
            # request ("I/O operation on closed file"). Our store then raises
            # StorageUnavailable, as it must for a 5xx; the client here simply tries again.
            # What is under test is the state the overwrites leave.
            for attempt in range(5):
                try:
                    store.put(KEY, data)
                    return
                except StorageUnavailable:
                    if not isinstance(store, S3ObjectStore) or attempt == 4:
                        raise
                    time.sleep(0.05 * (attempt + 1))

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(put, versions))
        data = store.get(KEY)
        assert data in versions
        assert store.head(KEY) == ObjectInfo(key=KEY, size=len(data), sha256=sha256(data))


class TestFilesystemObjectStore:
    """Crash safety and on-disk layout of :class:`FilesystemObjectStore`."""

    def files_under(self, store: FilesystemObjectStore) -> list[str]:
        return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())

    def test_put_leaves_only_the_object_and_its_sidecar(
        self, fs_store: FilesystemObjectStore
    ) -> None:
        fs_store.put(KEY, b"x")
        fs_store.put(KEY, b"overwritten")
        assert self.files_under(fs_store) == [
            "studies/ab/0123abcd/.instance.dcm.sha256",
            "studies/ab/0123abcd/instance.dcm",
        ]
        assert (fs_store.root / KEY).read_bytes() == b"overwritten"

    def test_hidden_files_are_never_listed(self, fs_store: FilesystemObjectStore) -> None:
        fs_store.put(KEY, b"x")
        # What a crash mid-put leaves behind.
        (fs_store.root / "studies/ab/0123abcd/.instance.dcm.k2j3h4.tmp").write_bytes(b"partial")
        assert list(fs_store.list()) == [KEY]

    def test_a_reader_never_sees_a_partial_object(
        self, fs_store: FilesystemObjectStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Look at the store from inside the put, at every fsync (data written, not yet renamed).
        # os.fsync is wrapped, not replaced: the real fsync still runs.
        fs_store.put(KEY, b"old")
        seen: list[tuple[bytes, ObjectInfo]] = []
        real_fsync = os.fsync

        def observing_fsync(fd: int) -> None:
            seen.append((fs_store.get(KEY), fs_store.head(KEY)))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", observing_fsync)
        fs_store.put(KEY, b"new content")
        monkeypatch.undo()
        old_info = ObjectInfo(key=KEY, size=3, sha256=sha256(b"old"))
        new_info = ObjectInfo(key=KEY, size=11, sha256=sha256(b"new content"))
        assert set(seen) <= {(b"old", old_info), (b"new content", new_info)}
        assert seen[0] == (b"old", old_info)
        assert fs_store.head(KEY) == new_info

    @pytest.mark.parametrize("failing_call", [1, 2], ids=["sidecar-rename", "data-rename"])
    def test_a_failed_put_leaves_no_object_and_no_temp_file(
        self, fs_store: FilesystemObjectStore, monkeypatch: pytest.MonkeyPatch, failing_call: int
    ) -> None:
        # A full disk cannot be produced here, so os.replace is made to fail as it would.
        monkeypatch.setattr(os, "replace", failing_on_call(os.replace, failing_call))
        with pytest.raises(StorageUnavailable):
            fs_store.put(KEY, b"never stored")
        monkeypatch.undo()
        assert not fs_store.exists(KEY)
        assert list(fs_store.list()) == []
        assert not [f for f in self.files_under(fs_store) if f.endswith(".tmp")]

    @pytest.mark.parametrize("failing_call", [1, 2], ids=["sidecar-rename", "data-rename"])
    def test_a_failed_overwrite_keeps_the_old_object_and_its_digest(
        self, fs_store: FilesystemObjectStore, monkeypatch: pytest.MonkeyPatch, failing_call: int
    ) -> None:
        # After a failed data rename the new sidecar is in place but describes another inode:
        # it must be ignored, not trusted.
        fs_store.put(KEY, b"old")
        monkeypatch.setattr(os, "replace", failing_on_call(os.replace, failing_call))
        with pytest.raises(StorageUnavailable):
            fs_store.put(KEY, b"new")
        monkeypatch.undo()
        assert fs_store.get(KEY) == b"old"
        assert fs_store.head(KEY) == ObjectInfo(key=KEY, size=3, sha256=sha256(b"old"))
        assert not [f for f in self.files_under(fs_store) if f.endswith(".tmp")]

    def test_head_without_a_sidecar_hashes_the_file(self, fs_store: FilesystemObjectStore) -> None:
        data = os.urandom(3 * MIB)
        fs_store.put(KEY, data)
        (fs_store.root / "studies/ab/0123abcd/.instance.dcm.sha256").unlink()
        assert fs_store.head(KEY) == ObjectInfo(key=KEY, size=len(data), sha256=sha256(data))
        assert fs_store.get(KEY) == data

    def test_silent_corruption_is_detected_on_read(self, fs_store: FilesystemObjectStore) -> None:
        fs_store.put(KEY, b"original bytes")
        path = fs_store.root / KEY
        st = path.stat()
        with path.open("r+b") as fh:  # flip bytes in place: same inode, size and mtime
            fh.write(b"ORIGINAL")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        with pytest.raises(IntegrityError):
            fs_store.get(KEY)
        with pytest.raises(IntegrityError):
            b"".join(fs_store.open(KEY))
        assert fs_store.get_range(KEY, 0, 8) == b"ORIGINAL"  # ranges cannot be verified

    @pytest.mark.parametrize(("first", "second"), [("a", "a/b.dcm"), ("a/b.dcm", "a")])
    def test_a_key_cannot_be_both_object_and_prefix(
        self, fs_store: FilesystemObjectStore, first: str, second: str
    ) -> None:
        # Filesystem limitation (a name is a file or a directory); keys.py never builds this.
        fs_store.put(first, b"x")
        with pytest.raises(InvalidKey):
            fs_store.put(second, b"y")
        assert list(fs_store.list()) == [first]

    def test_reading_a_prefix_as_a_key_is_not_found(self, fs_store: FilesystemObjectStore) -> None:
        fs_store.put(KEY, b"x")
        with pytest.raises(ObjectNotFound):
            fs_store.get("studies/ab")
        with pytest.raises(ObjectNotFound):
            fs_store.get(KEY + "/below")

    def test_a_full_disk_is_storage_unavailable(
        self, fs_store: FilesystemObjectStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # ENOSPC cannot be produced on demand here; fail the temp-file creation the way it would.
        def no_space(*args: object, **kwargs: object) -> tuple[int, str]:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr("tempfile.mkstemp", no_space)
        with pytest.raises(StorageUnavailable, match="No space left"):
            fs_store.put(KEY, b"x")


class TestS3ObjectStore:
    """Behaviour specific to :class:`S3ObjectStore` against a real HTTP endpoint."""

    def raw_client(self, endpoint: str) -> Minio:
        return Minio(endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False)

    def test_the_bucket_is_created_and_reopening_it_is_fine(self, s3_endpoint: str) -> None:
        bucket = unique_bucket()
        S3ObjectStore(s3_endpoint, ACCESS_KEY, SECRET_KEY, bucket).close()
        assert self.raw_client(s3_endpoint).bucket_exists(bucket)
        again = S3ObjectStore(s3_endpoint, ACCESS_KEY, SECRET_KEY, bucket)
        again.put(KEY, b"x")
        assert again.get(KEY) == b"x"
        again.close()

    def test_the_sha256_is_stored_as_user_metadata(
        self, s3_store: S3ObjectStore, s3_endpoint: str
    ) -> None:
        s3_store.put(KEY, b"pixels")
        stat = self.raw_client(s3_endpoint).stat_object(s3_store.bucket, KEY)
        assert stat.metadata is not None
        assert stat.metadata["x-amz-meta-sha256"] == sha256(b"pixels")

    def test_overwritten_bytes_with_a_stale_sha256_fail_integrity(
        self, s3_store: S3ObjectStore, s3_endpoint: str
    ) -> None:
        s3_store.put(KEY, b"what the scanner sent")
        tampered = b"something else entirely"
        self.raw_client(s3_endpoint).put_object(
            s3_store.bucket,
            KEY,
            io.BytesIO(tampered),
            len(tampered),
            metadata={"x-amz-meta-sha256": sha256(b"what the scanner sent")},
        )
        with pytest.raises(IntegrityError):
            s3_store.get(KEY)
        with pytest.raises(IntegrityError):
            b"".join(s3_store.open(KEY))

    def test_objects_without_sha256_metadata_are_served_and_hashed(
        self, s3_store: S3ObjectStore, s3_endpoint: str
    ) -> None:
        data = b"uploaded by another tool"
        self.raw_client(s3_endpoint).put_object(s3_store.bucket, KEY, io.BytesIO(data), len(data))
        assert s3_store.get(KEY) == data
        assert s3_store.head(KEY) == ObjectInfo(key=KEY, size=len(data), sha256=sha256(data))

    def test_a_missing_bucket_is_storage_unavailable(self, s3_endpoint: str) -> None:
        store = S3ObjectStore(
            s3_endpoint, ACCESS_KEY, SECRET_KEY, unique_bucket(), create_bucket=False
        )
        with pytest.raises(StorageUnavailable):
            store.get(KEY)
        with pytest.raises(StorageUnavailable):
            store.put(KEY, b"x")
        store.close()

    def test_an_unreachable_endpoint_fails_fast(self) -> None:
        endpoint = f"127.0.0.1:{closed_port()}"
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            S3ObjectStore(endpoint, ACCESS_KEY, SECRET_KEY, "telerad")
        store = S3ObjectStore(endpoint, ACCESS_KEY, SECRET_KEY, "telerad", create_bucket=False)
        with pytest.raises(StorageUnavailable):
            store.get(KEY)
        with pytest.raises(StorageUnavailable):
            store.put(KEY, b"x")
        # Not a speed target: minio's defaults would retry for minutes; ours must give up.
        assert time.monotonic() - started < 15


class TestRegistry:
    def test_backends_by_name(self) -> None:
        assert {"filesystem": FilesystemObjectStore, "s3": S3ObjectStore} == BACKENDS

    def test_open_object_store_builds_the_named_backend(self, tmp_path: Path) -> None:
        store = open_object_store("filesystem", root=tmp_path)
        assert isinstance(store, FilesystemObjectStore)
        assert isinstance(store, ObjectStore)

    def test_an_unknown_backend_is_a_value_error(self) -> None:
        with pytest.raises(ValueError, match="unknown object store back end 'ftp'"):
            open_object_store("ftp")


def failing_on_call(real: Callable[..., object], failing_call: int) -> Callable[..., object]:
    """Wrap ``real`` so that its ``failing_call``-th call raises ENOSPC instead of running."""
    calls = 0
    lock = threading.Lock()

    def wrapper(*args: object, **kwargs: object) -> object:
        nonlocal calls
        with lock:
            calls += 1
            fail = calls == failing_call
        if fail:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    return wrapper


def closed_port() -> int:
    """A localhost TCP port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
