"""Object store on a local (or mounted) filesystem.

Layout
------
The object ``a/b/c.dcm`` is the plain file ``<root>/a/b/c.dcm``, so an operator can read it with
ordinary tools and copy the tree to a bucket as is. Next to it live two kinds of hidden files
whose names start with ``.``; :func:`telerad.storage.keys.check_key` never accepts a segment
starting with ``.``, so no key can name them and :meth:`FilesystemObjectStore.list` skips them:

* ``.c.dcm.<random>.tmp`` -- a write in progress (or left behind by a crash).
* ``.c.dcm.sha256`` -- the *sidecar*: ``"<sha256> <size> <inode> <mtime_ns>"``.

Atomic put
----------
The data goes to a temporary file in the target directory, is flushed and ``fsync``-ed, then
``os.replace``-d onto the final name and the directory is ``fsync``-ed. A reader therefore sees
the old object or the new one, never a partial one.

Why a sidecar that names an inode
---------------------------------
``head`` must return the SHA-256 without re-reading a multi-hundred-megabyte multi-frame
object, so the digest computed during ``put`` is kept in the sidecar. The sidecar is written
(atomically, like the data) *before* the data rename, and it records the inode, size and
modification time of the temporary data file, which ``os.replace`` preserves. A sidecar is
trusted only when those three match the current data file; otherwise (a crash between the two
renames, a concurrent overwrite, a file edited by hand) ``head`` falls back to hashing the file.
So the sidecar is an optimisation that can never make ``head`` return a wrong digest for a file
written by this class.

With a trusted sidecar, ``get`` and a fully consumed ``open`` also verify the bytes read and
raise :class:`~telerad.storage.errors.IntegrityError` on mismatch (silent corruption on disk
keeps inode, size and mtime).

Limitations
-----------
A key cannot be both an object and the directory of other objects (``a`` and ``a/b``): a file
and a directory cannot share a name. Such a ``put`` raises
:class:`~telerad.storage.errors.InvalidKey`. Keys built by :mod:`telerad.storage.keys` never do
this (objects carry an extension, directories do not). Empty directories are not removed on
``delete``: removing them would race with a concurrent ``put`` into the same directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple, NoReturn

from telerad.storage.errors import (
    IntegrityError,
    InvalidKey,
    ObjectNotFound,
    StorageUnavailable,
)
from telerad.storage.keys import check_key
from telerad.storage.objectstore.base import ObjectInfo, check_prefix, check_range

logger = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20
#: OS errors that mean "this key does not name a file": absent, or a directory in the way.
_NOT_FOUND_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR})


class _Sidecar(NamedTuple):
    """What the sidecar records about the data file it was written for."""

    sha256: str
    size: int
    inode: int
    mtime_ns: int

    def describes(self, st: os.stat_result) -> bool:
        """True if this sidecar was written for the file whose ``fstat`` is ``st``."""
        return (self.size, self.inode, self.mtime_ns) == (st.st_size, st.st_ino, st.st_mtime_ns)

    def encode(self) -> bytes:
        return f"{self.sha256} {self.size} {self.inode} {self.mtime_ns}\n".encode("ascii")

    @classmethod
    def decode(cls, raw: bytes) -> _Sidecar | None:
        try:
            sha, size, inode, mtime_ns = raw.decode("ascii").split()
            return cls(sha, int(size), int(inode), int(mtime_ns))
        except ValueError:
            return None


class FilesystemObjectStore:
    """Object store rooted at a directory; see the module docstring for the on-disk layout.

    Parameters
    ----------
    root
        Directory holding the objects; created if missing.
    """

    name = "filesystem"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create object store root {self.root}") from exc

    def __repr__(self) -> str:
        return f"FilesystemObjectStore({str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    @staticmethod
    def _sidecar_path(path: Path) -> Path:
        return path.with_name(f".{path.name}.sha256")

    # -- writing -----------------------------------------------------------------------------

    def put(self, key: str, data: bytes, sha256: str | None = None) -> ObjectInfo:
        """Store ``data`` atomically under ``key`` (see the module docstring)."""
        path = self._path(key)
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and sha256 != digest:
            raise IntegrityError(f"sha256 mismatch for {key}: given {sha256}, data {digest}")
        try:
            self._makedirs(key, path.parent)
            self._write_atomically(path, data, digest)
        except OSError as exc:
            _raise_write_error(key, exc)
        logger.debug("stored %s (%d bytes)", key, len(data))
        return ObjectInfo(key=key, size=len(data), sha256=digest)

    def _makedirs(self, key: str, directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise InvalidKey(f"{key}: a parent of this key is an object") from exc

    def _write_atomically(self, path: Path, data: bytes, digest: str) -> None:
        # Sidecar first: if we fail between the two renames, the sidecar names an inode that
        # is not the data file's, so it is ignored rather than trusted.
        tmp = _write_temp(path, data)
        try:
            st = tmp.stat()
            sidecar = _Sidecar(digest, st.st_size, st.st_ino, st.st_mtime_ns)
            _install(_write_temp(path, sidecar.encode()), self._sidecar_path(path))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _install(tmp, path)

    def delete(self, key: str) -> None:
        """Remove the object and its sidecar; a missing key is not an error."""
        path = self._path(key)
        for victim in (path, self._sidecar_path(path)):
            try:
                victim.unlink()
            except OSError as exc:
                if exc.errno not in _NOT_FOUND_ERRNOS:
                    raise StorageUnavailable(f"cannot delete {key}: {exc.strerror}") from exc

    # -- reading -----------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """Return the whole object, verified against its sidecar digest when that is trusted."""
        with self._open_file(key) as fh:
            data = _read(key, fh)
            expected = self._trusted_sha256(key, fh)
        if expected is not None:
            _verify(key, hashlib.sha256(data).hexdigest(), expected)
        return data

    def open(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the object; a fully consumed stream is verified like :meth:`get`."""
        check_key(key)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        return self._stream(key, chunk_size)

    def _stream(self, key: str, chunk_size: int) -> Iterator[bytes]:
        with self._open_file(key) as fh:
            expected = self._trusted_sha256(key, fh)
            hasher = hashlib.sha256()
            while chunk := _read(key, fh, chunk_size):
                hasher.update(chunk)
                yield chunk
        if expected is not None:
            _verify(key, hasher.hexdigest(), expected)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Return up to ``length`` bytes from ``start``; empty past the end."""
        check_range(start, length)
        with self._open_file(key) as fh:
            fh.seek(start)
            return _read(key, fh, length)

    def head(self, key: str) -> ObjectInfo:
        """Size and SHA-256, from the sidecar when trusted, else by hashing the file."""
        with self._open_file(key) as fh:
            size = os.fstat(fh.fileno()).st_size
            sha256 = self._trusted_sha256(key, fh) or _hash_file(key, fh)
        return ObjectInfo(key=key, size=size, sha256=sha256)

    def exists(self, key: str) -> bool:
        """True if ``key`` names a stored object."""
        path = self._path(key)
        try:
            return path.is_file()
        except OSError as exc:
            raise StorageUnavailable(f"cannot stat {key}: {exc.strerror}") from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield the keys starting with ``prefix`` in lexical order, never hidden files."""
        directory, _, partial = check_prefix(prefix).rpartition("/")
        start = self.root.joinpath(*directory.split("/")) if directory else self.root
        key_prefix = f"{directory}/" if directory else ""
        return self._walk(start, key_prefix, partial)

    def _walk(self, directory: Path, key_prefix: str, partial: str = "") -> Iterator[str]:
        # Sorting directories as "name/" makes a depth-first walk yield keys in the same order
        # as sorting the full keys ("a-c" < "a/b" because "-" < "/").
        for sort_name, entry in _sorted_entries(directory, partial):
            if sort_name.endswith("/"):
                yield from self._walk(Path(entry.path), f"{key_prefix}{sort_name}")
            else:
                yield f"{key_prefix}{sort_name}"

    def close(self) -> None:
        """Nothing to release: files are opened per call."""

    # -- helpers -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _open_file(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        try:
            fh = path.open("rb")
        except OSError as exc:
            _raise_read_error(key, exc)
        with fh:
            yield fh

    def _trusted_sha256(self, key: str, fh: BinaryIO) -> str | None:
        """The sidecar digest if the sidecar describes the open file ``fh``, else ``None``."""
        try:
            raw = self._sidecar_path(self._path(key)).read_bytes()
        except OSError:
            return None
        sidecar = _Sidecar.decode(raw)
        if sidecar is None or not sidecar.describes(os.fstat(fh.fileno())):
            logger.debug("sidecar of %s is stale or unreadable; hashing the data", key)
            return None
        return sidecar.sha256


