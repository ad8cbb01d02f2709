"""Administration of routing: rules, reading pools and reader profiles (names in, rows out).

Rules, pools and profiles are named by site name, username and pool name; unknown names and
bad values raise :class:`InvalidWorklistInput`, missing rows :class:`TaskNotFound`-like
:class:`WorklistItemNotFound`. The caller checks that the actor is an administrator and commits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from telerad.storage import (
    ReaderProfile,
    ReadingPool,
    ReadingPoolMember,
    RoutingRule,
    Site,
    User,
)
from telerad.worklist.accounts import Role
from telerad.worklist.errors import InvalidWorklistInput, TaskNotFound
from telerad.worklist.routing import parse_working_hours, working_hours_json
from telerad.worklist.sla import parse_priority


class WorklistItemNotFound(TaskNotFound):
    """No such rule, pool or reader."""


@dataclass(frozen=True, slots=True)
class RuleFields:
    """A routing rule by names (``None``: any / none)."""

    position: int = 0
    name: str = ""
    active: bool = True
    site: str | None = None
    modality: str | None = None
    body_part: str | None = None
    priority: str | None = None
    assignee: str | None = None
    pool: str | None = None
    escalation_pool: str | None = None
    set_priority: str | None = None


@dataclass(frozen=True, slots=True)
class RuleView:
    """A routing rule with names instead of ids."""

    id: int
    fields: RuleFields


def list_rules(session: Session) -> list[RuleView]:
    """Every rule in routing order."""
    query = select(RoutingRule).order_by(RoutingRule.position, RoutingRule.id)
    return [_rule_view(session, rule) for rule in session.scalars(query)]


def save_rule(session: Session, fields: RuleFields, rule_id: int | None = None) -> RuleView:
    """Create a rule, or replace rule ``rule_id``."""
    rule = RoutingRule() if rule_id is None else _rule(session, rule_id)
    rule.position, rule.name, rule.active = fields.position, fields.name[:64], fields.active
    rule.site_id = _site_id(session, fields.site)
    rule.modality = _upper(fields.modality, 16, "modality")
    rule.body_part = _upper(fields.body_part, 64, "body part")
    rule.priority = parse_priority(fields.priority).value if fields.priority else None
    rule.set_priority = parse_priority(fields.set_priority).value if fields.set_priority else None
    rule.assignee_user_id = _radiologist_id(session, fields.assignee)
    rule.pool_id = _pool_id(session, fields.pool)
    rule.escalation_pool_id = _pool_id(session, fields.escalation_pool)
    if rule_id is None:
        session.add(rule)
    session.flush()
    return _rule_view(session, rule)


def delete_rule(session: Session, rule_id: int) -> None:
    """Remove a rule (tasks it routed keep their assignment)."""
    session.delete(_rule(session, rule_id))
    session.flush()


@dataclass(frozen=True, slots=True)
class PoolView:
    """A pool and its members' usernames."""

    id: int
    name: str
    description: str
    members: tuple[str, ...]


def list_pools(session: Session) -> list[PoolView]:
    """Every pool with its members."""
    pools = session.scalars(select(ReadingPool).order_by(ReadingPool.name))
    return [_pool_view(session, pool) for pool in pools]


def save_pool(
    session: Session, name: str, description: str = "", members: tuple[str, ...] = ()
) -> PoolView:
    """Create pool ``name`` or replace its description and members (radiologists)."""
    if not name.strip() or len(name) > 64:
        raise InvalidWorklistInput("a pool name has 1 to 64 characters")
    pool = session.scalar(select(ReadingPool).where(ReadingPool.name == name))
    if pool is None:
        pool = ReadingPool(name=name)
        session.add(pool)
    pool.description = description[:256]
    session.flush()
    ids = {_radiologist_id(session, username) for username in members}
    session.execute(delete(ReadingPoolMember).where(ReadingPoolMember.pool_id == pool.id))
    session.add_all(ReadingPoolMember(pool_id=pool.id, user_id=uid) for uid in sorted(ids))  # type: ignore[type-var]
    session.flush()
    return _pool_view(session, pool)


def delete_pool(session: Session, name: str) -> None:
    """Remove a pool; its tasks and rules lose the pool (``SET NULL``)."""
    pool = session.scalar(select(ReadingPool).where(ReadingPool.name == name))
    if pool is None:
        raise WorklistItemNotFound(f"no pool {name[:64]!r}")
    session.delete(pool)
    session.flush()


