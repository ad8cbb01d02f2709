"""Notifications: a durable outbox of messages to users and sites, and their acknowledgement.

An *event* (a report became preliminary or final, an addendum, a critical finding, a
consultation message) is written as one :class:`~telerad.storage.Notification` row per
recipient and channel, in the same transaction as the change that caused it, so that no event
is lost between the commit and the send. The sender (:mod:`telerad.worklist.sender`) delivers
them later over pluggable channels:

``inbox``
    in-app; addressed to a user, or to a site (then every radiographer of the site sees it).
``webhook``
    the site's HTTPS endpoint, signed with HMAC-SHA256 (the adapter lives in ``viewer_api``).

Payloads carry UIDs, report ids and links, never a patient name or ID (they leave the centre
and may be logged by the receiver). A notification that ``requires_ack`` (critical findings)
is re-sent until a recipient acknowledges it.

Errors: :class:`NotificationError` → :class:`NotificationNotFound`, :class:`UnsafePayload`.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from telerad.storage import Notification, SiteWebhook, User

#: Keys a payload may never carry (matched case-insensitively, at any depth).
FORBIDDEN_KEYS = frozenset(
    {"patientname", "patient_name", "patientid", "patient_id", "patientbirthdate", "birth_date"}
)


class NotificationEvent(enum.StrEnum):
    """What happened."""

    REPORT_PRELIMINARY = "report-preliminary"
    REPORT_FINAL = "report-final"
    REPORT_ADDENDUM = "report-addendum"
    CRITICAL_FINDING = "critical-finding"
    CONSULTATION = "consultation-message"
    TASK_ESCALATED = "task-escalated"


class ChannelName(enum.StrEnum):
    """How a notification travels."""

    INBOX = "inbox"
    WEBHOOK = "webhook"


class NotificationError(Exception):
    """Base class of notification errors."""


class NotificationNotFound(NotificationError):
    """No such notification for this caller (a foreign one looks the same)."""


class UnsafePayload(NotificationError):
    """A payload would carry patient identification."""


@dataclass(frozen=True, slots=True)
class Recipient:
    """A user or a site (exactly one) and the channel to reach it."""

    channel: ChannelName
    user_id: int | None = None
    site_id: int | None = None

    def __post_init__(self) -> None:
        if (self.user_id is None) == (self.site_id is None):
            raise ValueError("a recipient is a user or a site")


@dataclass(frozen=True, slots=True)
class InboxReader:
    """Who reads an inbox: a user id, his role and his site."""

    user_id: int
    username: str
    role: str
    site_id: int | None


def check_payload(payload: Any) -> None:
    """Raise :class:`UnsafePayload` if ``payload`` has a patient-identifying key."""
    if isinstance(payload, Mapping):
        for key, value in payload.items():
            if str(key).lower() in FORBIDDEN_KEYS:
                raise UnsafePayload(f"payload key {key!r} would identify the patient")
            check_payload(value)
    elif isinstance(payload, list | tuple):
        for item in payload:
            check_payload(item)


def site_recipients(session: Session, site_id: int | None) -> list[Recipient]:
    """A site's inbox (its radiographers) and, if configured, its webhook."""
    if site_id is None:
        return []
    recipients = [Recipient(ChannelName.INBOX, site_id=site_id)]
    if session.get(SiteWebhook, site_id) is not None:
        recipients.append(Recipient(ChannelName.WEBHOOK, site_id=site_id))
    return recipients


def enqueue(
    session: Session,
    event: NotificationEvent,
    recipients: Iterable[Recipient],
    payload: Mapping[str, Any],
    *,
    study_uid: str | None = None,
    report_id: int | None = None,
    requires_ack: bool = False,
    now: datetime | None = None,
) -> str:
    """Add one outbox row per distinct recipient, due now; returns the event id.

    The caller commits (with the change that caused the event).
    """
    check_payload(payload)
    now = now or datetime.now(UTC)
    event_id = str(uuid.uuid4())
    body = {**payload, "event": event.value, "event_id": event_id, "requires_ack": requires_ack}
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":"))
    for recipient in dict.fromkeys(recipients):
        session.add(
            Notification(
                event_id=event_id,
                event=event.value,
                channel=recipient.channel.value,
                recipient_user_id=recipient.user_id,
                recipient_site_id=recipient.site_id,
                study_uid=study_uid,
                report_id=report_id,
                payload=encoded,
                requires_ack=requires_ack,
                attempts=0,
                escalations=0,
                next_attempt_at=now,
                last_error="",
                created_at=now,
            )
        )
    session.flush()
    return event_id


def reader_for(session: Session, username: str) -> InboxReader:
    """The inbox reader called ``username`` (an active user)."""
    user = session.scalar(select(User).where(User.username == username, User.active.is_(True)))
    if user is None:
        raise NotificationNotFound("unknown user")
    return InboxReader(user.id, user.username, user.role, user.site_id)


def _addressed_to(reader: InboxReader) -> ColumnElement[bool]:
    """Inbox rows for ``reader``: his own, and his site's if he is its radiographer."""
    mine = Notification.recipient_user_id == reader.user_id
    if reader.role != "radiographer" or reader.site_id is None:
        return and_(Notification.channel == ChannelName.INBOX.value, mine)
    site = Notification.recipient_site_id == reader.site_id
    return and_(Notification.channel == ChannelName.INBOX.value, or_(mine, site))


def inbox(
    session: Session, reader: InboxReader, *, unacknowledged: bool = False, limit: int = 100
) -> Sequence[Notification]:
    """The reader's in-app notifications, newest first."""
    query = select(Notification).where(_addressed_to(reader))
    if unacknowledged:
        query = query.where(
            Notification.requires_ack.is_(True), Notification.acknowledged_at.is_(None)
        )
    return session.scalars(query.order_by(Notification.id.desc()).limit(limit)).all()


def acknowledge(
    session: Session, reader: InboxReader, notification_id: int, now: datetime | None = None
) -> list[Notification]:
    """Acknowledge a notification of the reader's inbox, and its siblings to the same recipient.

    A site radiographer's acknowledgement of a site notification also acknowledges the site's
    webhook copy of the event, which stops its escalation. Acknowledging twice keeps the first
    time and person. Returns the rows of the recipient for that event.
    """
    row = session.scalar(
        select(Notification)
        .where(Notification.id == notification_id, _addressed_to(reader))
        .with_for_update()
    )
    if row is None:
        raise NotificationNotFound("no such notification")
    siblings = session.scalars(
        select(Notification).where(
            Notification.event_id == row.event_id,
            Notification.recipient_user_id.is_(None)
            if row.recipient_user_id is None
            else Notification.recipient_user_id == row.recipient_user_id,
            Notification.recipient_site_id.is_(None)
            if row.recipient_site_id is None
            else Notification.recipient_site_id == row.recipient_site_id,
        )
    ).all()
    now = now or datetime.now(UTC)
    for sibling in siblings:
        if sibling.acknowledged_at is None:
            sibling.acknowledged_at = now
            sibling.acknowledged_by = reader.username
        if sibling.requires_ack and sibling.delivered_at is not None:
            sibling.next_attempt_at = None  # escalation stops
    return list(siblings)


def notifications_of_report(session: Session, report_id: int) -> Sequence[Notification]:
    """Every notification about a report, in order (delivery and acknowledgement status)."""
    return session.scalars(
        select(Notification).where(Notification.report_id == report_id).order_by(Notification.id)
    ).all()


def payload_of(row: Notification) -> dict[str, Any]:
    """The decoded payload of a notification."""
    decoded: dict[str, Any] = json.loads(row.payload)
    return decoded
