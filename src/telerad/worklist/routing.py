"""Routing rules, reader eligibility and load-balanced assignment, pure.

Routing a new task (:func:`route`):

1. the first active rule (lowest position) whose criteria all match the task — site, modality
   (any of the study's modalities), body part, priority; an empty criterion matches anything;
2. the rule names a radiologist: he gets the task if eligible; otherwise the rule's pool
   (if any) is tried;
3. the rule names a pool: the task belongs to the pool and goes to its least-loaded eligible
   member, or stays unassigned in the pool when none is eligible;
4. no rule matches: the least-loaded eligible reader of the site, or nobody (unassigned, seen
   by every reader of the site).

A reader is *eligible* (:func:`ineligibility`) when he is active, may read for the task's site
(``reader_sites``), is within his working hours and below his cap on open tasks. *Least
loaded* means fewest open tasks, then the earliest last assignment (never assigned first),
then the lowest user id, so the choice is deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from telerad.worklist.errors import InvalidWorklistInput

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_EARLIEST = datetime.min


@dataclass(frozen=True, slots=True)
class TaskFacts:
    """What routing looks at: the task's site, modalities, body part and priority."""

    site_id: int | None
    modalities: frozenset[str]
    body_part: str
    priority: str


@dataclass(frozen=True, slots=True)
class Rule:
    """A routing rule as plain values (criteria ``None`` match anything)."""

    id: int
    position: int = 0
    site_id: int | None = None
    modality: str | None = None
    body_part: str | None = None
    priority: str | None = None
    assignee_user_id: int | None = None
    pool_id: int | None = None
    escalation_pool_id: int | None = None
    set_priority: str | None = None
    active: bool = True

    def matches(self, facts: TaskFacts) -> bool:
        """True if every criterion of the rule holds for ``facts``."""
        return (
            self.active
            and (self.site_id is None or self.site_id == facts.site_id)
            and (not self.modality or self.modality.upper() in facts.modalities)
            and (not self.body_part or self.body_part.upper() == facts.body_part.upper())
            and (not self.priority or self.priority.upper() == facts.priority)
        )


@dataclass(frozen=True, slots=True)
class WorkingHours:
    """Weekly working hours in a time zone: weekday (0 = Monday) → (start, end) ranges.

    A range whose end is not after its start runs past midnight into the next day.
    """

    timezone: str = "UTC"
    ranges: Mapping[int, tuple[tuple[time, time], ...]] = field(default_factory=dict)

    def is_open(self, at: datetime) -> bool:
        """True if ``at`` (timezone-aware) falls in a working range."""
        local = at.astimezone(ZoneInfo(self.timezone))
        day, now = local.weekday(), local.time()
        for start, end in self.ranges.get(day, ()):
            if (start < end and start <= now < end) or (end <= start <= now):
                return True
        yesterday = (day - 1) % 7
        return any(end <= start and now < end for start, end in self.ranges.get(yesterday, ()))


def parse_working_hours(timezone: str, raw: str | Mapping[str, object] | None) -> WorkingHours:
    """Working hours from ``{"mon": [["08:00", "17:00"]], ...}`` (JSON text or a mapping).

    Raises :class:`InvalidWorklistInput` for an unknown time zone, weekday or time.
    """
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidWorklistInput(f"unknown time zone {timezone[:64]!r}") from None
    if raw is None:
        return WorkingHours(timezone)
    data = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(data, Mapping):
        raise InvalidWorklistInput("working hours are an object of weekday → ranges")
    ranges: dict[int, tuple[tuple[time, time], ...]] = {}
    for name, spans in data.items():
        if name not in WEEKDAYS:
            raise InvalidWorklistInput(f"unknown weekday {str(name)[:16]!r}; use {WEEKDAYS}")
        ranges[WEEKDAYS.index(name)] = tuple(_span(span) for span in _list(spans))
    return WorkingHours(timezone, ranges)


def working_hours_json(hours: WorkingHours) -> dict[str, list[list[str]]]:
    """The JSON form :func:`parse_working_hours` reads."""
    return {
        WEEKDAYS[day]: [[s.strftime("%H:%M"), e.strftime("%H:%M")] for s, e in spans]
        for day, spans in sorted(hours.ranges.items())
    }


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise InvalidWorklistInput("each weekday has a list of [start, end] ranges")
    return value


def _span(span: object) -> tuple[time, time]:
    if not (isinstance(span, list) and len(span) == 2):
        raise InvalidWorklistInput("a working range is [start, end], e.g. ['08:00', '17:00']")
    return _time(span[0]), _time(span[1])


