"""The consultation thread of a study: ``GET`` and ``POST /api/studies/{study}/thread``.

The county side (the site's radiographers, the referrer named on the order) and the reading
side (radiologists who read the site, admins) both read the whole thread and post to it; each
post notifies the other side. ``POST`` takes ``{"kind": ..., "body": ...}`` with ``kind`` one
of ``clinical-question``, ``history``, ``comment``, ``answer`` (county side) or ``question``,
``request-more-images``, ``comment``, ``answer`` (reading side).

===== ================================================================================
400   a kind the caller's side may not post, an empty or over-long body
404   unknown study, or one the caller is on neither side of (the two look the same)
422   a body that is not the JSON object above
===== ================================================================================
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from telerad.storage import ConsultationMessage, ReadingRequest, record_access, validate_uid
from telerad.viewer_api.deps import AddressDep, PrincipalDep, ServicesDep
from telerad.viewer_api.services import Services
from telerad.worklist import (
    MAX_MESSAGE_CHARS,
    Principal,
    post_message,
    read_thread,
    thread_access,
)

router = APIRouter(tags=["consultation"])


class NewMessage(BaseModel):
    """A message to post."""

    model_config = ConfigDict(extra="forbid")
    kind: str = Field(max_length=40)
    body: str = Field(max_length=MAX_MESSAGE_CHARS)


class Message(BaseModel):
    """A message of the thread."""

    id: int
    kind: str
    side: str
    author: str
    author_role: str
    body: str
    created_at: datetime


class Order(BaseModel):
    """What the site's order says (the thread's starting point)."""

    priority: str
    clinical_question: str
    history: str


class Thread(BaseModel):
    """A study's thread, the caller's side of it, and the site's order if there is one."""

    study_uid: str
    side: str
    order: Order | None
    messages: list[Message]


def _message(row: ConsultationMessage) -> Message:
    return Message(
        id=row.id,
        kind=row.kind,
        side=row.side,
        author=row.author,
        author_role=row.author_role,
        body=row.body,
        created_at=row.created_at,
    )


@router.get("/{study}/thread")
def retrieve_thread(
    study: str,
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    address: AddressDep,
) -> Thread:
    """Every message of the study's thread, oldest first."""
    validate_uid(study, "Study Instance UID in the URL")
    with services.sessions() as session:
        side = thread_access(session, principal, study).side
        messages = [_message(row) for row in read_thread(session, principal, study)]
        row = session.scalar(select(ReadingRequest).where(ReadingRequest.study_uid == study))
        order = row and Order(
            priority=row.priority, clinical_question=row.clinical_question, history=row.history
        )
    _audit(services, principal, address, "thread-read", request, study)
    return Thread(study_uid=study, side=side.value, order=order, messages=messages)


@router.post("/{study}/thread", status_code=201)
def post_to_thread(
    study: str,
    message: NewMessage,
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    address: AddressDep,
) -> Message:
    """Add a message and notify the other side."""
    validate_uid(study, "Study Instance UID in the URL")
    with services.writer.begin() as session:
        row = post_message(session, principal, study, message.kind, message.body)
        _record(session, principal, address, "thread-post", request, study, row.kind)
        return _message(row)


def _audit(
    services: Services,
    principal: Principal,
    address: str,
    action: str,
    request: Request,
    study: str,
) -> None:
    with services.writer.begin() as session:
        _record(session, principal, address, action, request, study)


def _record(
    session: Session,
    principal: Principal,
    address: str,
    action: str,
    request: Request,
    study: str,
    detail: str = "",
) -> None:
    record_access(
        session,
        actor=principal.name,
        actor_role=principal.role,
        action=action,
        resource=request.url.path,
        source_address=address,
        study_uids=[study],
        detail=detail,
    )
