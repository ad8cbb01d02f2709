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


PARTIAL = ".part"
#: Suffix of the forms prepared for the wire (the forwarder can always make them again).
WIRE_SUFFIX = ".wire.dcm"


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
        partial = path.with_name(path.name + PARTIAL)
        try:
            _write_synced(partial, data)
            os.rename(partial, path)
            _fsync_directory(directory)
        except OSError as exc:
            partial.unlink(missing_ok=True)
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
