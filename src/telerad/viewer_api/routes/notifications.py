"""The in-app inbox: ``GET /api/notifications`` and ``POST /api/notifications/{id}/ack``.

A user sees the notifications addressed to him and, if he is a radiographer, those addressed
to his site. Acknowledging a notification that ``requires_ack`` (a critical finding) stops its
escalation for that recipient (the site's webhook copy included); the radiologist sees who
acknowledged when (``GET /api/reports/{id}/notifications``).

===== ================================================================================
404   no such notification in the caller's inbox (foreign ones look the same)
===== ================================================================================
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from telerad.storage import Notification
from telerad.viewer_api.deps import PrincipalDep, ServicesDep
from telerad.worklist import acknowledge, inbox, payload_of, reader_for

router = APIRouter(tags=["notifications"])


def notification_json(row: Notification) -> dict[str, Any]:
    """What a user or the signing radiologist sees of a notification."""
    return {
        "id": row.id,
        "event_id": row.event_id,
        "event": row.event,
        "channel": row.channel,
        "recipient_user_id": row.recipient_user_id,
        "recipient_site_id": row.recipient_site_id,
        "study_uid": row.study_uid,
        "report_id": row.report_id,
        "payload": payload_of(row),
        "requires_ack": row.requires_ack,
        "attempts": row.attempts,
        "escalations": row.escalations,
        "created_at": _iso(row.created_at),
        "delivered_at": _iso(row.delivered_at),
        "notified_at": _iso(row.notified_at),
        "failed_at": _iso(row.failed_at),
        "last_error": row.last_error,
        "acknowledged_at": _iso(row.acknowledged_at),
        "acknowledged_by": row.acknowledged_by,
    }


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat() if value.tzinfo else value.isoformat() + "+00:00"


@router.get("")
def list_notifications(
    services: ServicesDep,
    principal: PrincipalDep,
    unacknowledged: bool = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    """The caller's in-app notifications, newest first (``unacknowledged=true``: only those
    still awaiting his acknowledgement)."""
    with services.sessions() as session:
        reader = reader_for(session, principal.name)
        rows = inbox(session, reader, unacknowledged=unacknowledged, limit=limit)
        return [notification_json(row) for row in rows]


@router.post("/{notification_id}/ack")
def acknowledge_notification(
    notification_id: int, services: ServicesDep, principal: PrincipalDep
) -> list[dict[str, Any]]:
    """Acknowledge a notification (and its copies to the same recipient); idempotent."""
    with services.writer.begin() as session:
        reader = reader_for(session, principal.name)
        rows = acknowledge(session, reader, notification_id)
        return [notification_json(row) for row in rows]
