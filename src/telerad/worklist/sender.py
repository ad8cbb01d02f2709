"""The notification sender: drains the outbox over pluggable channels, safely from many processes.

Each round claims due rows with a short lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
concurrent senders take disjoint rows; ``BEGIN IMMEDIATE`` on SQLite, which serializes the
claim), delivers them outside the transaction, and records the outcome only if it still holds
the lease. A failed delivery is retried with exponential backoff until ``max_attempts``; a
delivered notification that ``requires_ack`` is re-sent every ``renotify_seconds`` (an
*escalation*) until it is acknowledged.

Errors: :class:`DeliveryFailed` (raised by channels).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from telerad.storage import Notification, SiteWebhook
from telerad.worklist.notifications import ChannelName

logger = logging.getLogger(__name__)


class DeliveryFailed(Exception):
    """A channel could not deliver a message (it will be retried)."""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One delivery attempt of one notification, as a channel sees it."""

    notification_id: int
    event: str
    channel: str
    payload: dict[str, object]
    attempt: int
    escalation: int
    recipient_user_id: int | None = None
    recipient_site_id: int | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)

    def body(self) -> bytes:
        """The JSON document sent: the payload plus delivery metadata (no patient data)."""
        document = {
            **self.payload,
            "notification_id": self.notification_id,
            "attempt": self.attempt,
            "escalation": self.escalation,
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class Channel(Protocol):
    """A way to deliver notifications (``inbox``, ``webhook``, …)."""

    name: str

    def deliver(self, message: OutgoingMessage) -> None:
        """Deliver ``message`` or raise :class:`DeliveryFailed`."""


class InboxChannel:
    """In-app delivery: the outbox row *is* the inbox entry, so delivery only records it."""

    name = ChannelName.INBOX.value

    def deliver(self, message: OutgoingMessage) -> None:
        """Nothing to transmit."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff, give-up and escalation timing."""

    base_seconds: float = 5.0
    max_seconds: float = 3600.0
    max_attempts: int = 10
    renotify_seconds: float = 900.0
    max_escalations: int = 48
    lease_seconds: float = 120.0

    def retry_delay(self, attempts: int) -> timedelta:
        """Wait before the next try after ``attempts`` tries (doubling, capped)."""
        exponent = min(max(attempts - 1, 0), 30)
        return timedelta(seconds=min(self.max_seconds, self.base_seconds * 2**exponent))


def aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive timestamps; every timestamp telerad writes is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class NotificationSender:
    """Claims due notifications, hands them to their channel, records the outcome."""

    def __init__(
        self,
        writer: sessionmaker[Session],
        channels: Mapping[str, Channel],
        policy: RetryPolicy | None = None,
        *,
        batch: int = 20,
    ) -> None:
        self.writer = writer
        self.channels = dict(channels)
        self.policy = policy or RetryPolicy()
        self.batch = batch
        self.owner = str(uuid.uuid4())

    def run_once(self, now: datetime | None = None) -> int:
        """One round: deliver what is due at ``now``; returns the number of attempts."""
        messages = self._claim(now or datetime.now(UTC))
        for message in messages:
            error = self._deliver(message)
            self._record(message, error, now or datetime.now(UTC))
        return len(messages)

    def _deliver(self, message: OutgoingMessage) -> str | None:
        channel = self.channels.get(message.channel)
        if channel is None:
            return f"no channel {message.channel!r}"
        try:
            channel.deliver(message)
        except DeliveryFailed as exc:
            logger.warning(
                "notification %d (%s via %s) attempt %d failed: %s",
                message.notification_id, message.event, message.channel, message.attempt, exc,
            )  # fmt: skip
            return str(exc)[:512] or "delivery failed"
        logger.info(
            "notification %d (%s via %s) delivered",
            message.notification_id, message.event, message.channel,
        )  # fmt: skip
        return None

    def _claim(self, now: datetime) -> list[OutgoingMessage]:
        """Lease up to ``batch`` due rows to this sender."""
        with self.writer.begin() as session:
            query = (
                select(Notification)
                .where(
                    Notification.next_attempt_at <= now,
                    or_(Notification.lease_until.is_(None), Notification.lease_until < now),
                )
                .order_by(Notification.next_attempt_at, Notification.id)
                .limit(self.batch)
            )
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = session.scalars(query).all()
            until = now + timedelta(seconds=self.policy.lease_seconds)
            messages = []
            for row in rows:
                row.lease_owner, row.lease_until = self.owner, until
                messages.append(self._message(session, row))
            return messages

    def _message(self, session: Session, row: Notification) -> OutgoingMessage:
        escalation = row.escalations + (1 if row.delivered_at is not None else 0)
        hook = None
        if row.channel == ChannelName.WEBHOOK.value and row.recipient_site_id is not None:
            hook = session.get(SiteWebhook, row.recipient_site_id)
        return OutgoingMessage(
            notification_id=row.id,
            event=row.event,
            channel=row.channel,
            payload=json.loads(row.payload),
            attempt=row.attempts + 1,
            escalation=escalation,
            recipient_user_id=row.recipient_user_id,
            recipient_site_id=row.recipient_site_id,
            webhook_url=hook.url if hook else None,
            webhook_secret=hook.secret if hook else None,
        )

    def _record(self, message: OutgoingMessage, error: str | None, now: datetime) -> None:
        """Store the outcome, unless another sender took the row over meanwhile."""
        with self.writer.begin() as session:
            row = session.get(Notification, message.notification_id, with_for_update=True)
            if row is None or row.lease_owner != self.owner:
                return
            row.lease_owner, row.lease_until = None, None
            row.attempts += 1
            if error is None:
                self._succeeded(row, now)
            else:
                self._failed(row, error, now)

    def _succeeded(self, row: Notification, now: datetime) -> None:
        if row.delivered_at is None:
            row.delivered_at = now
        else:
            row.escalations += 1
        row.notified_at, row.last_error = now, ""
        pending_ack = row.requires_ack and row.acknowledged_at is None
        if pending_ack and row.escalations < self.policy.max_escalations:
            row.next_attempt_at = now + timedelta(seconds=self.policy.renotify_seconds)
        else:
            row.next_attempt_at = None

    def _failed(self, row: Notification, error: str, now: datetime) -> None:
        row.last_error = error
        if row.delivered_at is None and row.attempts >= self.policy.max_attempts:
            row.failed_at, row.next_attempt_at = now, None
            logger.error("notification %d given up after %d attempts", row.id, row.attempts)
            return
        if row.delivered_at is not None and row.acknowledged_at is not None:
            row.next_attempt_at = None
            return
        row.next_attempt_at = now + self.policy.retry_delay(row.attempts)


class SenderLoop:
    """Runs :meth:`NotificationSender.run_once` every ``interval`` seconds on a thread."""

    def __init__(self, sender: NotificationSender, interval: float = 2.0) -> None:
        self.sender = sender
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="notifications", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.sender.run_once()
            except Exception:
                logger.exception("notification round failed")
                busy = 0
            if not busy:
                self._stop.wait(self.interval)
