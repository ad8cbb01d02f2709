"""The reading worklist over HTTP (``/api/worklist``).

=========================== ===============================================================
GET  /api/worklist          the caller's worklist, most pressing first (due time, priority);
                            filters ``state`` (repeatable), ``priority`` (repeatable), ``site``,
                            ``modality``, ``mine``, ``pool``, ``overdue``, ``study``, ``limit``,
                            ``offset``
GET  /api/worklist/{id}     one task with its history
POST /{id}/claim            a radiologist claims it: IN PROGRESS, answer has the Transaction UID
POST /{id}/renew            the holder extends his lease ``{"transaction_uid": …}``
POST /{id}/release          the holder gives it back (SCHEDULED)
POST /{id}/complete         the holder completes it ``{"transaction_uid": …}``
POST /{id}/cancel           an admin (``{"reason": …}``) or the holder (with his UID) cancels
POST /{id}/assign           an admin (re)assigns ``{"user": …, "pool": …}``
POST /{id}/break-lock       an admin takes a claim away
=========================== ===============================================================

Who sees what is :mod:`telerad.worklist.tasks`'s rule; a task outside it is 404. Refused
changes of state are 409 (400 for a missing or wrong Transaction UID, PS3.18 §11.7.3.1), with
the precise reason. Claims, releases, completions, cancellations, assignments and lock breaks
are written to the audit log in the transaction that makes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from telerad.storage import ReadingPool, ReadingTask, Site, record_access
from telerad.viewer_api.deps import AddressDep, PrincipalDep, ServicesDep
from telerad.viewer_api.security import PermissionDenied
from telerad.viewer_api.services import Services
from telerad.worklist import (
    Actor,
    InvalidWorklistInput,
    TaskView,
    WorklistFilter,
    WorklistPolicy,
    actor_for,
    assign_task,
    break_lock,
    cancel_task,
    claim_task,
    complete_task,
    intake_study,
    list_worklist,
    release_task,
    renew_lease,
    task_events,
    task_view,
)

logger = logging.getLogger(__name__)
router = APIRouter(tags=["worklist"])
T = TypeVar("T")


def get_actor(services: ServicesDep, principal: PrincipalDep) -> Actor:
    """The caller as the worklist sees him (user id, reading sites, pools)."""
    with services.sessions() as session:
        return actor_for(session, principal)


ActorDep = Annotated[Actor, Depends(get_actor)]


def require_admin(actor: ActorDep) -> Actor:
    """Administrators only (403 otherwise)."""
    if not actor.is_admin:
        raise PermissionDenied("only an administrator may do this")
    return actor


AdminDep = Annotated[Actor, Depends(require_admin)]


def get_policy(services: ServicesDep) -> WorklistPolicy:
    """SLA and lease rules from the settings."""
    return WorklistPolicy.from_settings(services.settings.worklist)


PolicyDep = Annotated[WorklistPolicy, Depends(get_policy)]


class EventOut(BaseModel):
    """One step of a task's history."""

    at: datetime
    actor: str
    action: str
    detail: str


class TaskOut(BaseModel):
    """A reading task as a worklist row."""

    id: int
    workitem_uid: str
    study_uid: str
    study_generation: int
    follow_up_of: int | None
    state: str
    priority: str
    due_at: datetime
    overdue: bool
    sla_flag: str | None
    escalation_level: int
    site: str | None
    modality: str
    body_part: str
    clinical_question: str
    assigned_to: str | None
    pool: str | None
    claimed_by: str | None
    claimed_at: datetime | None
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    canceled_reason: str | None
    patient_name: str
    patient_id: str
    study_description: str
    study_date: str
    accession_number: str
    num_instances: int


class TaskDetail(TaskOut):
    """A task with its history."""

    events: list[EventOut]


class ClaimOut(TaskOut):
    """The answer to the holder: the task and the Transaction UID he needs later."""

    transaction_uid: str


class TransactionIn(BaseModel):
    """The holder's Transaction UID."""

    model_config = ConfigDict(extra="forbid")
    transaction_uid: str | None = Field(default=None, max_length=64)


class CancelIn(TransactionIn):
    """Why the task is canceled (and, for the holder, his Transaction UID)."""

    reason: str = Field(default="", max_length=1000)


class AssignIn(BaseModel):
    """Whom (radiologist username) and/or which pool the task goes to; both empty: nobody."""

    model_config = ConfigDict(extra="forbid")
    user: str | None = Field(default=None, max_length=64)
    pool: str | None = Field(default=None, max_length=64)


