"""Routing inputs from the database: rules and readers as the pure :mod:`routing` values."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from telerad.storage import (
    ReaderProfile,
    ReaderSite,
    ReadingPoolMember,
    ReadingTask,
    RoutingRule,
    User,
)
from telerad.worklist.accounts import Role
from telerad.worklist.routing import Reader, Rule, WorkingHours, parse_working_hours
from telerad.worklist.states import OPEN_STATES


def load_rules(session: Session) -> list[Rule]:
    """Every active routing rule, in order."""
    query = select(RoutingRule).where(RoutingRule.active.is_(True))
    return [rule_value(r) for r in session.scalars(query.order_by(RoutingRule.position))]


def rule_value(row: RoutingRule) -> Rule:
    """The pure form of a rule row."""
    return Rule(
        id=row.id,
        position=row.position,
        site_id=row.site_id,
        modality=row.modality,
        body_part=row.body_part,
        priority=row.priority,
        assignee_user_id=row.assignee_user_id,
        pool_id=row.pool_id,
        escalation_pool_id=row.escalation_pool_id,
        set_priority=row.set_priority,
        active=row.active,
    )


def load_readers(session: Session, user_ids: list[int] | None = None) -> list[Reader]:
    """Every active radiologist (or those of ``user_ids``) with his sites, pools, profile and
    number of open tasks (assigned to him or claimed by him)."""
    query = select(User).where(User.role == Role.RADIOLOGIST.value, User.active.is_(True))
    if user_ids is not None:
        query = query.where(User.id.in_(user_ids))
    users = list(session.scalars(query.order_by(User.id)))
    ids = [u.id for u in users]
    if not ids:
        return []
    sites = _grouped(session, ReaderSite.user_id, ReaderSite.site_id, ids)
    pools = _grouped(session, ReadingPoolMember.user_id, ReadingPoolMember.pool_id, ids)
    profiles = {
        p.user_id: p
        for p in session.scalars(select(ReaderProfile).where(ReaderProfile.user_id.in_(ids)))
    }
    load = open_task_counts(session, ids)
    return [
        _reader(u.id, sites[u.id], pools[u.id], load.get(u.id, 0), profiles.get(u.id))
        for u in users
    ]


def _grouped(session: Session, key: object, value: object, ids: list[int]) -> dict[int, set[int]]:
    found: dict[int, set[int]] = defaultdict(set)
    for user_id, other in session.execute(select(key, value).where(key.in_(ids))):  # type: ignore[attr-defined, call-overload]
        found[user_id].add(other)
    return found


def open_task_counts(session: Session, user_ids: list[int]) -> dict[int, int]:
    """Open (SCHEDULED or IN PROGRESS) tasks per reader: assigned to him or claimed by him."""
    holder = func.coalesce(ReadingTask.claimed_by_user_id, ReadingTask.assigned_user_id)
    query = (
        select(holder, func.count())
        .where(ReadingTask.state.in_([s.value for s in OPEN_STATES]))
        .where(
            or_(
                ReadingTask.claimed_by_user_id.in_(user_ids),
                ReadingTask.assigned_user_id.in_(user_ids),
            )
        )
        .group_by(holder)
    )
    return {user_id: count for user_id, count in session.execute(query) if user_id is not None}


def _reader(
    user_id: int,
    sites: set[int],
    pools: set[int],
    open_tasks: int,
    profile: ReaderProfile | None,
) -> Reader:
    hours: WorkingHours | None = None
    if profile is not None and profile.working_hours:
        hours = parse_working_hours(profile.timezone, profile.working_hours)
    return Reader(
        user_id=user_id,
        site_ids=frozenset(sites),
        pool_ids=frozenset(pools),
        open_tasks=open_tasks,
        max_open_tasks=profile.max_open_tasks if profile else None,
        hours=hours,
        last_assigned_at=profile.last_assigned_at if profile else None,
    )


def note_assignment(session: Session, user_id: int, at: datetime) -> None:
    """Remember when ``user_id`` last got a task (the load-balancing tie-breaker)."""
    profile = session.get(ReaderProfile, user_id)
    if profile is None:
        session.add(ReaderProfile(user_id=user_id, last_assigned_at=at, updated_at=at))
    else:
        profile.last_assigned_at = at
    session.flush()