def _time(value: object) -> time:
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return time.fromisoformat(value)
    except ValueError:
        raise InvalidWorklistInput(f"invalid time {str(value)[:16]!r}; use HH:MM") from None


@dataclass(frozen=True, slots=True)
class Reader:
    """A radiologist as routing sees him."""

    user_id: int
    site_ids: frozenset[int]
    pool_ids: frozenset[int] = frozenset()
    open_tasks: int = 0
    max_open_tasks: int | None = None
    hours: WorkingHours | None = None
    last_assigned_at: datetime | None = None
    active: bool = True


def ineligibility(reader: Reader, site_id: int | None, at: datetime) -> str | None:
    """Why ``reader`` may not get a task of ``site_id`` at ``at`` (``None``: he may)."""
    if not reader.active:
        return "inactive"
    if site_id is None or site_id not in reader.site_ids:
        return "does not read for the site"
    if reader.hours is not None and not reader.hours.is_open(at):
        return "outside working hours"
    if reader.max_open_tasks is not None and reader.open_tasks >= reader.max_open_tasks:
        return "at his cap of open tasks"
    return None


def least_loaded(
    readers: Iterable[Reader], site_id: int | None, at: datetime, exclude: Iterable[int] = ()
) -> Reader | None:
    """The eligible reader with the fewest open tasks, then the earliest last assignment."""
    excluded = set(exclude)
    candidates = [
        r for r in readers if r.user_id not in excluded and ineligibility(r, site_id, at) is None
    ]
    if not candidates:
        return None
    return min(candidates, key=_load_key)


def _load_key(reader: Reader) -> tuple[int, datetime, int]:
    last = reader.last_assigned_at
    if last is None:
        return reader.open_tasks, _EARLIEST, reader.user_id
    if last.tzinfo is not None:  # SQLite hands back naive UTC, PostgreSQL aware
        last = last.astimezone(UTC).replace(tzinfo=None)
    return reader.open_tasks, last, reader.user_id


@dataclass(frozen=True, slots=True)
class Routing:
    """Where a task goes: the rule that matched, the pool, and the reader (if any)."""

    rule_id: int | None
    pool_id: int | None
    assigned_user_id: int | None
    reason: str


def first_match(rules: Sequence[Rule], facts: TaskFacts) -> Rule | None:
    """The first active rule, by position then id, whose criteria match ``facts``."""
    for rule in sorted(rules, key=lambda r: (r.position, r.id)):
        if rule.matches(facts):
            return rule
    return None


def rule_priority(rules: Sequence[Rule], facts: TaskFacts) -> str | None:
    """The priority the first matching rule with ``set_priority`` gives a study without an
    order (rules are matched here without their priority criterion)."""
    for rule in sorted(rules, key=lambda r: (r.position, r.id)):
        if rule.set_priority and replace(rule, priority=None).matches(facts):
            return rule.set_priority.upper()
    return None


def route(
    rules: Sequence[Rule],
    facts: TaskFacts,
    readers: Sequence[Reader],
    at: datetime,
    *,
    auto_assign: bool = True,
) -> Routing:
    """Route a new task (see the module docstring for the order of the steps)."""
    rule = first_match(rules, facts)
    if rule is None:
        chosen = least_loaded(readers, facts.site_id, at) if auto_assign else None
        return Routing(None, None, _id(chosen), "no rule matched")
    if rule.assignee_user_id is not None:
        named = next((r for r in readers if r.user_id == rule.assignee_user_id), None)
        if named is not None and ineligibility(named, facts.site_id, at) is None:
            return Routing(rule.id, rule.pool_id, named.user_id, f"rule {rule.id}: named reader")
    if rule.pool_id is None:
        return Routing(rule.id, None, None, f"rule {rule.id}: named reader not eligible")
    return pool_routing(rule.id, rule.pool_id, facts.site_id, readers, at, auto_assign)


def pool_routing(
    rule_id: int | None,
    pool_id: int,
    site_id: int | None,
    readers: Sequence[Reader],
    at: datetime,
    auto_assign: bool = True,
    exclude: Iterable[int] = (),
) -> Routing:
    """Give a task to ``pool_id`` and its least-loaded eligible member (if any)."""
    members = [r for r in readers if pool_id in r.pool_ids]
    chosen = least_loaded(members, site_id, at, exclude) if auto_assign else None
    return Routing(rule_id, pool_id, _id(chosen), f"pool {pool_id}")


def _id(reader: Reader | None) -> int | None:
    return reader.user_id if reader is not None else None
