"""SLA flags and escalation of overdue tasks (DESIGN.md, step 5).

- *Near due*: an open task with less than ``near_due_fraction`` of its SLA left is flagged
  ``near_due`` once (an event in its history).
- *Overdue*: an open task past its due time is escalated: ``escalation_level`` + 1,
  ``escalated_at`` and the ``overdue`` flag are set, and, if nobody is reading it yet
  (SCHEDULED), it moves on — to its routing rule's escalation pool (least-loaded eligible
  member) or else to the next eligible reader of its pool or site (not the one it had).
  A task IN PROGRESS keeps its reader. Every escalation is an event, and the optional hook
  ``on_escalated(session, task, escalation)`` runs in the same transaction (the delivery
  package records its notification there, so it exists exactly when the escalation does;
  a hook that raises rolls the batch back and it is retried at the next pass).
  A task still overdue ``escalation_repeat`` after its last escalation is escalated again.

Several API processes may run these at once: each pass selects its rows with ``FOR UPDATE
SKIP LOCKED`` (PostgreSQL: a worker skips the rows another is working on, and a row changed
by a committed pass no longer matches), and SQLite writer sessions run one at a time
(``BEGIN IMMEDIATE``), so each overdue task is escalated exactly once per period.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from telerad.storage import ReadingTask
from telerad.worklist.directory import load_readers, load_rules, note_assignment
from telerad.worklist.routing import Reader, least_loaded, pool_routing
from telerad.worklist.sla import Priority, WorklistPolicy
from telerad.worklist.states import OPEN_STATES, ProcedureStepState
from telerad.worklist.tasks import SYSTEM_ACTOR, add_event

logger = logging.getLogger(__name__)
_OPEN = [s.value for s in OPEN_STATES]


@dataclass(frozen=True, slots=True)
class Escalation:
    """One escalation of an overdue task."""

    task_id: int
    study_uid: str
    level: int
    state: str
    from_user_id: int | None
    to_user_id: int | None
    pool_id: int | None
    reason: str


#: Called inside the escalating transaction; must not commit.
EscalationHook = Callable[[Session, ReadingTask, Escalation], None]


def flag_near_due(session: Session, policy: WorklistPolicy, now: datetime) -> list[int]:
    """Flag open tasks that are near due (not yet flagged); returns their ids."""
    flagged: list[int] = []
    for priority in Priority:
        limit = now + policy.sla[priority] * policy.near_due_fraction
        query = (
            select(ReadingTask)
            .where(ReadingTask.state.in_(_OPEN), ReadingTask.sla_flag.is_(None))
            .where(ReadingTask.priority == priority.value)
            .where(ReadingTask.due_at > now, ReadingTask.due_at <= limit)
            .order_by(ReadingTask.due_at)
            .limit(policy.batch)
            .with_for_update(skip_locked=True)
        )
        for task in session.scalars(query).all():
            task.sla_flag = "near_due"
            add_event(session, task, SYSTEM_ACTOR, "near-due", f"due {task.due_at}", now)
            flagged.append(task.id)
    session.flush()
    return flagged


def overdue_query(policy: WorklistPolicy, now: datetime) -> object:
    """Open tasks past due that are not escalated yet (or due for a repeated escalation)."""
    again = (
        ReadingTask.escalated_at <= now - policy.escalation_repeat
        if policy.escalation_repeat
        else None
    )
    fresh = ReadingTask.escalated_at.is_(None)
    return and_(
        ReadingTask.state.in_(_OPEN),
        ReadingTask.due_at <= now,
        or_(fresh, again) if again is not None else fresh,
    )


def escalate_overdue(
    session: Session,
    policy: WorklistPolicy,
    now: datetime,
    on_escalated: EscalationHook | None = None,
) -> list[Escalation]:
    """Escalate one batch of overdue tasks (rows locked by another worker are skipped)."""
    query = (
        select(ReadingTask)
        .where(overdue_query(policy, now))  # type: ignore[arg-type]
        .order_by(ReadingTask.due_at, ReadingTask.id)
        .limit(policy.batch)
        .with_for_update(skip_locked=True)
    )
    tasks = session.scalars(query).all()
    if not tasks:
        return []
    readers = load_readers(session)
    escalation_pools = {r.id: r.escalation_pool_id for r in load_rules(session)}
    done = []
    for task in tasks:
        target = escalation_pools.get(task.routing_rule_id) if task.routing_rule_id else None
        escalation = _escalate(session, task, readers, target, policy, now)
        if on_escalated is not None:
            on_escalated(session, task, escalation)
        done.append(escalation)
    session.flush()
    # reader profiles last and in id order: two workers never lock them in opposite orders
    moved = {e.to_user_id for e in done if e.to_user_id not in (None, e.from_user_id)}
    for user_id in sorted(u for u in moved if u is not None):
        note_assignment(session, user_id, now)
    return done


def _escalate(
    session: Session,
    task: ReadingTask,
    readers: Sequence[Reader],
    escalation_pool: int | None,
    policy: WorklistPolicy,
    now: datetime,
) -> Escalation:
    previous = task.assigned_user_id
    task.escalation_level += 1
    task.escalated_at = now
    task.sla_flag = "overdue"
    task.updated_at = now
    reason = "in progress: reader keeps it"
    if task.state == ProcedureStepState.SCHEDULED:
        reason = _move_on(task, readers, escalation_pool, policy, now)
    add_event(
        session, task, SYSTEM_ACTOR, "escalated",
        f"level {task.escalation_level}: {reason}; user {previous} → {task.assigned_user_id}",
        now,
    )  # fmt: skip
    logger.info("task %d escalated to level %d (%s)", task.id, task.escalation_level, reason)
    return Escalation(
        task.id, task.study_uid, task.escalation_level, task.state, previous,
        task.assigned_user_id, task.pool_id, reason,
    )  # fmt: skip


def _move_on(
    task: ReadingTask,
    readers: Sequence[Reader],
    escalation_pool: int | None,
    policy: WorklistPolicy,
    now: datetime,
) -> str:
    """Reassign a SCHEDULED overdue task; returns what happened."""
    exclude = [task.assigned_user_id] if task.assigned_user_id is not None else []
    if escalation_pool is not None:
        routing = pool_routing(
            task.routing_rule_id, escalation_pool, task.site_id, readers, now,
            policy.auto_assign, exclude,
        )  # fmt: skip
        task.pool_id, task.assigned_user_id = routing.pool_id, routing.assigned_user_id
        return f"moved to escalation pool {escalation_pool}"
    candidates = [r for r in readers if task.pool_id is None or task.pool_id in r.pool_ids]
    chosen = least_loaded(candidates, task.site_id, now, exclude)
    if chosen is None:
        return "no other eligible reader; assignment kept"
    task.assigned_user_id = chosen.user_id
    return "reassigned to the next reader"