def _write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new hidden temporary file next to ``path``, fsync-ed."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _install(tmp: Path, dst: Path) -> None:
    """Rename ``tmp`` onto ``dst`` and fsync the directory; ``tmp`` never outlives a failure."""
    try:
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(dst.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _sorted_entries(directory: Path, partial: str) -> list[tuple[str, os.DirEntry[str]]]:
    """Visible entries of ``directory`` whose name starts with ``partial``, in key order."""
    try:
        with os.scandir(directory) as it:
            entries = [e for e in it if e.name.startswith(partial) and not e.name.startswith(".")]
    except OSError as exc:
        if exc.errno in _NOT_FOUND_ERRNOS:
            return []
        raise StorageUnavailable(f"cannot list {directory}: {exc.strerror}") from exc
    named = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in entries]
    return sorted(named, key=lambda pair: pair[0])


def _read(key: str, fh: BinaryIO, size: int = -1) -> bytes:
    try:
        return fh.read(size)
    except OSError as exc:
        raise StorageUnavailable(f"cannot read {key}: {exc.strerror}") from exc


def _hash_file(key: str, fh: BinaryIO) -> str:
    hasher = hashlib.sha256()
    while chunk := _read(key, fh, _HASH_CHUNK):
        hasher.update(chunk)
    return hasher.hexdigest()


def _verify(key: str, actual: str, expected: str) -> None:
    if actual != expected:
        logger.error("integrity failure on %s: stored sha256 %s, read %s", key, expected, actual)
        raise IntegrityError(f"{key}: bytes read do not match the stored sha256")


def _raise_read_error(key: str, exc: OSError) -> NoReturn:
    if exc.errno in _NOT_FOUND_ERRNOS:
        raise ObjectNotFound(key) from exc
    raise StorageUnavailable(f"cannot read {key}: {exc.strerror}") from exc


def _raise_write_error(key: str, exc: OSError) -> NoReturn:
    if exc.errno == errno.EISDIR:
        raise InvalidKey(f"{key}: the key is a prefix of other objects") from exc
    logger.error("cannot write %s: %s", key, exc)
    raise StorageUnavailable(f"cannot write {key}: {exc.strerror or exc}") from exc
