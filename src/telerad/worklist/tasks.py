"""Reading tasks in the database: who sees which, the worklist query, task views and events.

Visibility (DESIGN.md, security model) — a task outside it looks exactly like a missing one:

============ =====================================================================
admin        every task
radiologist  tasks of the sites he reads for that are assigned to him, claimed by him,
             in one of his pools, or in no pool and assigned to nobody
radiographer his site's tasks, read-only (a site's gateway likewise)
referrer     none (he gets reports, not tasks)
============ =====================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, false, func, or_, select, true
from sqlalchemy.orm import Session, aliased

from telerad.storage import (
    Patient,
    ReadingPool,
    ReadingPoolMember,
    ReadingTask,
    Site,
    Study,
    TaskEvent,
    User,
)
from telerad.worklist.accounts import Principal, Role, principal_for_user
from telerad.worklist.errors import InvalidWorklistInput, TaskNotFound, TaskPermissionDenied
from telerad.worklist.sla import RANK, Priority, parse_priority
from telerad.worklist.states import OPEN_STATES, ProcedureStepState

MAX_PAGE = 1000
SYSTEM = "telerad"


@dataclass(frozen=True, slots=True)
class Actor:
    """Whoever acts on tasks: a user (with his reading sites and pools) or the system."""

    user_id: int | None
    name: str
    role: str
    site_id: int | None = None
    reading_site_ids: frozenset[int] = frozenset()
    pool_ids: frozenset[int] = frozenset()

    @property
    def is_admin(self) -> bool:
        """Administrators may see and manage every task."""
        return self.role == Role.ADMIN

    @property
    def is_reader(self) -> bool:
        """Radiologists claim and complete tasks."""
        return self.role == Role.RADIOLOGIST and self.user_id is not None


SYSTEM_ACTOR = Actor(None, SYSTEM, "system")


def actor_for(session: Session, who: Principal | User | Actor) -> Actor:
    """The actor for a principal (an API caller), a user row, or an actor already."""
    if isinstance(who, Actor):
        return who
    if isinstance(who, User):
        user: User | None = who
        principal = principal_for_user(session, who)
    else:
        principal = who
        user = None
        if not who.is_site_token:
            user = session.scalar(select(User).where(User.username == who.name))
    if user is None:
        return Actor(None, principal.name, principal.role, principal.site_id)
    pools = frozenset(
        session.scalars(
            select(ReadingPoolMember.pool_id).where(ReadingPoolMember.user_id == user.id)
        )
    )
    return Actor(user.id, user.username, user.role, user.site_id, principal.reading_site_ids, pools)


def visible_to(actor: Actor) -> ColumnElement[bool]:
    """The SQL condition selecting the tasks ``actor`` may see."""
    task = ReadingTask
    if actor.is_admin or actor.role == "system":
        return true()
    if actor.role == Role.RADIOLOGIST and actor.user_id is not None:
        return and_(
            task.site_id.in_(sorted(actor.reading_site_ids)),
            or_(
                task.assigned_user_id == actor.user_id,
                task.claimed_by_user_id == actor.user_id,
                task.pool_id.in_(sorted(actor.pool_ids)),
                and_(task.assigned_user_id.is_(None), task.pool_id.is_(None)),
            ),
        )
    if actor.role in (Role.RADIOGRAPHER, "gateway") and actor.site_id is not None:
        return task.site_id == actor.site_id
    return false()


def visible_task(
    session: Session, task_id: int, actor: Actor, *, lock: bool = False
) -> ReadingTask:
    """The task ``task_id`` if ``actor`` may see it; :class:`TaskNotFound` otherwise."""
    query = select(ReadingTask).where(ReadingTask.id == task_id, visible_to(actor))
    task = session.scalar(query.with_for_update() if lock else query)
    if task is None:
        raise TaskNotFound(f"no task {task_id}")
    return task


def task_by_workitem(session: Session, workitem_uid: str, actor: Actor) -> ReadingTask:
    """The task whose UPS SOP Instance UID is ``workitem_uid``, if ``actor`` may see it."""
    query = select(ReadingTask).where(ReadingTask.workitem_uid == workitem_uid, visible_to(actor))
    task = session.scalar(query)
    if task is None:
        raise TaskNotFound("no such workitem")
    return task


def require_reader(actor: Actor) -> None:
    """Only radiologists claim, release and complete; others get :class:`TaskPermissionDenied`."""
    if not actor.is_reader:
        raise TaskPermissionDenied(f"a {actor.role} may not read tasks")


def require_admin(actor: Actor) -> None:
    """Only administrators assign, cancel and break locks."""
    if not actor.is_admin:
        raise TaskPermissionDenied("only an administrator may do this")


def add_event(
    session: Session, task: ReadingTask, actor: Actor | str, action: str, detail: str = "",
    at: datetime | None = None,
) -> None:  # fmt: skip
    """Append one step to the task's history."""
    name = actor if isinstance(actor, str) else actor.name
    session.add(
        TaskEvent(
            task_id=task.id, at=at or datetime.now(UTC), actor=name, action=action, detail=detail
        )
    )