@dataclass(frozen=True, slots=True)
class ProfileView:
    """A reader's profile."""

    username: str
    timezone: str
    working_hours: dict[str, list[list[str]]] | None
    max_open_tasks: int | None
    subspecialties: tuple[str, ...]
    last_assigned_at: datetime | None


def get_reader_profile(session: Session, username: str) -> ProfileView:
    """The profile of radiologist ``username`` (defaults if none was saved)."""
    user_id = _radiologist_id(session, username, missing=WorklistItemNotFound)
    profile = session.get(ReaderProfile, user_id) or ReaderProfile(timezone="UTC")
    return _profile_view(username, profile)


def save_reader_profile(
    session: Session,
    username: str,
    *,
    timezone: str = "UTC",
    working_hours: dict[str, object] | None = None,
    max_open_tasks: int | None = None,
    subspecialties: tuple[str, ...] = (),
) -> ProfileView:
    """Replace the working hours, cap and subspecialties of radiologist ``username``."""
    user_id = _radiologist_id(session, username, missing=WorklistItemNotFound)
    hours = parse_working_hours(timezone, working_hours)
    if max_open_tasks is not None and max_open_tasks < 0:
        raise InvalidWorklistInput("max_open_tasks is at least 0")
    profile = session.get(ReaderProfile, user_id)
    if profile is None:
        profile = ReaderProfile(user_id=user_id)
        session.add(profile)
    profile.timezone = timezone
    profile.working_hours = json.dumps(working_hours_json(hours)) if working_hours else None
    profile.max_open_tasks = max_open_tasks
    profile.subspecialties = ",".join(s.strip().lower() for s in subspecialties if s.strip())[:256]
    profile.updated_at = datetime.now(UTC)
    session.flush()
    return _profile_view(username, profile)


def _profile_view(username: str, profile: ReaderProfile) -> ProfileView:
    hours = json.loads(profile.working_hours) if profile.working_hours else None
    specialties = tuple(s for s in (profile.subspecialties or "").split(",") if s)
    return ProfileView(
        username, profile.timezone or "UTC", hours, profile.max_open_tasks, specialties,
        profile.last_assigned_at,
    )  # fmt: skip


def _rule(session: Session, rule_id: int) -> RoutingRule:
    rule = session.get(RoutingRule, rule_id)
    if rule is None:
        raise WorklistItemNotFound(f"no rule {rule_id}")
    return rule


def _rule_view(session: Session, rule: RoutingRule) -> RuleView:
    def name(model: type[Site] | type[User] | type[ReadingPool], key: int | None) -> str | None:
        if key is None:
            return None
        row = session.get(model, key)
        return getattr(row, "username", None) or getattr(row, "name", None)

    return RuleView(
        rule.id,
        RuleFields(
            position=rule.position, name=rule.name, active=rule.active,
            site=name(Site, rule.site_id), modality=rule.modality, body_part=rule.body_part,
            priority=rule.priority, assignee=name(User, rule.assignee_user_id),
            pool=name(ReadingPool, rule.pool_id),
            escalation_pool=name(ReadingPool, rule.escalation_pool_id),
            set_priority=rule.set_priority,
        ),
    )  # fmt: skip


def _pool_view(session: Session, pool: ReadingPool) -> PoolView:
    members = session.scalars(
        select(User.username)
        .join(ReadingPoolMember, ReadingPoolMember.user_id == User.id)
        .where(ReadingPoolMember.pool_id == pool.id)
        .order_by(User.username)
    )
    return PoolView(pool.id, pool.name, pool.description, tuple(members))


def _site_id(session: Session, name: str | None) -> int | None:
    if not name:
        return None
    site_id = session.scalar(select(Site.id).where(Site.name == name))
    if site_id is None:
        raise InvalidWorklistInput(f"no site {name[:64]!r}")
    return site_id


def _pool_id(session: Session, name: str | None) -> int | None:
    if not name:
        return None
    pool_id = session.scalar(select(ReadingPool.id).where(ReadingPool.name == name))
    if pool_id is None:
        raise InvalidWorklistInput(f"no pool {name[:64]!r}")
    return pool_id


def _radiologist_id(
    session: Session,
    username: str | None,
    missing: type[Exception] = InvalidWorklistInput,
) -> int | None:
    if not username:
        return None
    user = session.scalar(select(User).where(User.username == username))
    if user is None or user.role != Role.RADIOLOGIST:
        raise missing(f"{username[:64]!r} is not a radiologist")
    return user.id


def _upper(value: str | None, limit: int, what: str) -> str | None:
    if not value:
        return None
    if len(value) > limit:
        raise InvalidWorklistInput(f"the {what} has at most {limit} characters")
    return value.strip().upper()
