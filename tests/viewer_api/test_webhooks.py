"""The webhook channel over real HTTP: HMAC-SHA256 signature, retry after a 500, no patient
name or ID in what leaves the centre; on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from telerad.storage import (
    Archive,
    IngestSource,
    Notification,
    ReadingRequest,
    session_factory,
)
from telerad.viewer_api.webhooks import WebhookChannel, sign, verify
from telerad.worklist import (
    InboxChannel,
    InvalidWebhook,
    NotificationSender,
    RetryPolicy,
    create_site,
    create_user,
    notify_report_event,
    set_site_webhook,
)
from tests.factories import ct_datasets, part10
from tests.webhook_receiver import webhook_receiver

SECRET = "s3cret-for-the-county1-receiver"
PATIENT_NAME, PATIENT_ID = "Webhook^Patient", "WH-PID-4711"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(base_seconds=5, max_seconds=60, max_attempts=3)


def _writer(archive: Archive) -> sessionmaker[Session]:
    return session_factory(archive.engine, writer=True)


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    signature = sign("key", "1700000000", b'{"a":1}')
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify("key", "1700000000", b'{"a":1}', signature)
    assert not verify("key", "1700000001", b'{"a":1}', signature)
    assert not verify("other", "1700000000", b'{"a":1}', signature)
    assert not verify("key", "1700000000", b'{"a":2}', signature)


def _county_with_report_event(archive: Archive, url: str) -> str:
    """county1 with a webhook at ``url``, a stored study of a named patient, an order naming a
    referrer, and a final-report event; returns the Study Instance UID."""
    writer = _writer(archive)
    with writer.begin() as session:
        site = create_site(session, "county1", issuer="COUNTY1")
        referrer = create_user(session, "ref1", "correct horse battery", "referrer", site="county1")
        set_site_webhook(session, "county1", url, SECRET)
        site_id, referrer_id = site.id, referrer.id
    datasets = ct_datasets(2, patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
    source = IngestSource(site_id, "COUNTY1", "test")
    for ds in datasets:
        archive.ingest_instance(part10(ds), source)
    study_uid = str(datasets[0].StudyInstanceUID)
    with writer.begin() as session:
        session.add(
            ReadingRequest(study_uid=study_uid, site_id=site_id, referrer_user_id=referrer_id)
        )
        session.flush()
        notify_report_event(session, "final", report_id=41, study_uid=study_uid, now=T0)
    return study_uid


def _webhook_row(archive: Archive) -> Notification:
    with archive.sessions() as session:
        return session.scalars(select(Notification).where(Notification.channel == "webhook")).one()


def test_webhook_is_signed_retried_after_500_and_carries_no_patient_data(
    archive: Archive,
) -> None:
    with webhook_receiver(statuses=[500]) as receiver:
        study_uid = _county_with_report_event(archive, receiver.url)
        channel = WebhookChannel(timeout=5)
        sender = NotificationSender(
            _writer(archive), {"webhook": channel, "inbox": InboxChannel()}, POLICY
        )
        try:
            assert sender.run_once(T0) == 3  # site inbox, site webhook, referrer inbox
            failed = _webhook_row(archive)
            assert sender.run_once(T0 + timedelta(seconds=4)) == 0  # backoff: 5 s
            assert sender.run_once(T0 + timedelta(seconds=5)) == 1
        finally:
            channel.close()
        requests = receiver.wait_for(2)

    assert (failed.attempts, failed.delivered_at, failed.last_error) == (1, None, "HTTP 500")
    delivered = _webhook_row(archive)
    assert delivered.attempts == 2 and delivered.delivered_at is not None
    assert len(requests) == 2
    for request in requests:
        assert request.path == "/telerad/hook"
        assert request.signature_valid(SECRET)
        assert not request.signature_valid(SECRET + "x")
        assert request.headers["x-telerad-event"] == "report-final"
        assert request.headers["x-telerad-delivery"] == str(delivered.id)
        assert PATIENT_NAME.encode() not in request.body
        assert b"Webhook" not in request.body and PATIENT_ID.encode() not in request.body
        body = request.json()
        assert (body["event"], body["study_uid"], body["report_id"]) == (
            "report-final",
            study_uid,
            41,
        )
        assert body["links"]["pdf"] == "/api/reports/41.pdf"
    assert [r.json()["attempt"] for r in requests] == [1, 2]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_webhook_is_retried_then_given_up(archive: Archive) -> None:
    _county_with_report_event(archive, f"http://127.0.0.1:{_closed_port()}/hook")
    channel = WebhookChannel(timeout=2)
    sender = NotificationSender(_writer(archive), {"webhook": channel}, POLICY)
    try:
        now = T0
        for _ in range(POLICY.max_attempts):
            sender.run_once(now)
            now += timedelta(seconds=POLICY.max_seconds)
    finally:
        channel.close()

    row = _webhook_row(archive)
    assert row.attempts == POLICY.max_attempts
    assert row.failed_at is not None and row.delivered_at is None
    assert row.last_error.startswith("ConnectError")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.org/x",
        "/relative",
        "http://user:pw@example.org/",
        "http:///nohost",
        "x" * 3000,
    ],
)
def test_unusable_webhook_urls_are_refused(archive: Archive, url: str) -> None:
    with _writer(archive).begin() as session:
        create_site(session, "county1")
        with pytest.raises(InvalidWebhook):
            set_site_webhook(session, "county1", url, SECRET)