@dataclass(frozen=True, slots=True)
class WorklistFilter:
    """Filters of the worklist query (all optional)."""

    states: tuple[ProcedureStepState, ...] = ()
    priorities: tuple[Priority, ...] = ()
    site_id: int | None = None
    modality: str | None = None
    mine: bool = False
    pool_id: int | None = None
    overdue: bool = False
    study_uid: str | None = None
    limit: int = 100
    offset: int = 0

    @classmethod
    def parse(
        cls, *, states: Sequence[str] = (), priorities: Sequence[str] = (), limit: int = 100,
        offset: int = 0, **rest: object,
    ) -> WorklistFilter:  # fmt: skip
        """Validate the raw values; :class:`InvalidWorklistInput` for a bad one."""
        try:
            parsed_states = tuple(ProcedureStepState(s.upper()) for s in states)
        except ValueError:
            raise InvalidWorklistInput(
                f"state must be one of {[s.value for s in ProcedureStepState]}"
            ) from None
        if not 1 <= limit <= MAX_PAGE or offset < 0:
            raise InvalidWorklistInput(f"limit is 1..{MAX_PAGE} and offset at least 0")
        return cls(
            states=parsed_states,
            priorities=tuple(parse_priority(p) for p in priorities),
            limit=limit,
            offset=offset,
            **rest,  # type: ignore[arg-type]
        )


@dataclass(frozen=True, slots=True)
class TaskView:
    """A task with the names and the study summary a worklist shows."""

    task: ReadingTask
    site_name: str | None
    assigned_to: str | None
    claimed_by: str | None
    pool_name: str | None
    patient_name: str
    patient_id: str
    study_description: str
    study_date: str
    accession_number: str
    num_instances: int


def worklist_query(actor: Actor, flt: WorklistFilter, now: datetime) -> Select[*tuple[Any, ...]]:
    """Rows of :class:`TaskView` fields the actor may see, most pressing first."""
    assigned, claimer = aliased(User), aliased(User)
    rank = case({p.value: r for p, r in RANK.items()}, value=ReadingTask.priority, else_=9)
    query = (
        select(
            ReadingTask,
            Site.name,
            assigned.username,
            claimer.username,
            ReadingPool.name,
            Patient.patient_name,
            Patient.patient_id,
            Study.study_description,
            Study.study_date,
            Study.accession_number,
            Study.num_instances,
        )
        .outerjoin(Site, Site.id == ReadingTask.site_id)
        .outerjoin(assigned, assigned.id == ReadingTask.assigned_user_id)
        .outerjoin(claimer, claimer.id == ReadingTask.claimed_by_user_id)
        .outerjoin(ReadingPool, ReadingPool.id == ReadingTask.pool_id)
        .outerjoin(Study, Study.study_uid == ReadingTask.study_uid)
        .outerjoin(Patient, Patient.id == Study.patient_pk)
        .where(visible_to(actor), *_conditions(actor, flt, now))
        .order_by(ReadingTask.due_at, rank, ReadingTask.id)
    )
    return query.limit(flt.limit).offset(flt.offset)


def _conditions(actor: Actor, flt: WorklistFilter, now: datetime) -> list[ColumnElement[bool]]:
    task = ReadingTask
    found: list[ColumnElement[bool]] = []
    if flt.states:
        found.append(task.state.in_([s.value for s in flt.states]))
    if flt.priorities:
        found.append(task.priority.in_([p.value for p in flt.priorities]))
    if flt.site_id is not None:
        found.append(task.site_id == flt.site_id)
    if flt.modality:
        found.append(func.upper(task.modality).contains(flt.modality.upper(), autoescape=True))
    if flt.mine:
        mine = or_(task.assigned_user_id == actor.user_id, task.claimed_by_user_id == actor.user_id)
        found.append(mine if actor.user_id is not None else false())
    if flt.pool_id is not None:
        found.append(task.pool_id == flt.pool_id)
    if flt.overdue:
        found += [task.due_at <= now, task.state.in_([s.value for s in OPEN_STATES])]
    if flt.study_uid:
        found.append(task.study_uid == flt.study_uid)
    return found


def list_worklist(
    session: Session, actor: Actor, flt: WorklistFilter, now: datetime | None = None
) -> list[TaskView]:
    """The actor's worklist: visible tasks matching ``flt``, by due time then priority."""
    rows = session.execute(worklist_query(actor, flt, now or datetime.now(UTC))).all()
    return [_view(row) for row in rows]


def task_view(session: Session, task_id: int, actor: Actor) -> TaskView:
    """One visible task as a view; :class:`TaskNotFound` otherwise."""
    query = worklist_query(actor, WorklistFilter(limit=1), datetime.now(UTC))
    row = session.execute(query.where(ReadingTask.id == task_id)).first()
    if row is None:
        raise TaskNotFound(f"no task {task_id}")
    return _view(row)


def _view(row: Sequence[object]) -> TaskView:
    task, site, assigned, claimer, pool, name, pid, desc, date, accession, count = row
    return TaskView(
        task=task,  # type: ignore[arg-type]
        site_name=site,  # type: ignore[arg-type]
        assigned_to=assigned,  # type: ignore[arg-type]
        claimed_by=claimer,  # type: ignore[arg-type]
        pool_name=pool,  # type: ignore[arg-type]
        patient_name=str(name or ""),
        patient_id=str(pid or ""),
        study_description=str(desc or ""),
        study_date=str(date or ""),
        accession_number=str(accession or ""),
        num_instances=int(count or 0),  # type: ignore[call-overload]
    )


def task_events(session: Session, task: ReadingTask) -> list[TaskEvent]:
    """The task's history, oldest first."""
    query = select(TaskEvent).where(TaskEvent.task_id == task.id).order_by(TaskEvent.id)
    return list(session.scalars(query))


def aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive timestamps; every timestamp telerad writes is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
