"""Routing rules, eligibility, working hours and load balancing with plain values."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from telerad.worklist import (
    InvalidWorklistInput,
    Reader,
    Rule,
    TaskFacts,
    WorkingHours,
    ineligibility,
    least_loaded,
    parse_working_hours,
    route,
)
from telerad.worklist.routing import rule_priority, working_hours_json

SITE, OTHER = 1, 2
NEURO, CHEST = 10, 11
#: Monday 2026-11-23, 10:00 UTC
MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
CT_HEAD = TaskFacts(SITE, frozenset({"CT"}), "HEAD", "ROUTINE")


def reader(user_id: int, **kwargs: object) -> Reader:
    kwargs.setdefault("site_ids", frozenset({SITE}))
    return Reader(user_id, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rule", "facts", "matches"),
    [
        (Rule(1), CT_HEAD, True),
        (Rule(1, site_id=SITE), CT_HEAD, True),
        (Rule(1, site_id=OTHER), CT_HEAD, False),
        (Rule(1, modality="ct"), CT_HEAD, True),
        (Rule(1, modality="MR"), CT_HEAD, False),
        (Rule(1, modality="SR"), TaskFacts(SITE, frozenset({"CT", "SR"}), "", "ROUTINE"), True),
        (Rule(1, body_part="head"), CT_HEAD, True),
        (Rule(1, body_part="CHEST"), CT_HEAD, False),
        (Rule(1, priority="STAT"), CT_HEAD, False),
        (Rule(1, priority="ROUTINE", site_id=SITE, modality="CT", body_part="HEAD"), CT_HEAD, True),
        (Rule(1, active=False), CT_HEAD, False),
    ],
)
def test_rule_criteria(rule: Rule, facts: TaskFacts, matches: bool) -> None:
    assert rule.matches(facts) is matches


def test_the_first_rule_by_position_wins() -> None:
    rules = [
        Rule(1, position=5, pool_id=CHEST),
        Rule(2, position=1, body_part="HEAD", pool_id=NEURO),
    ]
    readers = [reader(7, pool_ids=frozenset({NEURO})), reader(8, pool_ids=frozenset({CHEST}))]

    routing = route(rules, CT_HEAD, readers, MONDAY_10)

    assert (routing.rule_id, routing.pool_id, routing.assigned_user_id) == (2, NEURO, 7)


def test_a_named_reader_gets_the_task_when_eligible_else_the_pool() -> None:
    rule = Rule(1, assignee_user_id=5, pool_id=NEURO)
    busy = reader(5, open_tasks=3, max_open_tasks=3, pool_ids=frozenset({NEURO}))
    free = reader(6, pool_ids=frozenset({NEURO}))

    assert route([rule], CT_HEAD, [reader(5), free], MONDAY_10).assigned_user_id == 5
    assert route([rule], CT_HEAD, [busy, free], MONDAY_10).assigned_user_id == 6


def test_a_pool_without_eligible_member_keeps_the_task_unassigned_in_the_pool() -> None:
    rule = Rule(1, pool_id=NEURO)
    outsider = reader(5, site_ids=frozenset({OTHER}), pool_ids=frozenset({NEURO}))

    routing = route([rule], CT_HEAD, [outsider, reader(6)], MONDAY_10)

    assert (routing.pool_id, routing.assigned_user_id) == (NEURO, None)


def test_without_rules_the_least_loaded_reader_of_the_site() -> None:
    readers = [reader(1, open_tasks=4), reader(2, open_tasks=1), reader(3, site_ids=frozenset())]
    assert route([], CT_HEAD, readers, MONDAY_10).assigned_user_id == 2
    assert route([], CT_HEAD, readers, MONDAY_10, auto_assign=False).assigned_user_id is None


def test_ties_go_to_the_earliest_last_assignment_then_the_lowest_id() -> None:
    earlier = MONDAY_10 - timedelta(hours=2)
    readers = [
        reader(4, last_assigned_at=MONDAY_10),
        reader(3, last_assigned_at=earlier),
        reader(9, last_assigned_at=earlier.replace(tzinfo=None)),  # SQLite: naive UTC
    ]
    assert least_loaded(readers, SITE, MONDAY_10).user_id == 3  # type: ignore[union-attr]
    assert least_loaded([reader(8), reader(2)], SITE, MONDAY_10).user_id == 2  # type: ignore[union-attr]
    assert least_loaded(readers, SITE, MONDAY_10, exclude=[3, 9]).user_id == 4  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        (reader(1), None),
        (reader(1, active=False), "inactive"),
        (reader(1, site_ids=frozenset({OTHER})), "does not read for the site"),
        (reader(1, open_tasks=2, max_open_tasks=2), "at his cap of open tasks"),
        (reader(1, open_tasks=1, max_open_tasks=2), None),
        (
            reader(1, hours=WorkingHours("UTC", {0: ((time(11), time(12)),)})),
            "outside working hours",
        ),
        (reader(1, hours=WorkingHours("UTC", {0: ((time(9), time(11)),)})), None),
    ],
)
def test_eligibility(who: Reader, reason: str | None) -> None:
    assert ineligibility(who, SITE, MONDAY_10) == reason


def test_no_site_no_reader() -> None:
    assert ineligibility(reader(1), None, MONDAY_10) == "does not read for the site"


@pytest.mark.parametrize(
    ("at", "open_"),
    [
        (datetime(2026, 11, 23, 7, 59, tzinfo=UTC), False),  # Monday 08:59 in Berlin
        (datetime(2026, 11, 23, 8, 0, tzinfo=UTC), True),  # Monday 09:00 in Berlin
        (datetime(2026, 11, 23, 15, 59, tzinfo=UTC), True),
        (datetime(2026, 11, 23, 16, 0, tzinfo=UTC), False),  # 17:00, the end is exclusive
        (datetime(2026, 11, 27, 22, 0, tzinfo=UTC), True),  # Friday 23:00, night shift
        (datetime(2026, 11, 28, 4, 59, tzinfo=UTC), True),  # Saturday 05:59, same shift
        (datetime(2026, 11, 28, 5, 0, tzinfo=UTC), False),  # Saturday 06:00
        (datetime(2026, 11, 29, 10, 0, tzinfo=UTC), False),  # Sunday
    ],
)
def test_working_hours_in_the_readers_time_zone(at: datetime, open_: bool) -> None:
    hours = parse_working_hours(
        "Europe/Berlin", '{"mon": [["09:00", "17:00"]], "fri": [["22:00", "06:00"]]}'
    )
    assert hours.is_open(at) is open_


def test_working_hours_round_trip() -> None:
    raw = {"tue": [["07:30", "12:00"], ["13:00", "16:00"]]}
    assert working_hours_json(parse_working_hours("UTC", raw)) == raw


@pytest.mark.parametrize(
    ("zone", "raw", "message"),
    [
        ("Mars/Olympus", None, "unknown time zone"),
        ("UTC", '{"moon": []}', "unknown weekday"),
        ("UTC", '{"mon": [["8", "25:00"]]}', "invalid time"),
        ("UTC", '{"mon": ["08:00-17:00"]}', "a working range is"),
        ("UTC", '{"mon": "08:00"}', "list of"),
        ("UTC", "[1]", "weekday"),
    ],
)
def test_bad_working_hours(zone: str, raw: str | None, message: str) -> None:
    with pytest.raises(InvalidWorklistInput, match=message):
        parse_working_hours(zone, raw)


def test_a_rule_may_set_the_priority_of_a_study_without_order() -> None:
    rules = [
        Rule(1, body_part="CHEST", set_priority="stat"),
        Rule(2, priority="ROUTINE", set_priority="URGENT"),
    ]
    assert rule_priority(rules, CT_HEAD) == "URGENT"  # rule 2's priority criterion is ignored
    assert rule_priority(rules[:1], CT_HEAD) is None
