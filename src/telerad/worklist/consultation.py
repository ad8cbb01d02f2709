"""The consultation thread of a study: the county asks, the radiologist asks back.

Both sides read the whole thread. The county side (the site's radiographers, the referrer named
on the order) posts the clinical question, history, comments and answers; the reading side
(radiologists who may read the site, admins) posts questions, requests for more images,
comments and answers. Each post notifies the other side (:mod:`telerad.worklist.notifications`):
a county post the radiologist holding or assigned the study's task (else every reader of the
site), a reading post the site (inbox and webhook) and the referrer.

Errors: :class:`ConsultationError` → :class:`ThreadNotFound`, :class:`InvalidMessage`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from telerad.storage import ConsultationMessage
from telerad.worklist.accounts import Principal, Role
from telerad.worklist.delivery import (
    county_recipients,
    is_referrer_of,
    reading_recipients,
    study_site_id,
    user_id_of,
)
from telerad.worklist.notifications import NotificationEvent, enqueue

#: Longest message body, in characters.
MAX_MESSAGE_CHARS = 10_000


class Side(enum.StrEnum):
    """Which end of the consultation a caller is on."""

    COUNTY = "county"
    READING = "reading"


class MessageKind(enum.StrEnum):
    """What a message is."""

    CLINICAL_QUESTION = "clinical-question"
    HISTORY = "history"
    QUESTION = "question"
    REQUEST_MORE_IMAGES = "request-more-images"
    COMMENT = "comment"
    ANSWER = "answer"


#: The kinds each side may post.
KINDS_BY_SIDE: dict[Side, frozenset[MessageKind]] = {
    Side.COUNTY: frozenset(
        {
            MessageKind.CLINICAL_QUESTION,
            MessageKind.HISTORY,
            MessageKind.COMMENT,
            MessageKind.ANSWER,
        }
    ),
    Side.READING: frozenset(
        {
            MessageKind.QUESTION,
            MessageKind.REQUEST_MORE_IMAGES,
            MessageKind.COMMENT,
            MessageKind.ANSWER,
        }
    ),
}


class ConsultationError(Exception):
    """Base class of consultation errors."""


class ThreadNotFound(ConsultationError):
    """No such study, or the caller is on neither side of it (the two look the same)."""


class InvalidMessage(ConsultationError):
    """A message of an unknown kind, a kind the caller's side may not post, or a bad body."""


@dataclass(frozen=True, slots=True)
class ThreadAccess:
    """A caller's standing in a study's thread."""

    study_uid: str
    site_id: int
    side: Side


def side_of(principal: Principal, site_id: int, *, is_referrer: bool) -> Side | None:
    """The side ``principal`` is on for a study of ``site_id``, or ``None`` (pure rule)."""
    if principal.is_site_token:
        return None
    if principal.role == Role.ADMIN:
        return Side.READING
    if principal.role == Role.RADIOLOGIST:
        return Side.READING if site_id in principal.reading_site_ids else None
    if principal.role == Role.RADIOGRAPHER:
        return Side.COUNTY if principal.site_id == site_id else None
    if principal.role == Role.REFERRER:
        return Side.COUNTY if is_referrer and principal.site_id == site_id else None
    return None


def check_message(side: Side, kind: str, body: str) -> MessageKind:
    """The validated kind; :class:`InvalidMessage` if ``side`` may not post it (pure rule)."""
    try:
        parsed = MessageKind(kind)
    except ValueError:
        raise InvalidMessage(f"unknown message kind {kind[:40]!r}") from None
    if parsed not in KINDS_BY_SIDE[side]:
        raise InvalidMessage(f"the {side} side may not post a {parsed}")
    if not body.strip():
        raise InvalidMessage("a message needs a body")
    if len(body) > MAX_MESSAGE_CHARS:
        raise InvalidMessage(f"a message has at most {MAX_MESSAGE_CHARS} characters")
    return parsed


def thread_access(session: Session, principal: Principal, study_uid: str) -> ThreadAccess:
    """The caller's standing in ``study_uid``'s thread; :class:`ThreadNotFound` if none."""
    site_id = study_site_id(session, study_uid)
    if site_id is None:
        raise ThreadNotFound("no such study")
    referrer = principal.role == Role.REFERRER and is_referrer_of(session, principal, study_uid)
    side = side_of(principal, site_id, is_referrer=referrer)
    if side is None:
        raise ThreadNotFound("no such study")
    return ThreadAccess(study_uid, site_id, side)


def read_thread(
    session: Session, principal: Principal, study_uid: str
) -> Sequence[ConsultationMessage]:
    """Every message of the study's thread, oldest first."""
    thread_access(session, principal, study_uid)
    return session.scalars(
        select(ConsultationMessage)
        .where(ConsultationMessage.study_uid == study_uid)
        .order_by(ConsultationMessage.id)
    ).all()


def post_message(
    session: Session,
    principal: Principal,
    study_uid: str,
    kind: str,
    body: str,
    now: datetime | None = None,
) -> ConsultationMessage:
    """Add a message to the thread and notify the other side; the caller commits."""
    access = thread_access(session, principal, study_uid)
    parsed = check_message(access.side, kind, body)
    now = now or datetime.now(UTC)
    message = ConsultationMessage(
        study_uid=study_uid,
        site_id=access.site_id,
        author_user_id=user_id_of(session, principal.name),
        author=principal.name,
        author_role=principal.role,
        side=access.side.value,
        kind=parsed.value,
        body=body,
        created_at=now,
    )
    session.add(message)
    session.flush()
    if access.side is Side.COUNTY:
        recipients = reading_recipients(session, study_uid)
    else:
        recipients = county_recipients(session, study_uid)
    payload = {
        "study_uid": study_uid,
        "message_id": message.id,
        "kind": parsed.value,
        "side": access.side.value,
        "author": principal.name,
        "links": {"thread": f"/api/studies/{study_uid}/thread"},
    }
    enqueue(
        session, NotificationEvent.CONSULTATION, recipients, payload, study_uid=study_uid, now=now
    )
    return message
