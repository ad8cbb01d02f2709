"""The spool is the durable record: after a crash, complete files are indexed again, partial
ones and spare wire forms removed; a full disk leaves nothing behind."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from telerad.demo import ct_study_bytes
from telerad.dicom_gateway import Gateway, SpoolFull, SpoolUnavailable
from telerad.dicom_gateway.spool import PARTIAL, WIRE_SUFFIX, Spool
from tests.dicom_gateway.conftest import free_port, gateway_settings


def test_write_is_complete_under_its_final_name(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=0)
    relative = spool.write(b"x" * 1000)
    assert spool.read(relative) == b"x" * 1000
    assert not list(spool.root.glob(f"*/*{PARTIAL}"))


def test_watermark_refuses_before_writing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=spool_free(tmp_path) + 10**12)
    with pytest.raises(SpoolFull):
        spool.write(b"x")
    assert not list(spool.root.glob("*/*"))


def spool_free(path: Path) -> int:
    return os.statvfs(path).f_bavail * os.statvfs(path).f_frsize


def test_enospc_while_writing_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real full disk is exercised in test_faults (tmpfs); here the failing write is injected
    # so that the clean-up of the temporary file is checked on every machine.
    spool = Spool(tmp_path, min_free_bytes=0)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(SpoolFull):
        spool.write(b"x" * 100)
    assert not list(spool.root.glob("*/*"))


def test_restart_indexes_complete_orphans_and_removes_the_rest(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path, modalities=[{"ae_title": "CT1"}])
    gateway = Gateway(settings, centre_url=f"http://127.0.0.1:{free_port()}", site_token="t")
    try:
        good, other = ct_study_bytes(2, rows=32, columns=32)
        kept = gateway.spool.write(good)  # renamed and fsynced; the row commit was lost
        gateway.receiver.store(other, _request(other))  # a normal, recorded instance
        day = kept.split("/")[0]
        (gateway.spool.root / day / f"dead{PARTIAL}").write_bytes(good[:5000])
        (gateway.spool.root / day / f"spare{WIRE_SUFFIX}").write_bytes(b"wire")
        (gateway.spool.root / day / "garbage.dcm").write_bytes(b"not dicom")
        gateway.recover()
        files = {p.name for p in gateway.spool.root.glob("*/*")}
        study = gateway.outbox.progress()[0].study_uid
        paths = {item.path for item in gateway.outbox.items(study)}
    finally:
        gateway.outbox.close()
        gateway.client.close()
    assert kept in paths and len(paths) == 2
    assert files == {Path(p).name for p in paths}


def _request(data: bytes):
    import io

    import pydicom

    from telerad.dicom_gateway import StoreRequest

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return StoreRequest("CT1", str(ds.SOPClassUID), str(ds.SOPInstanceUID))


def test_begun_write_is_synced_apart_and_kept_or_discarded_whole(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=0)
    kept = spool.begin(b"k" * 5000)
    dropped = spool.begin(b"d" * 5000)
    partials = sorted(p.name for p in spool.root.glob(f"*/*{PARTIAL}"))
    assert len(partials) == 2  # written under temporary names until settled
    relative = kept.finish()
    dropped.discard()
    dropped.discard()  # idempotent
    kept.discard()  # a no-op once finished: the file stays
    assert spool.read(relative) == b"k" * 5000
    assert [f"{p.parent.name}/{p.name}" for p in spool.root.glob("*/*")] == [relative]
    with pytest.raises(RuntimeError):
        kept.finish()


@pytest.mark.parametrize(
    ("code", "error"), [(errno.ENOSPC, SpoolFull), (errno.EIO, SpoolUnavailable)]
)
def test_failed_write_on_the_spool_thread_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, error: type[Exception]
) -> None:
    # A disk that fails its flush cannot be produced on demand: the failure is injected into
    # the synchronous write the spool thread runs, to check how it reaches the caller and
    # what is left.
    spool = Spool(tmp_path, min_free_bytes=0)
    writers: list[str] = []

    def failing(fd: int, data: object) -> int:
        writers.append(threading.current_thread().name)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", failing)
    pending = spool.begin(b"x" * 100)
    with pytest.raises(error):
        pending.finish()
    assert not list(spool.root.glob("*/*"))
    assert writers and writers[0].startswith("spool")  # written apart from the caller


def test_spool_files_are_opened_for_synchronous_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file is on disk when its write returns: opened O_DSYNC (no separate fsync)."""
    spool = Spool(tmp_path, min_free_bytes=0)
    flags: list[int] = []
    real_open = os.open

    def recording(path: object, flag: int, *args: object, **kwargs: object) -> int:
        flags.append(flag)
        return real_open(path, flag, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", recording)
    spool.write(b"y" * 100)
    assert any(flag & os.O_DSYNC and flag & os.O_EXCL for flag in flags)
