"""The notification outbox, its sender (retries, escalation, leases) and acknowledgement,
on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from telerad.storage import Notification, ReadingRequest, session_factory
from telerad.worklist import (
    ChannelName,
    DeliveryFailed,
    InboxChannel,
    NotificationEvent,
    NotificationNotFound,
    NotificationSender,
    OutgoingMessage,
    Recipient,
    ReportEventKind,
    RetryPolicy,
    UnsafePayload,
    acknowledge,
    check_payload,
    create_site,
    create_user,
    enqueue,
    inbox,
    notify_report_event,
    reader_for,
)
from tests.factories import new_uid

PASSWORD = "correct horse battery"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(base_seconds=10, max_seconds=80, max_attempts=4, renotify_seconds=600)


class RecordingChannel:
    """A channel that records what it was given and fails the first ``failures`` times.

    Not a mock of anything telerad uses: the channel protocol is pluggable by design and this
    is one more implementation of it (the real webhook channel is tested over HTTP elsewhere).
    """

    def __init__(self, name: str, failures: int = 0) -> None:
        self.name = name
        self.failures = failures
        self.received: list[OutgoingMessage] = []
        self.lock = threading.Lock()

    def deliver(self, message: OutgoingMessage) -> None:
        with self.lock:
            self.received.append(message)
            if self.failures:
                self.failures -= 1
                raise DeliveryFailed("receiver answered HTTP 500")


@dataclass
class World:
    engine: Engine
    writer: sessionmaker[Session]
    ids: dict[str, int]


@pytest.fixture
def world(engine: Engine) -> Iterator[World]:
    writer = session_factory(engine, writer=True)
    ids: dict[str, int] = {}
    with writer.begin() as session:
        ids["county1"] = create_site(session, "county1").id
        ids["county2"] = create_site(session, "county2").id
        for name, role, site in (
            ("rg1", "radiographer", "county1"),
            ("rg1b", "radiographer", "county1"),
            ("rg2", "radiographer", "county2"),
            ("ref1", "referrer", "county1"),
            ("ref2", "referrer", "county1"),
        ):
            ids[name] = create_user(session, name, PASSWORD, role, site=site).id
    yield World(engine, writer, ids)


def _rows(world: World) -> list[Notification]:
    with world.writer() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


def _sender(world: World, *channels: object, policy: RetryPolicy = POLICY) -> NotificationSender:
    named = {c.name: c for c in channels}  # type: ignore[attr-defined]
    return NotificationSender(world.writer, named, policy)  # type: ignore[arg-type]


# --- pure rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"PatientName": "Doe^Jane"},
        {"study_uid": "1.2", "nested": {"patient_id": "X"}},
        {"items": [{"PatientID": "X"}]},
        {"PATIENTBIRTHDATE": "19700101"},
    ],
)
def test_payloads_with_patient_identification_are_refused(payload: dict[str, object]) -> None:
    with pytest.raises(UnsafePayload):
        check_payload(payload)


def test_retry_delay_doubles_up_to_the_cap() -> None:
    delays = [POLICY.retry_delay(n).total_seconds() for n in range(1, 7)]
    assert delays == [10, 20, 40, 80, 80, 80]


def test_a_recipient_is_a_user_or_a_site() -> None:
    with pytest.raises(ValueError):
        Recipient(ChannelName.INBOX, user_id=1, site_id=1)
    with pytest.raises(ValueError):
        Recipient(ChannelName.INBOX)


# --- outbox and sender -----------------------------------------------------------------------


def test_enqueue_writes_one_row_per_distinct_recipient(world: World) -> None:
    recipients = [
        Recipient(ChannelName.INBOX, site_id=world.ids["county1"]),
        Recipient(ChannelName.INBOX, user_id=world.ids["ref1"]),
        Recipient(ChannelName.INBOX, user_id=world.ids["ref1"]),
    ]
    with world.writer.begin() as session:
        event_id = enqueue(
            session, NotificationEvent.REPORT_FINAL, recipients, {"report_id": 7}, now=T0
        )

    rows = _rows(world)
    assert len(rows) == 2
    assert {r.event_id for r in rows} == {event_id}
    assert all(r.next_attempt_at is not None and r.delivered_at is None for r in rows)


def test_inbox_delivery_is_recorded_and_not_repeated(world: World) -> None:
    with world.writer.begin() as session:
        enqueue(
            session,
            NotificationEvent.REPORT_FINAL,
            [Recipient(ChannelName.INBOX, user_id=world.ids["ref1"])],
            {"report_id": 1},
            now=T0,
        )
    sender = _sender(world, InboxChannel())

    assert sender.run_once(T0) == 1
    assert sender.run_once(T0 + timedelta(days=1)) == 0
    [row] = _rows(world)
    assert row.delivered_at is not None and row.next_attempt_at is None and row.attempts == 1


def test_failed_delivery_is_retried_with_backoff_then_given_up(world: World) -> None:
    hook = RecordingChannel("webhook", failures=99)
    with world.writer.begin() as session:
        enqueue(
            session,
            NotificationEvent.REPORT_FINAL,
            [Recipient(ChannelName.WEBHOOK, site_id=world.ids["county1"])],
            {"report_id": 1},
            now=T0,
        )
    sender = _sender(world, hook)

    now, waits = T0, []
    for _ in range(POLICY.max_attempts):
        assert sender.run_once(now) == 1
        [row] = _rows(world)
        if row.next_attempt_at is None:
            break
        next_at = row.next_attempt_at.replace(tzinfo=UTC)
        assert sender.run_once(next_at - timedelta(seconds=1)) == 0  # not before its time
        waits.append((next_at - now).total_seconds())
        now = next_at

    [row] = _rows(world)
    assert waits == [10, 20, 40]
    assert (row.attempts, row.delivered_at, row.next_attempt_at) == (4, None, None)
    assert row.failed_at is not None and row.last_error == "receiver answered HTTP 500"
    assert [m.attempt for m in hook.received] == [1, 2, 3, 4]


def test_critical_finding_escalates_until_acknowledged(world: World) -> None:
    study_uid = new_uid()
    with world.writer.begin() as session:
        _order(session, world, study_uid)
        notify_report_event(
            session,
            ReportEventKind.CRITICAL,
            report_id=5,
            study_uid=study_uid,
            status="final",
            now=T0,
        )
    inbox_channel = RecordingChannel("inbox")
    sender = _sender(world, inbox_channel)

    sender.run_once(T0)
    sender.run_once(T0 + timedelta(seconds=599))
    sender.run_once(T0 + timedelta(seconds=600))
    sender.run_once(T0 + timedelta(seconds=1200))
    site_row_id = _site_row(world).id
    with world.writer.begin() as session:
        acknowledge(session, reader_for(session, "rg1b"), site_row_id, now=T0)
    sender.run_once(T0 + timedelta(days=1))

    by_recipient = Counter(
        (m.recipient_site_id, m.recipient_user_id, m.escalation) for m in inbox_channel.received
    )
    site, ref1 = world.ids["county1"], world.ids["ref1"]
    assert by_recipient == Counter(
        {
            (site, None, 0): 1, (site, None, 1): 1, (site, None, 2): 1,
            (None, ref1, 0): 1, (None, ref1, 1): 1, (None, ref1, 2): 1, (None, ref1, 3): 1,
        }
    )  # fmt: skip
    assert all(m.payload["requires_ack"] is True for m in inbox_channel.received)
    site_row = _site_row(world)
    assert (site_row.acknowledged_by, site_row.next_attempt_at) == ("rg1b", None)


def _order(session: Session, world: World, study_uid: str) -> None:
    """The county1 order for ``study_uid`` naming ref1 as the referrer."""
    ids = world.ids
    request = ReadingRequest(
        study_uid=study_uid, site_id=ids["county1"], referrer_user_id=ids["ref1"]
    )
    session.add(request)
    session.flush()


def _site_row(world: World) -> Notification:
    [row] = [r for r in _rows(world) if r.recipient_site_id is not None]
    return row


def test_inbox_shows_own_and_site_rows_and_ack_is_limited_to_them(world: World) -> None:
    study_uid = new_uid()
    with world.writer.begin() as session:
        _order(session, world, study_uid)
        notify_report_event(session, "final", report_id=9, study_uid=study_uid, now=T0)

    foreign = _rows(world)[0].id
    with world.writer.begin() as session:
        seen = {
            name: [(r.recipient_site_id, r.recipient_user_id) for r in inbox(session, reader)]
            for name in ("rg1", "rg2", "ref1", "ref2")
            for reader in [reader_for(session, name)]
        }
        with pytest.raises(NotificationNotFound):
            acknowledge(session, reader_for(session, "ref2"), foreign)

    assert seen == {
        "rg1": [(world.ids["county1"], None)],
        "rg2": [],
        "ref1": [(None, world.ids["ref1"])],
        "ref2": [],
    }
    assert all(r.acknowledged_at is None for r in _rows(world))


def test_two_senders_deliver_each_notification_exactly_once(world: World) -> None:
    with world.writer.begin() as session:
        for n in range(40):
            enqueue(
                session,
                NotificationEvent.REPORT_FINAL,
                [Recipient(ChannelName.INBOX, user_id=world.ids["ref1"])],
                {"report_id": n},
                now=T0,
            )
    channel = RecordingChannel("inbox")
    senders = [_sender(world, channel) for _ in range(2)]
    small = [NotificationSender(s.writer, s.channels, POLICY, batch=5) for s in senders]
    barrier = threading.Barrier(2)

    def drain(sender: NotificationSender) -> None:
        barrier.wait()
        while sender.run_once(T0):
            pass

    threads = [threading.Thread(target=drain, args=(s,)) for s in small]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    delivered = Counter(m.notification_id for m in channel.received)
    assert len(delivered) == 40 and set(delivered.values()) == {1}
    assert all(r.delivered_at is not None and r.lease_owner is None for r in _rows(world))


def test_an_expired_lease_is_taken_over_and_the_old_holder_records_nothing(world: World) -> None:
    with world.writer.begin() as session:
        enqueue(
            session,
            NotificationEvent.REPORT_FINAL,
            [Recipient(ChannelName.INBOX, user_id=world.ids["ref1"])],
            {"report_id": 1},
            now=T0,
        )
    first, second = _sender(world, InboxChannel()), _sender(world, InboxChannel())
    [message] = first._claim(T0)  # the first sender stalls after claiming

    assert second.run_once(T0 + timedelta(seconds=60)) == 0  # lease still held
    assert second.run_once(T0 + timedelta(seconds=POLICY.lease_seconds + 1)) == 1
    first._record(message, None, T0 + timedelta(seconds=500))

    [row] = _rows(world)
    assert row.attempts == 1
    assert row.delivered_at.replace(tzinfo=UTC) == T0 + timedelta(seconds=POLICY.lease_seconds + 1)
