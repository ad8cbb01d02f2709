"""The outbox's state machine, leases, priorities and manifests, on a real SQLite file."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any, cast

import pytest

from telerad.dicom_gateway.errors import SpoolFull, SpoolUnavailable
from telerad.dicom_gateway.forwarder import Forwarder, backoff_delay
from telerad.dicom_gateway.outbox import (
    COMPLETE,
    CONFIRMED,
    DEAD,
    PENDING,
    RECEIVING,
    ROUTINE,
    STAT,
    URGENT,
    Outbox,
    Received,
)
from telerad.dicom_gateway.scp import STORE_STATUS, CallingAePolicy, status_for
from telerad.dicom_gateway.spool import Spool
from telerad.settings import GatewaySettings
from telerad.storage import InvalidInstance


def _item(uid: str, study: str = "1.2.3", priority: int = ROUTINE, size: int = 100) -> Received:
    return Received(uid, "1.2.840.10008.5.1.4.1.1.2", study, "1.2.3.4", "1.2.840.10008.1.2.1",
                    "CT1", f"d/{uid}.dcm", size, f"{uid:0>64}"[-64:], priority)  # fmt: skip


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "outbox.db", lease_seconds=10)
    yield box
    box.close()


def _states(outbox: Outbox, study: str = "1.2.3") -> dict[str, str]:
    return {i.sop_instance_uid: i.state for i in outbox.items(study)}


def test_same_content_is_recorded_once(outbox: Outbox) -> None:
    assert outbox.record(_item("1"))
    assert not outbox.record(_item("1"))
    assert len(outbox.items("1.2.3")) == 1


def test_stat_study_is_claimed_first_and_batches_respect_bytes(outbox: Outbox) -> None:
    for uid in ("1", "2", "3"):
        outbox.record(_item(uid, "1.2.3", size=400))
    outbox.record(_item("9", "1.2.9", STAT, size=400))
    first = outbox.claim_batch(1000)
    assert [i.sop_instance_uid for i in first] == ["9"]
    second = outbox.claim_batch(1000)
    assert [i.sop_instance_uid for i in second] == ["1", "2"]  # 800 bytes fit, 1200 do not
    assert outbox.claim_batch(1000)[0].sop_instance_uid == "3"
    assert outbox.claim_batch(1000) == []  # all leased


def test_expired_lease_and_restart_make_rows_pending_again(outbox: Outbox) -> None:
    outbox.record(_item("1"), now=100)
    assert outbox.claim_batch(1000, now=100)
    assert outbox.claim_batch(1000, now=105) == []  # lease still held
    assert [i.sop_instance_uid for i in outbox.claim_batch(1000, now=111)] == ["1"]
    assert outbox.recover(now=111) == 1
    assert _states(outbox) == {"1": PENDING}


def test_failures_back_off_then_dead_letter_and_retry(outbox: Outbox) -> None:
    outbox.record(_item("1"), now=0)
    for attempt in range(3):
        batch = outbox.claim_batch(1000, now=attempt * 100)
        assert batch, attempt
        outbox.fail([(batch[0].id, "down", False, 0)], max_attempts=3, backoff=50,
                    now=attempt * 100)  # fmt: skip
        if attempt < 2:
            assert outbox.claim_batch(1000, now=attempt * 100 + 10) == []  # backing off
    assert _states(outbox) == {"1": DEAD}
    assert outbox.retry("1.2.3") == 1
    assert _states(outbox) == {"1": PENDING}


def test_permanent_refusal_is_dead_at_once(outbox: Outbox) -> None:
    outbox.record(_item("1"))
    batch = outbox.claim_batch(1000)
    outbox.fail([(batch[0].id, "0xa900", True, 0)], max_attempts=10, backoff=1)
    assert _states(outbox) == {"1": DEAD}


def test_manifest_waits_for_quiet_and_confirmation(outbox: Outbox) -> None:
    outbox.record(_item("1"), now=0)
    outbox.record(_item("2"), now=5)
    assert outbox.studies_due_for_manifest(30, now=100) == []  # nothing confirmed yet
    batch = outbox.claim_batch(10_000, now=6)
    outbox.set_wire(batch[0].id, None, batch[0].sha256, 100)
    outbox.confirm([(i.id, 100) for i in batch], now=7)
    assert outbox.studies_due_for_manifest(30, now=20) == []  # not quiet for 30 s
    assert outbox.studies_due_for_manifest(30, now=40) == ["1.2.3"]
    assert set(outbox.manifest("1.2.3")) == {"1", "2"}


def test_missing_instances_are_resent_and_new_ones_reopen(outbox: Outbox) -> None:
    outbox.record(_item("1"), now=0)
    outbox.record(_item("2"), now=0)
    outbox.confirm([(i.id, 1) for i in outbox.claim_batch(10_000, now=1)], now=1)
    outbox.manifest_result("1.2.3", complete=False, resend=["2"], received=1, expected=2,
                           posted_at=40)  # fmt: skip
    assert _states(outbox) == {"1": CONFIRMED, "2": PENDING}
    outbox.confirm([(i.id, 1) for i in outbox.claim_batch(10_000, now=41)], now=41)
    outbox.manifest_result("1.2.3", complete=True, resend=[], received=2, expected=2,
                           posted_at=80)  # fmt: skip
    assert outbox.progress("1.2.3")[0].state == COMPLETE
    outbox.record(_item("3"), now=90)
    assert outbox.progress("1.2.3")[0].state == RECEIVING


def test_commitment_lookups(outbox: Outbox) -> None:
    outbox.record(_item("1"))
    outbox.record(_item("2"))
    batch = outbox.claim_batch(10_000)
    outbox.confirm([(batch[0].id, 1)])
    ct = "1.2.840.10008.5.1.4.1.1.2"
    assert outbox.received_states(["1", "2", "3"]) == {"1": (CONFIRMED, ct), "2": ("sending", ct)}


@pytest.mark.parametrize(
    ("exc", "status"),
    [(SpoolFull("x"), 0xA700), (SpoolUnavailable("x"), 0xA701),
     (InvalidInstance("x"), 0xC000), (RuntimeError("x"), 0x0110)],
)  # fmt: skip
def test_store_status_table(exc: Exception, status: int) -> None:
    assert status_for(exc) == status
    assert set(STORE_STATUS.values()) <= {0xA700, 0xA701, 0xA900, 0xC000}


def test_calling_ae_policy() -> None:
    policy = CallingAePolicy()
    assert policy.as_required_list() == [""]  # nobody, until modalities are listed
    policy.update({"CT1 "})
    assert policy.as_required_list() == ["CT1"]
    policy.update(set(), accept_any=True)
    assert policy.as_required_list() == []  # pynetdicom: any calling AE title


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(n, 1.0, 60.0, rng) for n in range(12) for _ in range(20)]
    assert min(delays) >= 0.5
    assert max(delays) <= 60.0
    late = [backoff_delay(10, 1.0, 60.0, rng) for _ in range(200)]
    early = [backoff_delay(0, 1.0, 60.0, rng) for _ in range(200)]
    assert sum(late) / 200 > 10 * sum(early) / 200


def test_part10_header_is_pynetdicoms_file_meta() -> None:
    """Our hand-encoded File Meta equals the one pynetdicom/pydicom would write."""
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom.dsutils import create_file_meta

    from telerad.dicom_gateway.scp import part10

    uids = ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", "1.2.840.10008.1.2.4.80")
    expected = io.BytesIO()
    meta = create_file_meta(sop_class_uid=uids[0], sop_instance_uid=uids[1],
                            transfer_syntax=uids[2])  # fmt: skip
    write_file_meta_info(expected, meta)
    data = part10(b"\x08\x00", *uids)
    assert data[:132] == b"\0" * 128 + b"DICM"
    assert data[132:-2] == expected.getvalue()
    assert data[-2:] == b"\x08\x00"


def test_retention_purges_only_complete_studies_and_blocks_resend(tmp_path: Path) -> None:
    from telerad.dicom_gateway.forwarder import Completeness
    from telerad.dicom_gateway.spool import Spool
    from telerad.settings import GatewaySettings

    outbox = Outbox(tmp_path / "outbox.db")
    spool = Spool(tmp_path, min_free_bytes=0)
    paths = {}
    for uid, study in (("1", "1.2.3"), ("2", "1.2.9")):
        relative = spool.write(b"data" + uid.encode())
        paths[uid] = relative
        item = _item(uid, study)
        outbox.record(Received(*[relative if f == "path" else getattr(item, f)
                                 for f in Received.__slots__]), now=0)  # fmt: skip
    outbox.confirm([(i.id, 1) for i in outbox.claim_batch(10_000, now=1)], now=1)
    outbox.confirm([(i.id, 1) for i in outbox.claim_batch(10_000, now=1)], now=1)
    outbox.manifest_result("1.2.3", complete=True, resend=[], received=1, expected=1,
                           posted_at=10)  # fmt: skip
    loop = Completeness(outbox, None, GatewaySettings(retention_hours=1), spool)  # type: ignore[arg-type]
    assert loop.purge(now=10 + 1800) == 0  # complete for half an hour: kept
    assert loop.purge(now=10 + 3601) == 1
    assert not spool.path(paths["1"]).exists() and spool.path(paths["2"]).exists()
    assert paths["1"] not in outbox.spooled_paths()
    outbox.manifest_result("1.2.3", complete=False, resend=["1"], received=0, expected=1,
                           posted_at=4000)  # fmt: skip
    assert _states(outbox) == {"1": DEAD}  # cannot be re-sent from a purged spool
    outbox.close()


def test_routine_forwarding_yields_to_modalities_while_they_send(
    outbox: Outbox, tmp_path: Path
) -> None:
    """No batch until the modalities have been quiet for ``yield_seconds``, and never longer
    than ``yield_max_seconds`` after the oldest waiting instance arrived."""
    settings = GatewaySettings(yield_seconds=0.3, yield_max_seconds=5.0)
    # The forwarder's yield reads the outbox only: no centre is needed for it.
    forwarder = Forwarder(outbox, Spool(tmp_path, min_free_bytes=0), cast(Any, None), settings,
                          wire="none")  # fmt: skip
    assert forwarder.yield_seconds(now=100.0) == 0.0  # nothing waits
    outbox.record(_item("1"), now=100.0)
    assert forwarder.yield_seconds(now=100.1) == pytest.approx(0.2)
    assert forwarder.yield_seconds(now=100.3) == 0.0  # quiet long enough
    for tick in range(1, 60):  # a modality sending one instance every 0.1 s, until 105.9
        outbox.record(_item(f"2{tick}"), now=100.0 + tick / 10)
    assert forwarder.yield_seconds(now=103.0) == pytest.approx(2.0)  # bounded by 100 + 5
    assert forwarder.yield_seconds(now=105.0) == 0.0  # the oldest has waited 5 s: go
    # what was claimed and is being sent no longer holds forwarding back
    while outbox.claim_batch(10_000, now=105.0):
        pass
    outbox.record(_item("3"), now=106.0)
    assert forwarder.yield_seconds(now=106.1) == pytest.approx(0.2)
    outbox.record(_item("9", "1.2.9", URGENT), now=106.1)  # an urgent study never waits
    assert forwarder.yield_seconds(now=106.2) == 0.0
    off = Forwarder(outbox, forwarder.spool, cast(Any, None),
                    GatewaySettings(yield_seconds=0), wire="none")  # fmt: skip
    outbox.release([i.id for i in outbox.claim_batch(10_000, now=106.2)])  # urgent back
    assert off.yield_seconds(now=106.2) == 0.0