class BreakLockIn(BaseModel):
    """Why the claim is taken away."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=1000)


@router.get("")
def search_worklist(
    services: ServicesDep,
    actor: ActorDep,
    request: Request,
    address: AddressDep,
    state: Annotated[list[str], Query(max_length=4)] = [],  # noqa: B006 - FastAPI's idiom
    priority: Annotated[list[str], Query(max_length=3)] = [],  # noqa: B006
    site: Annotated[str | None, Query(max_length=64)] = None,
    modality: Annotated[str | None, Query(max_length=16)] = None,
    mine: bool = False,
    pool: Annotated[str | None, Query(max_length=64)] = None,
    overdue: bool = False,
    study: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[TaskOut]:
    """The caller's worklist (see the module docstring for the filters)."""
    now = datetime.now(UTC)
    with services.sessions() as session:
        flt = WorklistFilter.parse(
            states=state, priorities=priority, limit=limit, offset=offset,
            site_id=_site_id(session, site), modality=modality, mine=mine,
            pool_id=_pool_id(session, pool), overdue=overdue, study_uid=study,
        )  # fmt: skip
        views = list_worklist(session, actor, flt, now)
    _audit(services, actor, address, "worklist", request, [v.task.study_uid for v in views])
    return [_task_out(view, now) for view in views]


@router.get("/{task_id}")
def retrieve_task(
    task_id: int, services: ServicesDep, actor: ActorDep, request: Request, address: AddressDep
) -> TaskDetail:
    """One task with its history (404 if the caller may not see it)."""
    with services.sessions() as session:
        view = task_view(session, task_id, actor)
        events = [
            EventOut.model_validate(e, from_attributes=True)
            for e in task_events(session, view.task)
        ]
    _audit(services, actor, address, "worklist-task", request, [view.task.study_uid])
    return TaskDetail(**_task_out(view, datetime.now(UTC)).model_dump(), events=events)


@router.post("/{task_id}/claim")
def claim(
    task_id: int, services: ServicesDep, actor: ActorDep, policy: PolicyDep, request: Request,
    address: AddressDep,
) -> ClaimOut:  # fmt: skip
    """Claim the task (IN PROGRESS, a lease of ``settings.worklist.lease_minutes``)."""
    task = _change(
        services, actor, address, request, "task-claim",
        lambda s: claim_task(s, task_id, actor, lease=policy.lease),
    )  # fmt: skip
    return ClaimOut(
        **_out(services, actor, task.id).model_dump(), transaction_uid=task.transaction_uid or ""
    )


@router.post("/{task_id}/renew")
def renew(
    task_id: int, body: TransactionIn, services: ServicesDep, actor: ActorDep,
    policy: PolicyDep, request: Request, address: AddressDep,
) -> TaskOut:  # fmt: skip
    """Extend the holder's lease."""
    task = _change(
        services, actor, address, request, "task-renew",
        lambda s: renew_lease(s, task_id, actor, body.transaction_uid, lease=policy.lease),
    )  # fmt: skip
    return _out(services, actor, task.id)


@router.post("/{task_id}/release")
def release(
    task_id: int, body: TransactionIn, services: ServicesDep, actor: ActorDep, request: Request,
    address: AddressDep,
) -> TaskOut:  # fmt: skip
    """The holder gives the task back (SCHEDULED; the Transaction UID is void)."""
    task = _change(
        services, actor, address, request, "task-release",
        lambda s: release_task(s, task_id, actor, body.transaction_uid),
    )  # fmt: skip
    return _out(services, actor, task.id)


@router.post("/{task_id}/complete")
def complete(
    task_id: int, body: TransactionIn, services: ServicesDep, actor: ActorDep, request: Request,
    address: AddressDep,
) -> TaskOut:  # fmt: skip
    """The holder completes the task (normally done by signing the final report)."""
    task = _change(
        services, actor, address, request, "task-complete",
        lambda s: complete_task(s, task_id, actor, body.transaction_uid),
    )  # fmt: skip
    return _out(services, actor, task.id)


@router.post("/{task_id}/cancel")
def cancel(
    task_id: int, body: CancelIn, services: ServicesDep, actor: ActorDep, request: Request,
    address: AddressDep,
) -> TaskOut:  # fmt: skip
    """An admin cancels (Request Cancel), or the holder with his Transaction UID."""
    task = _change(
        services, actor, address, request, "task-cancel",
        lambda s: cancel_task(s, task_id, actor, body.reason, transaction_uid=body.transaction_uid),
    )  # fmt: skip
    return _out(services, actor, task.id)


