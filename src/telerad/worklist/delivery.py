"""Who is on each side of a study, and what the county and the referrer are told.

The *county side* of a study is its site's radiographers and the referring doctor named
explicitly on the site's order (``reading_requests.referrer_user_id``, never matched from a
free-text Referring Physician's Name). The *reading side* is the radiologists who may read
the site, and admins. Report events go to the county side: the site's inbox and webhook and
the referrer's inbox; a critical finding requires acknowledgement and escalates until it gets
one.

Errors: :class:`DeliveryError` → :class:`InvalidWebhook`.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from telerad.storage import (
    Reader,
    ReaderSite,
    ReadingPoolMember,
    ReadingRequest,
    ReadingTask,
    SiteWebhook,
    Study,
    StudyManifest,
    User,
)
from telerad.worklist.accounts import Principal, Role, site_by_name
from telerad.worklist.escalation import Escalation
from telerad.worklist.notifications import (
    ChannelName,
    NotificationEvent,
    Recipient,
    enqueue,
    site_recipients,
)


class DeliveryError(Exception):
    """Base class of delivery configuration errors."""


class InvalidWebhook(DeliveryError):
    """A webhook URL or secret that cannot be used."""


class ReportEventKind(enum.StrEnum):
    """Report lifecycle events the reports module announces (see :func:`notify_report_event`)."""

    PRELIMINARY = "preliminary"
    FINAL = "final"
    ADDENDUM = "addendum"
    CRITICAL = "critical"


_EVENTS = {
    ReportEventKind.PRELIMINARY: NotificationEvent.REPORT_PRELIMINARY,
    ReportEventKind.FINAL: NotificationEvent.REPORT_FINAL,
    ReportEventKind.ADDENDUM: NotificationEvent.REPORT_ADDENDUM,
    ReportEventKind.CRITICAL: NotificationEvent.CRITICAL_FINDING,
}


def user_id_of(session: Session, username: str) -> int | None:
    """The id of the active user ``username``."""
    return session.scalar(select(User.id).where(User.username == username, User.active.is_(True)))


def referred_study_uids(session: Reader, principal: Principal) -> frozenset[str]:
    """The studies whose order names ``principal`` (a referrer) as the referring doctor."""
    if principal.role != Role.REFERRER or principal.is_site_token:
        return frozenset()
    rows = session.scalars(
        select(ReadingRequest.study_uid)
        .join(User, User.id == ReadingRequest.referrer_user_id)
        .where(User.username == principal.name, User.active.is_(True))
    )
    return frozenset(rows)


def study_referrer_id(session: Session, study_uid: str) -> int | None:
    """The referring doctor (user id) named on the study's order, if any."""
    return session.scalar(
        select(ReadingRequest.referrer_user_id).where(ReadingRequest.study_uid == study_uid)
    )


def study_site_id(session: Session, study_uid: str) -> int | None:
    """The site a study belongs to: from the study, else its order, else its manifest."""
    for column, key in (
        (Study.site_id, Study.study_uid),
        (ReadingRequest.site_id, ReadingRequest.study_uid),
        (StudyManifest.site_id, StudyManifest.study_uid),
    ):
        site_id = session.scalar(select(column).where(key == study_uid))
        if site_id is not None:
            return site_id
    return None


def is_referrer_of(session: Session, principal: Principal, study_uid: str) -> bool:
    """True if ``principal`` is the referrer named on ``study_uid``'s order."""
    return study_uid in referred_study_uids(session, principal)


def county_recipients(session: Session, study_uid: str) -> list[Recipient]:
    """The site's inbox and webhook, and the referrer's inbox."""
    recipients = site_recipients(session, study_site_id(session, study_uid))
    referrer = study_referrer_id(session, study_uid)
    if referrer is not None:
        recipients.append(Recipient(ChannelName.INBOX, user_id=referrer))
    return recipients


def reading_recipients(session: Session, study_uid: str) -> list[Recipient]:
    """Whoever holds or is assigned the study's latest task; else every reader of its site."""
    task = session.scalar(
        select(ReadingTask)
        .where(ReadingTask.study_uid == study_uid)
        .order_by(ReadingTask.study_generation.desc())
        .limit(1)
    )
    holder = task and (task.claimed_by_user_id or task.assigned_user_id)
    if holder:
        return [Recipient(ChannelName.INBOX, user_id=holder)]
    site_id = study_site_id(session, study_uid)
    readers = radiologist_ids_for_site(session, site_id) if site_id is not None else []
    return [Recipient(ChannelName.INBOX, user_id=user_id) for user_id in readers]


