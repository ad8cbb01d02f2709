"""Tables of delivery: the consultation thread, the notification outbox, site webhooks and
share links (issue 5, items 5 and 8).

Imported by :mod:`telerad.storage.models` so that they are part of ``Base.metadata`` and of
the one Alembic history (revision 0005). The rules live in :mod:`telerad.worklist`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from telerad.storage.models import Base, utcnow


class ConsultationMessage(Base):
    """One message of a study's consultation thread (county side or reading side)."""

    __tablename__ = "consultation_messages"
    __table_args__ = (Index("ix_consultation_messages_study", "study_uid", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), index=True)
    author_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    author: Mapped[str] = mapped_column(String(128))
    author_role: Mapped[str] = mapped_column(String(16))
    #: ``county`` (site radiographers, the referrer) or ``reading`` (radiologists, admins).
    side: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SiteWebhook(Base):
    """Where a site wants its notifications POSTed, and the HMAC key that signs them."""

    __tablename__ = "site_webhooks"
    site_id: Mapped[int] = mapped_column(
        ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True
    )
    url: Mapped[str] = mapped_column(String(2048))
    #: The shared HMAC-SHA256 key (the receiver needs it in clear to verify, so do we to sign).
    secret: Mapped[str] = mapped_column(String(256))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Notification(Base):
    """One message to one recipient (a user or a site) over one channel: a durable outbox row.

    Rows of the same event share ``event_id``. The sender picks rows whose ``next_attempt_at``
    has come and whose lease (``lease_owner`` until ``lease_until``) is free; ``next_attempt_at``
    is ``None`` once nothing is left to do (delivered and, if ``requires_ack``, acknowledged;
    or failed for good).
    """

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_due", "next_attempt_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), index=True)
    event: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16))
    recipient_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    recipient_site_id: Mapped[int | None] = mapped_column(
        ForeignKey("sites.id", ondelete="CASCADE"), index=True
    )
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    report_id: Mapped[int | None] = mapped_column(Integer, index=True)
    #: JSON; never a patient name or ID (it is sent to webhooks and may reach logs).
    payload: Mapped[str] = mapped_column(Text)
    requires_ack: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    escalations: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(String(36))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str] = mapped_column(String(512), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))


class ShareLink(Base):
    """A time-limited, revocable link to one report; only the token's SHA-256 is stored."""

    __tablename__ = "share_links"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    note: Mapped[str] = mapped_column(String(256), default="")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_by: Mapped[str | None] = mapped_column(String(128))
