"""Reading requests: the county's order for reading a study (priority, question, referrer).

A radiographer (for his own site) or an administrator creates or updates the order of a study,
before or after the study arrives. The *referring doctor* is named explicitly by username: he
must be an active ``referrer`` account of the order's site (``users.site_id``); only an
administrator may name a referrer of another site (his approval). The delivery of reports to
the referrer relies on this explicit link, never on the free-text Referring Physician's Name.

An order that changes while its study's task is open (SCHEDULED or IN PROGRESS) updates the
task: priority, due time (from the study's completion and the new priority's SLA), clinical
question and body part, with an event in the task's history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from telerad.storage import ReadingRequest, ReadingTask, Site, Study, User, validate_uid
from telerad.worklist.accounts import Role
from telerad.worklist.errors import InvalidWorklistInput, TaskNotFound, TaskPermissionDenied
from telerad.worklist.sla import WorklistPolicy, parse_priority
from telerad.worklist.states import OPEN_STATES
from telerad.worklist.tasks import Actor, add_event, aware

MAX_QUESTION = 4000
MAX_HISTORY = 8000


@dataclass(frozen=True, slots=True)
class OrderFields:
    """What the site says about a study it wants read."""

    priority: str = "ROUTINE"
    clinical_question: str = ""
    history: str = ""
    body_part: str = ""
    accession_number: str = ""
    referrer: str | None = None
    site: str | None = None


def get_reading_request(session: Session, study_uid: str, actor: Actor) -> ReadingRequest:
    """The order of ``study_uid`` if ``actor`` may see it (an admin, the site's radiographers
    and readers, the referrer it names); :class:`TaskNotFound` otherwise."""
    validate_uid(study_uid, "Study Instance UID")
    order = session.scalar(select(ReadingRequest).where(ReadingRequest.study_uid == study_uid))
    if order is None or not _may_see(actor, order):
        raise TaskNotFound("no reading request for this study")
    return order


def put_reading_request(
    session: Session,
    study_uid: str,
    actor: Actor,
    fields: OrderFields,
    policy: WorklistPolicy,
    now: datetime | None = None,
) -> tuple[ReadingRequest, bool]:
    """Create or replace the order of ``study_uid``; returns it and whether it was created.

    Raises
    ------
    InvalidKey, InvalidWorklistInput, TaskPermissionDenied, TaskNotFound
    """
    now = now or datetime.now(UTC)
    validate_uid(study_uid, "Study Instance UID")
    if actor.role not in (Role.ADMIN, Role.RADIOGRAPHER):
        raise TaskPermissionDenied("only a radiographer of the site or an admin orders a reading")
    priority = parse_priority(fields.priority)
    order = session.scalar(
        select(ReadingRequest).where(ReadingRequest.study_uid == study_uid).with_for_update()
    )
    site_id = _order_site(session, study_uid, actor, fields, order)
    created = order is None
    if order is None:
        order = ReadingRequest(study_uid=study_uid, created_at=now, requested_by_user_id=None)
        session.add(order)
    order.site_id = site_id
    order.priority = priority.value
    order.clinical_question = _text(fields.clinical_question, MAX_QUESTION, "clinical question")
    order.history = _text(fields.history, MAX_HISTORY, "history")
    order.body_part = _text(fields.body_part, 64, "body part").upper()
    order.accession_number = _text(fields.accession_number, 64, "accession number")
    order.referrer_user_id = _referrer(session, fields.referrer, site_id, actor)
    order.requested_by_user_id = actor.user_id
    order.updated_at = now
    session.flush()
    _update_open_task(session, order, actor, policy, now)
    return order, created


def _order_site(
    session: Session,
    study_uid: str,
    actor: Actor,
    fields: OrderFields,
    order: ReadingRequest | None,
) -> int | None:
    """The site the order belongs to: the study's, else the existing order's, else the
    radiographer's own (an admin names one); another site's study looks missing."""
    study_site = session.scalar(select(Study.site_id).where(Study.study_uid == study_uid))
    owner = study_site if study_site is not None else (order.site_id if order else None)
    if actor.role == Role.RADIOGRAPHER:
        if owner is not None and owner != actor.site_id:
            raise TaskNotFound("no such study")
        return actor.site_id
    if fields.site:
        named = session.scalar(select(Site.id).where(Site.name == fields.site))
        if named is None:
            raise InvalidWorklistInput(f"no site {fields.site[:64]!r}")
        if owner is not None and named != owner:
            raise InvalidWorklistInput("the study belongs to another site")
        return named
    return owner


def _referrer(
    session: Session, username: str | None, site_id: int | None, actor: Actor
) -> int | None:
    if not username:
        return None
    user = session.scalar(select(User).where(User.username == username, User.active.is_(True)))
    if user is None or user.role != Role.REFERRER:
        raise InvalidWorklistInput(f"{username[:64]!r} is not an active referrer account")
    if user.site_id != site_id and not actor.is_admin:
        raise InvalidWorklistInput(f"referrer {username} does not belong to the order's site")
    return user.id


def _update_open_task(
    session: Session, order: ReadingRequest, actor: Actor, policy: WorklistPolicy, now: datetime
) -> None:
    query = (
        select(ReadingTask)
        .where(ReadingTask.study_uid == order.study_uid)
        .where(ReadingTask.state.in_([s.value for s in OPEN_STATES]))
        .with_for_update()
    )
    for task in session.scalars(query):
        priority = parse_priority(order.priority)
        task.request_id = order.id
        task.priority = priority.value
        task.clinical_question = order.clinical_question
        task.body_part = order.body_part or task.body_part
        base = aware(task.study_completed_at) or aware(task.created_at) or now
        task.due_at = policy.due_at(priority, base)
        task.sla_flag = None
        task.updated_at = now
        add_event(session, task, actor, "order-updated", f"priority={priority}", now)


def _may_see(actor: Actor, order: ReadingRequest) -> bool:
    """Admins; the site's radiographers; its readers; the referrer the order names."""
    site_id = order.site_id
    if actor.is_admin:
        return True
    if actor.role == Role.REFERRER:
        return actor.user_id is not None and order.referrer_user_id == actor.user_id
    if actor.role == Role.RADIOGRAPHER:
        return site_id is not None and site_id == actor.site_id
    if actor.role == Role.RADIOLOGIST:
        return site_id is not None and site_id in actor.reading_site_ids
    return False


def _text(value: str, limit: int, what: str) -> str:
    value = value.strip()
    if len(value) > limit:
        raise InvalidWorklistInput(f"the {what} has at most {limit} characters")
    return value
