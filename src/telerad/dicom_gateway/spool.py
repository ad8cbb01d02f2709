"""The spool: received instances as files, durable before anyone is told they are stored.

A file is written under a fresh name, fsynced, and its directory fsynced, before the outbox row
that names it is committed; a crash in between leaves a file no row names, which
:meth:`Spool.sweep` removes at the next start. Free space is checked before writing: below the
watermark the SCP answers 0xA700 (Refused: Out of Resources) and writes nothing, and a write that
still fails for lack of space removes its partial file.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from telerad.dicom_gateway.errors import SpoolFull, SpoolUnavailable

logger = logging.getLogger(__name__)


class Spool:
    """Files under ``root/spool/<day>/``, named by random UUIDs (never by patient data)."""

    def __init__(self, root: Path, *, min_free_bytes: int) -> None:
        self.root = root / "spool"
        self.min_free_bytes = min_free_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, data: bytes, suffix: str = ".dcm") -> str:
        """Write ``data`` durably; returns the path relative to the spool root.

        Raises
        ------
        SpoolFull
            Free space would fall below the watermark, or the disk filled up while writing.
        SpoolUnavailable
            Any other OS error (the partial file is removed).
        """
        self._check_space(len(data))
        day = time.strftime("%Y%m%d")
        directory = self.root / day
        directory.mkdir(exist_ok=True)
        relative = f"{day}/{uuid.uuid4().hex}{suffix}"
        path = self.root / relative
        try:
            _write_synced(path, data)
            _fsync_directory(directory)
        except OSError as exc:
            path.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull("the spool disk is full") from exc
            raise SpoolUnavailable(f"cannot write to the spool: {exc.strerror}") from exc
        return relative

    def read(self, relative: str) -> bytes:
        """The bytes of a spooled file."""
        return (self.root / relative).read_bytes()

    def path(self, relative: str) -> Path:
        """Absolute path of a spooled file."""
        return self.root / relative

    def remove(self, relative: str) -> None:
        """Delete a spooled file (after the centre confirmed it and retention allows)."""
        (self.root / relative).unlink(missing_ok=True)

    def sweep(self, referenced: Iterable[str]) -> int:
        """Remove files no outbox row names (left by a crash between write and commit)."""
        keep = set(referenced)
        removed = 0
        for path in self.root.glob("*/*"):
            relative = f"{path.parent.name}/{path.name}"
            if relative not in keep:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            logger.info("removed %d unreferenced spool files", removed)
        return removed

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


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