@router.post("/{task_id}/assign")
def assign(
    task_id: int, body: AssignIn, services: ServicesDep, actor: AdminDep, request: Request,
    address: AddressDep,
) -> TaskOut:  # fmt: skip
    """An admin (re)assigns a SCHEDULED task to a radiologist and/or a pool."""
    task = _change(
        services, actor, address, request, "task-assign",
        lambda s: assign_task(s, task_id, actor, body.user, pool=body.pool),
        detail=f"user={body.user or '-'} pool={body.pool or '-'}",
    )  # fmt: skip
    return _out(services, actor, task.id)


@router.post("/{task_id}/break-lock")
def take_claim_away(
    task_id: int, body: BreakLockIn, services: ServicesDep, actor: AdminDep, request: Request,
    address: AddressDep,
) -> TaskOut:  # fmt: skip
    """An admin takes the claim away (SCHEDULED)."""
    task = _change(
        services, actor, address, request, "task-break-lock",
        lambda s: break_lock(s, task_id, actor, body.reason), detail=body.reason,
    )  # fmt: skip
    return _out(services, actor, task.id)


def take_in_completed(services: Services, study_uid: str) -> None:
    """Intake of a study that just became complete (the manifest and STOW routes' hook).

    A failure is logged, never raised: the background sweep takes the study in later.
    """
    policy = WorklistPolicy.from_settings(services.settings.worklist)
    try:
        result = intake_study(services.engine, study_uid, policy)
    except Exception:
        logger.exception("intake of study %s failed; the sweep will retry", study_uid)
        return
    if result.created:
        logger.info("study %s: reading task %s", study_uid, result.task_id)


def _change(
    services: Services,
    actor: Actor,
    address: str,
    request: Request,
    action: str,
    work: Callable[[Session], ReadingTask],
    detail: str = "",
) -> ReadingTask:
    """Run ``work`` and write its audit event in one writer transaction."""
    with services.writer.begin() as session:
        task = work(session)
        _record(
            session, actor, address, action, request, [task.study_uid], f"task {task.id} {detail}"
        )
    return task


def _out(services: Services, actor: Actor, task_id: int) -> TaskOut:
    with services.sessions() as session:
        return _task_out(task_view(session, task_id, actor), datetime.now(UTC))


def _task_out(view: TaskView, now: datetime) -> TaskOut:
    task = view.task
    due = _aware(task.due_at)
    return TaskOut(
        id=task.id, workitem_uid=task.workitem_uid, study_uid=task.study_uid,
        study_generation=task.study_generation, follow_up_of=task.follow_up_of_task_id,
        state=task.state, priority=task.priority, due_at=due,
        overdue=due <= now and task.state in ("SCHEDULED", "IN PROGRESS"),
        sla_flag=task.sla_flag, escalation_level=task.escalation_level, site=view.site_name,
        modality=task.modality, body_part=task.body_part,
        clinical_question=task.clinical_question, assigned_to=view.assigned_to,
        pool=view.pool_name, claimed_by=view.claimed_by, claimed_at=_aware(task.claimed_at),
        lease_expires_at=_aware(task.lease_expires_at), created_at=_aware(task.created_at),
        updated_at=_aware(task.updated_at), completed_at=_aware(task.completed_at),
        canceled_reason=task.canceled_reason, patient_name=view.patient_name,
        patient_id=view.patient_id, study_description=view.study_description,
        study_date=view.study_date, accession_number=view.accession_number,
        num_instances=view.num_instances,
    )  # fmt: skip


def _aware(value: T) -> T:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _site_id(session: Session, name: str | None) -> int | None:
    if not name:
        return None
    site_id = session.scalar(select(Site.id).where(Site.name == name))
    if site_id is None:
        raise InvalidWorklistInput(f"no site {name!r}")
    return site_id


def _pool_id(session: Session, name: str | None) -> int | None:
    if not name:
        return None
    pool_id = session.scalar(select(ReadingPool.id).where(ReadingPool.name == name))
    if pool_id is None:
        raise InvalidWorklistInput(f"no pool {name!r}")
    return pool_id


def _audit(
    services: Services, actor: Actor, address: str, action: str, request: Request,
    study_uids: list[str],
) -> None:  # fmt: skip
    with services.writer.begin() as session:
        _record(session, actor, address, action, request, study_uids)


def _record(
    session: Session, actor: Actor, address: str, action: str, request: Request,
    study_uids: list[str], detail: str = "",
) -> None:  # fmt: skip
    record_access(
        session, actor=actor.name, actor_role=actor.role, action=action,
        resource=request.url.path, source_address=address, study_uids=study_uids,
        detail=(detail or str(request.url.query))[:2000],
    )  # fmt: skip