def report_links(report_id: int) -> dict[str, str]:
    """Where the report's outputs are, relative to the centre's base URL."""
    base = f"/api/reports/{report_id}"
    return {"report": base, "html": f"{base}.html", "pdf": f"{base}.pdf", "fhir": f"{base}/fhir"}


def notify_report_event(
    session: Session,
    kind: ReportEventKind | str,
    *,
    report_id: int,
    study_uid: str,
    status: str = "",
    version: int | None = None,
    extra: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> str:
    """Queue the notifications of a report event for the county side; returns the event id.

    ``critical`` requires acknowledgement and is re-sent until acknowledged. The caller
    commits, in the transaction that made the change.
    """
    kind = ReportEventKind(kind)
    payload: dict[str, Any] = {
        "study_uid": study_uid,
        "report_id": report_id,
        "report_status": status,
        "links": report_links(report_id),
        **(extra or {}),
    }
    if version is not None:
        payload["report_version"] = version
    return enqueue(
        session,
        _EVENTS[kind],
        county_recipients(session, study_uid),
        payload,
        study_uid=study_uid,
        report_id=report_id,
        requires_ack=kind is ReportEventKind.CRITICAL,
        now=now or datetime.now(UTC),
    )


def set_site_webhook(
    session: Session, site_name: str, url: str, secret: str | None = None
) -> tuple[SiteWebhook, str]:
    """Set (or replace) a site's webhook; returns it and its HMAC key (generated if not given).

    The URL must be absolute ``http``/``https`` without credentials; the key at least 16
    characters.
    """
    check_webhook_url(url)
    if secret is not None and not 16 <= len(secret) <= 256:
        raise InvalidWebhook("a webhook secret has 16 to 256 characters")
    key = secret or secrets.token_urlsafe(32)
    site = site_by_name(session, site_name)
    hook = session.get(SiteWebhook, site.id)
    if hook is None:
        hook = SiteWebhook(site_id=site.id, url=url, secret=key)
        session.add(hook)
    hook.url, hook.secret, hook.updated_at = url, key, datetime.now(UTC)
    session.flush()
    return hook, key


def remove_site_webhook(session: Session, site_name: str) -> bool:
    """Remove a site's webhook; True if it had one."""
    hook = session.get(SiteWebhook, site_by_name(session, site_name).id)
    if hook is None:
        return False
    session.delete(hook)
    return True


def site_webhook(session: Session, site_name: str) -> SiteWebhook | None:
    """A site's webhook, if any."""
    return session.get(SiteWebhook, site_by_name(session, site_name).id)


def check_webhook_url(url: str) -> None:
    """Raise :class:`InvalidWebhook` unless ``url`` is an absolute http(s) URL without
    credentials or fragment."""
    if len(url) > 2048:
        raise InvalidWebhook("webhook URL longer than 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhook(f"invalid webhook URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidWebhook("a webhook URL is absolute http:// or https://")
    if parts.username or parts.password or parts.fragment or port == 0:
        raise InvalidWebhook("a webhook URL carries no credentials or fragment")


def radiologist_ids_for_site(session: Session, site_id: int) -> Sequence[int]:
    """Users who read for ``site_id``."""
    return session.scalars(select(ReaderSite.user_id).where(ReaderSite.site_id == site_id)).all()


def notify_task_escalated(session: Session, task: ReadingTask, escalation: Escalation) -> None:
    """The worklist's escalation hook: tell the reader (or every member of the pool) the
    overdue task now goes to, and the reader it was taken from, in the escalating
    transaction. The payload names the task, study and due time, never the patient."""
    users = {escalation.to_user_id, escalation.from_user_id}
    if escalation.to_user_id is None and escalation.pool_id is not None:
        members = select(ReadingPoolMember.user_id).where(
            ReadingPoolMember.pool_id == escalation.pool_id
        )
        users.update(session.scalars(members))
    recipients = [Recipient(ChannelName.INBOX, user_id=u) for u in sorted(u for u in users if u)]
    if not recipients:
        return
    payload = {
        "task_id": task.id,
        "study_uid": task.study_uid,
        "priority": task.priority,
        "due_at": task.due_at.isoformat() if task.due_at else None,
        "level": escalation.level,
        "reason": escalation.reason,
        "links": {"task": f"/api/worklist/{task.id}"},
    }
    enqueue(
        session, NotificationEvent.TASK_ESCALATED, recipients, payload, study_uid=task.study_uid
    )
