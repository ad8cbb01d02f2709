"""SLA flags and escalation, with workers sharing one database (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from telerad.storage import (
    Archive,
    ReadingPool,
    ReadingPoolMember,
    ReadingTask,
    RoutingRule,
    TaskEvent,
    create_catalog_engine,
    session_factory,
)
from telerad.worklist import Escalation, WorklistLoop, claim_task
from tests.worklist.conftest import World, make_world

TASKS = 16


def escalation_events(world: World) -> Counter[int]:
    with session_factory(world.engine)() as session:
        query = select(TaskEvent.task_id).where(TaskEvent.action == "escalated")
        return Counter(session.scalars(query))


def test_two_workers_escalate_each_overdue_task_exactly_once(
    archive: Archive, database_url: str
) -> None:
    world = make_world(archive, sweep_batch=3)
    tasks = [world.take_in(world.complete_study("county1")) for _ in range(TASKS)]
    now = datetime.now(UTC) + timedelta(days=2)  # every task is past its 24 h SLA
    hooked: list[tuple[str, int]] = []

    def worker(name: str, report: list[Escalation], barrier: threading.Barrier) -> None:
        engine = create_catalog_engine(database_url, pool_size=2)  # a process of its own

        def on_escalated(session: Session, task: ReadingTask, escalation: Escalation) -> None:
            time.sleep(0.02)  # hold the rows a while, so the other worker must skip them
            hooked.append((name, task.id))

        loop = WorklistLoop(engine, world.policy, on_escalated=on_escalated)
        barrier.wait()
        try:
            while True:
                done = loop.run_once(now)
                assert not done.errors, done.errors
                report.extend(done.escalated)
                if not done.escalated:
                    return
        finally:
            engine.dispose()

    reports: dict[str, list[Escalation]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=worker, args=(n, r, barrier)) for n, r in reports.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    escalated = [e.task_id for r in reports.values() for e in r]
    assert sorted(escalated) == sorted(tasks)  # every task once, none twice
    assert escalation_events(world) == Counter({task: 1 for task in tasks})
    assert sorted(task for _, task in hooked) == sorted(tasks)
    assert {world.task(t).escalation_level for t in tasks} == {1}
    if database_url.startswith("postgresql"):  # SKIP LOCKED: both did part of the work
        assert reports["a"] and reports["b"], {k: len(v) for k, v in reports.items()}


def test_near_due_tasks_are_flagged_once(world: World) -> None:
    task_id = world.take_in(world.complete_study())
    due = world.task(task_id).due_at.replace(tzinfo=UTC)
    loop = WorklistLoop(world.engine, world.policy)
    near = due - timedelta(hours=24) * world.policy.near_due_fraction

    assert loop.run_once(near - timedelta(minutes=1)).near_due == []
    assert loop.run_once(near + timedelta(minutes=1)).near_due == [task_id]
    assert loop.run_once(near + timedelta(minutes=2)).near_due == []
    assert world.task(task_id).sla_flag == "near_due"


def test_an_overdue_task_moves_to_the_next_reader(world: World) -> None:
    task_id = world.take_in(world.complete_study())
    assert world.task(task_id).assigned_user_id == world.users["rad1"]

    report = WorklistLoop(world.engine, world.policy).run_once(datetime.now(UTC) + timedelta(2))

    [escalation] = report.escalated
    assert (escalation.from_user_id, escalation.to_user_id) == (
        world.users["rad1"], world.users["rad3"],
    )  # fmt: skip
    task = world.task(task_id)
    assert (task.sla_flag, task.escalation_level) == ("overdue", 1)


def test_an_overdue_task_goes_to_its_rules_escalation_pool(world: World) -> None:
    with world.writer() as session, session.begin():
        chest, senior = ReadingPool(name="chest"), ReadingPool(name="senior")
        session.add_all([chest, senior])
        session.flush()
        session.add(ReadingPoolMember(pool_id=chest.id, user_id=world.users["rad1"]))
        session.add(ReadingPoolMember(pool_id=senior.id, user_id=world.users["rad3"]))
        session.add(RoutingRule(position=1, body_part="CHEST", pool_id=chest.id,
                                escalation_pool_id=senior.id))  # fmt: skip
        senior_id = senior.id
    task_id = world.take_in(world.complete_study())

    WorklistLoop(world.engine, world.policy).run_once(datetime.now(UTC) + timedelta(days=2))

    task = world.task(task_id)
    assert (task.pool_id, task.assigned_user_id) == (senior_id, world.users["rad3"])


def test_a_task_in_progress_keeps_its_reader_and_escalates_again_later(world: World) -> None:
    task_id = world.take_in(world.complete_study())
    with world.writer() as session, session.begin():
        claim_task(session, task_id, world.user("rad1"), lease=timedelta(days=9))
    loop = WorklistLoop(world.engine, world.policy)
    overdue = datetime.now(UTC) + timedelta(days=2)

    first = loop.run_once(overdue).escalated
    soon = loop.run_once(overdue + timedelta(minutes=59)).escalated
    later = loop.run_once(overdue + timedelta(minutes=61)).escalated

    assert [e.level for e in first] == [1] and soon == [] and [e.level for e in later] == [2]
    task = world.task(task_id)
    assert (task.state, task.claimed_by_user_id) == ("IN PROGRESS", world.users["rad1"])


def test_a_failing_hook_rolls_the_escalation_back_for_the_next_pass(world: World) -> None:
    task_id = world.take_in(world.complete_study())
    calls = []

    def flaky(session: Session, task: ReadingTask, escalation: Escalation) -> None:
        calls.append(task.id)
        if len(calls) == 1:
            raise RuntimeError("notification channel down")

    loop = WorklistLoop(world.engine, world.policy, on_escalated=flaky)
    overdue = datetime.now(UTC) + timedelta(days=2)

    failed = loop.run_once(overdue)
    assert (
        failed.errors == ["escalation: RuntimeError"] and world.task(task_id).escalated_at is None
    )
    retried = loop.run_once(overdue)

    assert [e.task_id for e in retried.escalated] == [task_id]
    assert escalation_events(world) == Counter({task_id: 1})


def test_the_loop_thread_starts_and_stops(world: World) -> None:
    study = world.complete_study()
    loop = WorklistLoop(world.engine, world.policy, interval=0.05)
    loop.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with session_factory(world.engine)() as session:
                found = session.scalar(select(ReadingTask.id).where(ReadingTask.study_uid == study))
            if found:
                break
            time.sleep(0.05)
    finally:
        loop.stop()
    assert found and not loop.running


@pytest.mark.parametrize("repeat", [0])
def test_without_repeat_an_overdue_task_escalates_once(archive: Archive, repeat: int) -> None:
    world = make_world(archive, escalation_repeat_minutes=repeat)
    world.take_in(world.complete_study())
    loop = WorklistLoop(world.engine, world.policy)
    overdue = datetime.now(UTC) + timedelta(days=2)

    assert len(loop.run_once(overdue).escalated) == 1
    assert loop.run_once(overdue + timedelta(days=5)).escalated == []


def test_the_default_hook_tells_the_new_and_the_previous_reader(world: World) -> None:
    """Escalation 'notifies per rule': with delivery's hook, the reader the overdue task goes
    to and the one it was taken from each get an inbox row, committed with the escalation;
    the payload names the task and study, never the patient."""
    import json

    from telerad.storage import Notification
    from telerad.worklist import notify_task_escalated

    task_id = world.take_in(world.complete_study())
    loop = WorklistLoop(world.engine, world.policy, on_escalated=notify_task_escalated)
    [escalation] = loop.run_once(datetime.now(UTC) + timedelta(2)).escalated
    with session_factory(world.engine)() as session:
        rows = session.scalars(
            select(Notification).where(Notification.event == "task-escalated")
        ).all()
    assert sorted(r.recipient_user_id for r in rows) == sorted(
        [world.users["rad1"], world.users["rad3"]]
    )
    assert {r.channel for r in rows} == {"inbox"}
    payload = json.loads(rows[0].payload)
    assert (payload["task_id"], payload["level"]) == (task_id, escalation.level)
    assert "patient" not in rows[0].payload.lower()
