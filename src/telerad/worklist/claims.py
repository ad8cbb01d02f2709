"""Claims with leases, release, completion, cancellation and assignment of reading tasks.

Every change of state is one conditional ``UPDATE … WHERE id = ? AND state = <expected>`` (plus
the holder and Transaction UID where the change needs them): of any number of concurrent
claims exactly one matches the row, on PostgreSQL (the row lock makes the others re-check the
condition and find it false) and on SQLite (writer sessions run ``BEGIN IMMEDIATE``, one at a
time). The pure :func:`~telerad.worklist.states.transition` decides first, so a refused change
gets the precise error of PS3.4 Table CC.1.1-2; when a concurrent change wins the race, the
task is read again and the error describes the state it is in now.

A claim holds a *lease* (``settings.worklist.lease_minutes``): the holder renews it while he
reads; :func:`expire_leases` (the background loop) returns tasks whose lease ran out to
SCHEDULED, and a claim of such a task takes it over at once. All functions work inside the
caller's session and transaction (use a writer session: SQLite needs ``BEGIN IMMEDIATE``);
the caller commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import ColumnElement, and_, or_, select, true, update
from sqlalchemy.orm import Session

from telerad.storage import ReaderSite, ReadingPool, ReadingTask, User, is_valid_uid
from telerad.worklist.accounts import Principal, Role
from telerad.worklist.directory import note_assignment
from telerad.worklist.errors import (
    InvalidAssignment,
    InvalidTransition,
    InvalidWorklistInput,
    TaskAlreadyClaimed,
    TaskFinal,
    TaskNotHolder,
    TaskNotInProgress,
)
from telerad.worklist.states import ProcedureStepState, TaskAction, transition
from telerad.worklist.tasks import (
    SYSTEM_ACTOR,
    Actor,
    actor_for,
    add_event,
    aware,
    require_admin,
    require_reader,
    visible_task,
)

S = ProcedureStepState
A = TaskAction
Who = Principal | User | Actor


def new_transaction_uid() -> str:
    """A fresh Transaction UID (0008,1195)."""
    return str(generate_uid())


def claim_task(
    session: Session,
    task_id: int,
    who: Who,
    *,
    lease: timedelta,
    now: datetime | None = None,
    transaction_uid: str | None = None,
) -> ReadingTask:
    """Claim a task for its reader: SCHEDULED (or IN PROGRESS with an expired lease) →
    IN PROGRESS with a Transaction UID and a lease (PS3.4 CC.2.1.2).

    ``transaction_uid`` is the UPS-RS user agent's new UID; ``None`` makes one.

    Raises
    ------
    TaskNotFound, TaskPermissionDenied, TaskAlreadyClaimed, TaskFinal, InvalidWorklistInput
    """
    now = now or datetime.now(UTC)
    actor = actor_for(session, who)
    require_reader(actor)
    if transaction_uid is not None and not is_valid_uid(transaction_uid):
        raise InvalidWorklistInput("the Transaction UID is not a valid UID")
    task = visible_task(session, task_id, actor)
    expired = _lease_expired(task, now)
    transition(S.SCHEDULED if expired else task.state, A.CLAIM, task=_name(task))
    uid = transaction_uid or new_transaction_uid()
    claimable = or_(
        ReadingTask.state == S.SCHEDULED.value,
        and_(ReadingTask.state == S.IN_PROGRESS.value, ReadingTask.lease_expires_at <= now),
    )
    values = {
        "claimed_by_user_id": actor.user_id,
        "claimed_at": now,
        "transaction_uid": uid,
        "lease_expires_at": now + lease,
    }
    changed = _conditional(session, task, S.IN_PROGRESS, claimable, values, now)
    if expired:
        add_event(session, changed, SYSTEM_ACTOR, "lease-expired", "taken over by a claim", now)
    add_event(session, changed, actor, A.CLAIM, f"lease until {_iso(now + lease)}", now)
    return changed


def renew_lease(
    session: Session,
    task_id: int,
    who: Who,
    transaction_uid: str | None,
    *,
    lease: timedelta,
    now: datetime | None = None,
) -> ReadingTask:
    """Extend the holder's lease to ``now + lease`` (also after it ran out, while nobody else
    took the task over)."""
    now = now or datetime.now(UTC)
    actor, task = _holder_task(session, task_id, who, transaction_uid, A.COMPLETE)
    holder = _held_by(actor, transaction_uid or "")
    values = {"lease_expires_at": now + lease}
    changed = _conditional(session, task, S.IN_PROGRESS, holder, values, now)
    add_event(session, changed, actor, "renew", f"lease until {_iso(now + lease)}", now)
    return changed


def release_task(
    session: Session,
    task_id: int,
    who: Who,
    transaction_uid: str | None = None,
    *,
    now: datetime | None = None,
) -> ReadingTask:
    """The holder gives the task back: IN PROGRESS → SCHEDULED (a telerad extension to UPS)."""
    now = now or datetime.now(UTC)
    actor, task = _holder_task(session, task_id, who, transaction_uid, A.RELEASE)
    condition = ReadingTask.claimed_by_user_id == actor.user_id
    changed = _conditional(session, task, S.SCHEDULED, condition, _unclaimed(), now)
    add_event(session, changed, actor, A.RELEASE, "", now)
    return changed


def complete_task(
    session: Session,
    task_id: int,
    who: Who,
    transaction_uid: str | None,
    *,
    now: datetime | None = None,
) -> ReadingTask:
    """The holder completes the task (IN PROGRESS → COMPLETED, PS3.4 Table CC.1.1-2): the
    reports package calls this when the final report is signed.

    Raises
    ------
    TaskNotFound, TaskPermissionDenied, TaskNotInProgress, TaskFinal, TaskNotHolder,
    TransactionUIDError
    """
    now = now or datetime.now(UTC)
    actor, task = _holder_task(session, task_id, who, transaction_uid, A.COMPLETE)
    holder = _held_by(actor, transaction_uid or "")
    values = {"completed_at": now, "lease_expires_at": None}
    changed = _conditional(session, task, S.COMPLETED, holder, values, now)
    add_event(session, changed, actor, A.COMPLETE, "", now)
    return changed


def cancel_task(
    session: Session,
    task_id: int,
    who: Who,
    reason: str,
    *,
    transaction_uid: str | None = None,
    now: datetime | None = None,
    request: bool = True,
) -> ReadingTask:
    """Cancel a task: an administrator at any open state (UPS Request Cancel, honoured at
    once), or its holder with his Transaction UID (Change State to CANCELED; ``request=False``
    asks for this form also from an administrator)."""
    now = now or datetime.now(UTC)
    actor = actor_for(session, who)
    reason = reason.strip()[:1000]
    if actor.is_admin and request:
        task = visible_task(session, task_id, actor)
        transition(task.state, A.REQUEST_CANCEL, task=_name(task))
        condition = ReadingTask.state == task.state
    else:
        actor, task = _holder_task(session, task_id, actor, transaction_uid, A.CANCEL)
        condition = _held_by(actor, transaction_uid or "")
    values = {**_unclaimed(keep_uid=True), "canceled_reason": reason or "canceled"}
    changed = _conditional(session, task, S.CANCELED, condition, values, now)
    add_event(session, changed, actor, A.CANCEL, reason, now)
    return changed


def break_lock(
    session: Session, task_id: int, who: Who, reason: str = "", *, now: datetime | None = None
) -> ReadingTask:
    """An administrator takes a claim away: IN PROGRESS → SCHEDULED (telerad extension)."""
    now = now or datetime.now(UTC)
    actor = actor_for(session, who)
    require_admin(actor)
    task = visible_task(session, task_id, actor)
    transition(task.state, A.BREAK_LOCK, task=_name(task))
    previous = task.claimed_by_user_id
    condition = ReadingTask.transaction_uid == task.transaction_uid
    changed = _conditional(session, task, S.SCHEDULED, condition, _unclaimed(), now)
    add_event(session, changed, actor, A.BREAK_LOCK, f"held by user {previous}; {reason}", now)
    return changed


def assign_task(
    session: Session,
    task_id: int,
    who: Who,
    username: str | None,
    *,
    pool: str | None = None,
    now: datetime | None = None,
) -> ReadingTask:
    """An administrator (re)assigns a SCHEDULED task to a radiologist and/or a pool (``None``
    for both: unassigned, open to every reader of the site). Working hours and caps do not
    bind an administrator; the reader must read for the task's site.

    Raises
    ------
    TaskNotFound, TaskPermissionDenied, TaskAlreadyClaimed, TaskFinal, InvalidAssignment
    """
    now = now or datetime.now(UTC)
    actor = actor_for(session, who)
    require_admin(actor)
    task = visible_task(session, task_id, actor)
    if task.state != S.SCHEDULED:
        transition(task.state, A.CLAIM, task=_name(task))  # raises the precise error
    user_id = _assignee(session, username, task) if username else None
    pool_id = _pool_id(session, pool) if pool else None
    values = {"assigned_user_id": user_id, "pool_id": pool_id}
    condition = ReadingTask.state == S.SCHEDULED.value
    changed = _conditional(session, task, S.SCHEDULED, condition, values, now)
    if user_id is not None:
        note_assignment(session, user_id, now)
    add_event(session, changed, actor, "assign", f"user={username or '-'} pool={pool or '-'}", now)
    return changed


def return_work_of(
    session: Session,
    user_id: int,
    actor: Actor,
    reason: str,
    *,
    site_ids: frozenset[int] | None = None,
    now: datetime | None = None,
) -> list[int]:
    """Hand back a reader's work (he was deactivated, or no longer reads for ``site_ids``):
    the tasks he holds go IN PROGRESS → SCHEDULED as a break-lock would, the SCHEDULED tasks
    assigned to him are unassigned (their pool stays), each with an event naming ``reason``.
    Returns the ids of the tasks changed; one a concurrent change finished first is skipped.
    """
    now = now or datetime.now(UTC)
    in_scope = ReadingTask.site_id.in_(site_ids) if site_ids is not None else true()
    holder, assignee = ReadingTask.claimed_by_user_id, ReadingTask.assigned_user_id
    changed: list[int] = []
    # Held tasks first: one also assigned to him is unassigned by the same update.
    for state, column in ((S.IN_PROGRESS, holder), (S.SCHEDULED, assignee)):
        query = select(ReadingTask).where(
            ReadingTask.state == state.value, column == user_id, in_scope
        )
        for task in session.scalars(query.order_by(ReadingTask.id)).all():
            held = state == S.IN_PROGRESS
            values = _unclaimed() if held else {}
            if task.assigned_user_id == user_id:
                values["assigned_user_id"] = None
            try:
                task = _conditional(session, task, S.SCHEDULED, column == user_id, values, now)
            except InvalidTransition:
                continue
            if held:
                action, detail = A.BREAK_LOCK.value, f"held by user {user_id}; {reason}"
            else:
                action, detail = "assign", f"user=- (was user {user_id}; {reason})"
            add_event(session, task, actor, action, detail, now)
            changed.append(task.id)
    return changed


@dataclass(frozen=True, slots=True)
class Expired:
    """A lease the background loop ended."""

    task_id: int
    holder_user_id: int | None


def expire_leases(session: Session, now: datetime, batch: int = 200) -> list[Expired]:
    """Return IN PROGRESS tasks whose lease ran out to SCHEDULED (one batch; rows another
    worker holds are skipped: ``FOR UPDATE SKIP LOCKED``)."""
    query = (
        select(ReadingTask)
        .where(ReadingTask.state == S.IN_PROGRESS.value, ReadingTask.lease_expires_at <= now)
        .order_by(ReadingTask.lease_expires_at)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    expired: list[Expired] = []
    for task in session.scalars(query).all():
        transition(task.state, A.EXPIRE, task=_name(task))
        expired.append(Expired(task.id, task.claimed_by_user_id))
        holder = task.claimed_by_user_id
        for key, value in {**_unclaimed(), "state": S.SCHEDULED.value, "updated_at": now}.items():
            setattr(task, key, value)
        add_event(session, task, SYSTEM_ACTOR, A.EXPIRE, f"lease of user {holder} ran out", now)
    session.flush()
    return expired


def _holder_task(
    session: Session, task_id: int, who: Who, transaction_uid: str | None, action: TaskAction
) -> tuple[Actor, ReadingTask]:
    """The task and its holder, checked: the transition is allowed, the Transaction UID is the
    one recorded, and the caller holds the claim."""
    actor = actor_for(session, who)
    require_reader(actor)
    task = visible_task(session, task_id, actor)
    if task.state == S.IN_PROGRESS and task.claimed_by_user_id != actor.user_id:
        raise TaskNotHolder(f"{_name(task)} is held by another reader", task.state)
    transition(
        task.state, action, held_uid=task.transaction_uid, given_uid=transaction_uid,
        task=_name(task),
    )  # fmt: skip
    return actor, task


def _held_by(actor: Actor, transaction_uid: str) -> ColumnElement[bool]:
    return and_(
        ReadingTask.claimed_by_user_id == actor.user_id,
        ReadingTask.transaction_uid == transaction_uid,
    )


def _conditional(
    session: Session,
    task: ReadingTask,
    new_state: ProcedureStepState,
    condition: ColumnElement[bool],
    values: dict[str, Any],
    now: datetime,
) -> ReadingTask:
    """Apply the change if the row is still in the state it was read in and satisfies
    ``condition``; else raise the precise error for the state the row is in now."""
    statement = (
        update(ReadingTask)
        .where(ReadingTask.id == task.id, ReadingTask.state == task.state, condition)
        .values(state=new_state.value, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    if session.execute(statement).rowcount != 1:  # type: ignore[attr-defined]
        raise _lost_race(session, task.id)
    return _reload(session, task.id)


def _lost_race(session: Session, task_id: int) -> InvalidTransition:
    """The error for a change that a concurrent one pre-empted."""
    fresh = _reload(session, task_id)
    name = _name(fresh)
    if fresh.state == S.IN_PROGRESS:
        return TaskAlreadyClaimed(f"{name} is already IN PROGRESS (claimed)", fresh.state)
    if fresh.state == S.SCHEDULED:
        return TaskNotInProgress(f"{name} is SCHEDULED now (released or expired)", fresh.state)
    return TaskFinal(f"{name} is {fresh.state} and may no longer be changed", fresh.state)


def _reload(session: Session, task_id: int) -> ReadingTask:
    query = select(ReadingTask).where(ReadingTask.id == task_id)
    task = session.scalar(query.execution_options(populate_existing=True))
    assert task is not None
    return task


def _unclaimed(keep_uid: bool = False) -> dict[str, Any]:
    values: dict[str, Any] = {"claimed_by_user_id": None, "lease_expires_at": None}
    if not keep_uid:
        values |= {"transaction_uid": None, "claimed_at": None}
    return values


def _lease_expired(task: ReadingTask, now: datetime) -> bool:
    expires = aware(task.lease_expires_at)
    return task.state == S.IN_PROGRESS and expires is not None and expires <= now


def _assignee(session: Session, username: str, task: ReadingTask) -> int:
    user = session.scalar(select(User).where(User.username == username, User.active.is_(True)))
    if user is None or user.role != Role.RADIOLOGIST:
        raise InvalidAssignment(f"{username[:64]!r} is not an active radiologist")
    reads = session.get(ReaderSite, (user.id, task.site_id)) if task.site_id else None
    if reads is None:
        raise InvalidAssignment(f"{username} does not read for the task's site")
    return user.id


def _pool_id(session: Session, name: str) -> int:
    pool_id = session.scalar(select(ReadingPool.id).where(ReadingPool.name == name))
    if pool_id is None:
        raise InvalidAssignment(f"no pool {name[:64]!r}")
    return pool_id


def _name(task: ReadingTask) -> str:
    return f"task {task.id}"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds")
