"""Share links: a time-limited, revocable link to one report for a doctor without an account.

A link is an unguessable bearer token (``trl_`` + 256 random bits); only its SHA-256 is
stored, so a leaked database does not leak working links. A link opens exactly one report (and
its key images) until it expires (at most ``delivery.share_link_hours`` after issue) or is
revoked. An unknown, expired, revoked or malformed token is reported identically
(:class:`ShareLinkNotFound`), so a caller learns nothing about which links exist. Every use is
written to the audit log by the adapter; :func:`report_accesses` reads it back.

Errors: :class:`ShareLinkError` → :class:`ShareLinkNotFound`, :class:`InvalidShareLink`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from telerad.storage import AuditEvent, ShareLink

TOKEN_PREFIX = "trl_"  # noqa: S105 - a prefix, not a secret
_TOKEN_RE = re.compile(r"trl_[A-Za-z0-9_-]{43}")


class ShareLinkError(Exception):
    """Base class of share-link errors."""


class ShareLinkNotFound(ShareLinkError):
    """Unknown, expired, revoked or malformed: all look the same."""


class InvalidShareLink(ShareLinkError):
    """A link that may not be issued (e.g. longer than the configured maximum)."""


def token_digest(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def share_expiry(now: datetime, hours: float | None, max_hours: float) -> datetime:
    """When a link issued at ``now`` for ``hours`` (default and cap ``max_hours``) expires."""
    hours = max_hours if hours is None else hours
    if not 0 < hours <= max_hours:
        raise InvalidShareLink(f"a share link lasts more than 0 and at most {max_hours:g} hours")
    return now + timedelta(hours=hours)


def issue_share_link(
    session: Session,
    *,
    report_id: int,
    study_uid: str,
    created_by: str,
    max_hours: float,
    hours: float | None = None,
    note: str = "",
    now: datetime | None = None,
) -> tuple[ShareLink, str]:
    """Create a link to ``report_id``; returns the row and the clear token (shown only now).

    The caller has checked that ``created_by`` may share the report, and commits.
    """
    if len(note) > 256:
        raise InvalidShareLink("a note has at most 256 characters")
    now = now or datetime.now(UTC)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    link = ShareLink(
        report_id=report_id,
        study_uid=study_uid,
        token_sha256=token_digest(token),
        note=note,
        created_by=created_by,
        created_at=now,
        expires_at=share_expiry(now, hours, max_hours),
    )
    session.add(link)
    session.flush()
    return link, token


def resolve_share_link(session: Session, token: str, now: datetime | None = None) -> ShareLink:
    """The live link for ``token``; :class:`ShareLinkNotFound` otherwise.

    The lookup is by the token's SHA-256 (its timing says nothing about the token itself),
    confirmed with a constant-time comparison.
    """
    if not _TOKEN_RE.fullmatch(token):
        raise ShareLinkNotFound("no such share link")
    digest = token_digest(token)
    link = session.scalar(select(ShareLink).where(ShareLink.token_sha256 == digest))
    now = now or datetime.now(UTC)
    if link is None or not hmac.compare_digest(link.token_sha256, digest):
        raise ShareLinkNotFound("no such share link")
    if link.revoked_at is not None or _aware(link.expires_at) <= now:
        raise ShareLinkNotFound("no such share link")
    return link


def revoke_share_link(
    session: Session, report_id: int, link_id: int, revoked_by: str, now: datetime | None = None
) -> ShareLink:
    """Revoke a link of ``report_id`` (idempotent: the first revocation is kept)."""
    link = session.get(ShareLink, link_id, with_for_update=True)
    if link is None or link.report_id != report_id:
        raise ShareLinkNotFound("no such share link")
    if link.revoked_at is None:
        link.revoked_at, link.revoked_by = now or datetime.now(UTC), revoked_by
    return link


def share_links_of(session: Session, report_id: int) -> Sequence[ShareLink]:
    """Every link issued for a report, oldest first."""
    return session.scalars(
        select(ShareLink).where(ShareLink.report_id == report_id).order_by(ShareLink.id)
    ).all()


def report_resource(report_id: int) -> str:
    """The audit resource of a report; reads of its outputs are recorded under it."""
    return f"/api/reports/{report_id}"


def share_resource(report_id: int, link_id: int) -> str:
    """The audit resource of a read through a share link (never the token)."""
    return f"{report_resource(report_id)}/share/{link_id}"


def report_accesses(session: Session, report_id: int, limit: int = 1000) -> Sequence[AuditEvent]:
    """Audit events of ``report_id`` and its outputs and share links, oldest first."""
    base = report_resource(report_id)
    return session.scalars(
        select(AuditEvent)
        .where(or_(AuditEvent.resource == base, AuditEvent.resource.like(f"{base}/%")))
        .order_by(AuditEvent.id)
        .limit(limit)
    ).all()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
