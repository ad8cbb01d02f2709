"""Every file of pydicom's bundled test data through our SCP: accepted and kept byte for byte,
or refused with a precise status — never a crash, never a partial spool file or outbox row.

The centre is never reached here (its URL points at a closed port): the spool is what the
forwarder sends, and test_forwarding checks that the centre stores those bytes unchanged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, _config

from telerad.dicom_gateway import Gateway
from telerad.dicom_gateway.outbox import OutboxItem
from tests.dicom_gateway.conftest import dataset_bytes, free_port, gateway_settings, running_gateway

REFUSALS = {0xC000, 0xA900}


def _part10_files() -> list[Path]:
    """Bundled test files (those downloaded on demand are not available offline)."""
    files = []
    for path in sorted((Path(pydicom.__file__).parent / "data" / "test_files").rglob("*")):
        head = path.read_bytes()[:132] if path.is_file() else b""
        if path.is_file() and len(head) == 132 and head[128:132] == b"DICM":
            files.append(path)
    return files


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("gw")
    settings = gateway_settings(directory, modalities=[{"ae_title": "CT1"}])
    with running_gateway(settings, f"http://127.0.0.1:{free_port()}", "trs_unused") as running:
        yield running


def _meta(path: Path) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True).file_meta
    except Exception:
        return None


def _rows(gateway: Gateway) -> list[OutboxItem]:
    return [
        item
        for study in gateway.outbox.progress(limit=10000)
        for item in gateway.outbox.items(study.study_uid)
    ]


def _send(path: Path, port: int) -> int | str:
    """C-STORE the file's bytes as they are; returns the status or why it could not be sent."""
    meta = _meta(path)
    needed = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
    if meta is None or not all(meta.get(k) for k in needed):
        return "no usable File Meta"
    ae = AE(ae_title="CT1")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    association = ae.associate("127.0.0.1", port, ae_title="GATEWAY")
    if not association.is_established:  # the SOP class is not a storage class we accept
        return "context rejected"
    try:
        status = association.send_c_store(path)
        return int(status.Status) if status else "no response"
    finally:
        association.release()


def test_every_pydicom_test_file_is_kept_unchanged_or_refused_precisely(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # send the file's encoded bytes, not a re-encoding of a decoded copy
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    files = _part10_files()
    assert len(files) > 50
    outcomes: Counter[str] = Counter()
    for path in files:
        before = {item.id for item in _rows(gateway)}
        result = _send(path, gateway.dicom_port)
        after = [item for item in _rows(gateway) if item.id not in before]
        if result == 0x0000:
            original = dataset_bytes(path.read_bytes())
            stored = [gateway.spool.read(item.path) for item in after]
            if not stored:  # the same content was already received from another test file
                outcomes["duplicate"] += 1
                continue
            assert len(stored) == 1, path.name
            assert dataset_bytes(stored[0]) == original, path.name
            outcomes["accepted"] += 1
        elif isinstance(result, int):
            assert result in REFUSALS, f"{path.name}: {result:#06x}"
            assert after == [], f"{path.name}: refused but recorded"
            outcomes[f"refused {result:#06x}"] += 1
        else:
            outcomes[result] += 1
    print(dict(outcomes))
    assert outcomes["accepted"] > 40
    spooled = {p.name for p in gateway.spool.root.glob("*/*")}
    recorded = {Path(p).name for p in gateway.outbox.spooled_paths()}
    assert spooled == recorded  # no stray or partial file
