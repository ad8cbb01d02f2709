"""The spool: received instances as files, durable before anyone is told they are stored.

The spool file is the durable record of a received instance; the outbox row is its index. A file
is written under a temporary ``.part`` name, fsynced, renamed to its final name and its
directory fsynced — only then is the outbox row committed and C-STORE success sent. A final-named
file is therefore always complete, and one that no row names (the process or the machine died
between the rename and the commit, or the commit was lost with the power: the outbox syncs
with ``synchronous=NORMAL``) is indexed again at the next start (:meth:`Spool.unreferenced`);
``.part`` files and unreferenced wire forms are removed.

Free space is checked before writing: below the watermark the SCP answers 0xA700 (Refused: Out
of Resources) and writes nothing, and a write that still fails for lack of space removes its
partial file.

The write and its flush run on a spool thread while the caller does other work
(:meth:`Spool.begin`): the C-STORE handler checks and hashes the instance (about 1 ms of CPU)
while the file is written and flushed (0.6 to 2 ms here), instead of one after the other.
Nothing is renamed until the caller has accepted the instance, and a refused one's ``.part``
file is removed before the SCP answers.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from telerad.dicom_gateway.errors import SpoolFull, SpoolUnavailable

logger = logging.getLogger(__name__)


PARTIAL = ".part"
#: Suffix of the forms prepared for the wire (the forwarder can always make them again).
WIRE_SUFFIX = ".wire.dcm"
#: Spool threads per process: one write in flight per association, rarely more than a few.
WRITER_THREADS = 8


class Spool:
    """Files under ``root/spool/<day>/``, named by random UUIDs (never by patient data)."""

    def __init__(self, root: Path, *, min_free_bytes: int) -> None:
        self.root = root / "spool"
        self.min_free_bytes = min_free_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._writers = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="spool")

    def write(self, data: bytes, suffix: str = ".dcm") -> str:
        """Write ``data`` durably; returns the path relative to the spool root.

        Raises
        ------
        SpoolFull
            Free space would fall below the watermark, or the disk filled up while writing.
        SpoolUnavailable
            Any other OS error (the partial file is removed).
        """
        return self.begin(data, suffix).finish()

    def begin(self, data: bytes, suffix: str = ".dcm") -> SpoolWrite:
        """Start writing ``data`` durably under a ``.part`` name on a spool thread and return;
        :meth:`SpoolWrite.finish` waits for it and gives it its final name,
        :meth:`SpoolWrite.discard` removes it. ``data`` must not change until then.

        The file is opened ``O_DSYNC``, so one ``write`` both copies the data and flushes it
        with the file's size (the data integrity of ``fdatasync``): one system call, during
        which the spool thread does not need the GIL the caller's Python code holds. (Separate
        write and fsync calls on the spool thread each waited for the GIL to come back.)

        Raises
        ------
        SpoolFull
            Free space would fall below the watermark (nothing is written).
        SpoolUnavailable
            The spool cannot be inspected, or the file cannot be created.
        """
        self._check_space(len(data))
        day = time.strftime("%Y%m%d")
        directory = self.root / day
        relative = f"{day}/{uuid.uuid4().hex}{suffix}"
        path = self.root / relative
        partial = path.with_name(path.name + PARTIAL)
        try:
            directory.mkdir(exist_ok=True)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DSYNC, 0o600)
        except OSError as exc:
            raise _spool_error(exc) from exc
        return SpoolWrite(relative, path, partial, self._writers.submit(_write_durably, fd, data))

    def read(self, relative: str) -> bytes:
        """The bytes of a spooled file."""
        return (self.root / relative).read_bytes()

    def path(self, relative: str) -> Path:
        """Absolute path of a spooled file."""
        return self.root / relative

    def remove(self, relative: str) -> None:
        """Delete a spooled file (after the centre confirmed it and retention allows)."""
        (self.root / relative).unlink(missing_ok=True)

    def unreferenced(self, referenced: Iterable[str]) -> list[str]:
        """Tidy up after a crash: remove ``.part`` files and wire forms no row names, and
        return the complete received files no row names (to be indexed again)."""
        keep = set(referenced)
        orphans: list[str] = []
        removed = 0
        for path in sorted(self.root.glob("*/*")):
            relative = f"{path.parent.name}/{path.name}"
            if relative in keep:
                continue
            if path.name.endswith(PARTIAL) or path.name.endswith(WIRE_SUFFIX):
                path.unlink(missing_ok=True)
                removed += 1
            else:
                orphans.append(relative)
        if removed:
            logger.info("removed %d partial or unreferenced spool files", removed)
        return orphans

    def free_bytes(self) -> int:
        """Free space on the spool's file system."""
        return shutil.disk_usage(self.root).free

    def _check_space(self, size: int) -> None:
        try:
            free = self.free_bytes()
        except OSError as exc:
            raise SpoolUnavailable(f"cannot stat the spool: {exc.strerror}") from exc
        if free - size < self.min_free_bytes:
            raise SpoolFull(
                f"spool free space {free} bytes is below the watermark {self.min_free_bytes}"
            )


class SpoolWrite:
    """One file of :meth:`Spool.begin`, being written and flushed by a spool thread."""

    def __init__(self, relative: str, path: Path, partial: Path, written: Future[None]) -> None:
        self.relative = relative
        self._path = path
        self._partial = partial
        self._written = written
        self._settled = False

    def finish(self) -> str:
        """Wait for the write and its flush, rename to the final name and fsync the directory;
        the relative path. Raises :class:`SpoolFull` or :class:`SpoolUnavailable` (nothing is
        left)."""
        if self._settled:
            raise RuntimeError("this spool write was already finished or discarded")
        self._settled = True
        try:
            self._written.result()
            os.rename(self._partial, self._path)
            _fsync_directory(self._path.parent)
        except OSError as exc:
            self._partial.unlink(missing_ok=True)
            self._path.unlink(missing_ok=True)
            raise _spool_error(exc) from exc
        return self.relative

    def discard(self) -> None:
        """Wait for the writer (none is left behind) and remove the partial file; a no-op once
        finished or discarded."""
        if self._settled:
            return
        self._settled = True
        try:
            self._written.result()
        except OSError:
            pass  # it failed: its partial file goes below all the same
        finally:
            self._partial.unlink(missing_ok=True)


def _spool_error(exc: OSError) -> SpoolFull | SpoolUnavailable:
    """The spool's error for an OS error: full disk or quota, or anything else."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpoolFull("the spool disk is full")
    return SpoolUnavailable(f"cannot write to the spool: {exc.strerror}")


def _write_durably(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (opened ``O_DSYNC``: on disk when this returns), then
    close it."""
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
