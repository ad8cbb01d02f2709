"""Claims, leases, release, completion, cancellation and assignment on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from telerad.storage import (
    Archive,
    ReaderSite,
    ReadingPool,
    ReadingTask,
    TaskEvent,
    session_factory,
)
from telerad.worklist import (
    InvalidAssignment,
    InvalidWorklistInput,
    TaskAlreadyClaimed,
    TaskFinal,
    TaskNotFound,
    TaskNotHolder,
    TaskNotInProgress,
    TaskPermissionDenied,
    TransactionUIDError,
    WorklistLoop,
    assign_task,
    break_lock,
    cancel_task,
    claim_task,
    complete_task,
    expire_leases,
    release_task,
    renew_lease,
)
from tests.worklist.conftest import World, make_world

LEASE = timedelta(minutes=30)
CLAIMERS = 50


@pytest.fixture
def world(archive: Archive) -> World:
    """Tasks stay unassigned: every reader of county1 (rad1, rad3) sees and may claim them."""
    return make_world(archive, auto_assign=False)


@pytest.fixture
def task_id(world: World) -> int:
    return world.take_in(world.complete_study("county1"))


def claim(world: World, task_id: int, who: str, now: datetime | None = None) -> ReadingTask:
    with world.writer() as session, session.begin():
        return claim_task(session, task_id, world.user(who), lease=LEASE, now=now)


def test_claim_makes_the_task_in_progress_with_a_transaction_uid_and_a_lease(
    world: World, task_id: int
) -> None:
    now = datetime.now(UTC)
    task = claim(world, task_id, "rad1", now)

    stored = world.task(task_id)
    assert stored.state == "IN PROGRESS"
    assert stored.claimed_by_user_id == world.users["rad1"]
    assert stored.transaction_uid == task.transaction_uid and task.transaction_uid
    expires = stored.lease_expires_at
    assert expires is not None
    assert abs((expires.replace(tzinfo=UTC) - now - LEASE).total_seconds()) < 1


def test_fifty_concurrent_claims_exactly_one_succeeds(world: World, task_id: int) -> None:
    """Each thread its own session (writer: BEGIN IMMEDIATE on SQLite); they start together."""
    readers = ["rad1", "rad3"]
    users = {name: world.user(name) for name in readers}
    barrier = threading.Barrier(CLAIMERS)
    won: list[str] = []
    refused: list[Exception] = []
    other: list[BaseException] = []

    def attempt(i: int) -> None:
        name = readers[i % 2]
        barrier.wait()
        try:
            with world.writer() as session, session.begin():
                task = claim_task(session, task_id, users[name], lease=LEASE)
                won.append(f"{name}:{task.transaction_uid}")
        except TaskAlreadyClaimed as exc:
            refused.append(exc)
        except BaseException as exc:
            other.append(exc)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(CLAIMERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert other == []
    assert len(won) == 1 and len(refused) == CLAIMERS - 1
    holder, uid = won[0].split(":")
    stored = world.task(task_id)
    assert (stored.claimed_by_user_id, stored.transaction_uid) == (world.users[holder], uid)
    with session_factory(world.engine)() as session:
        claims = session.scalars(
            select(TaskEvent.actor).where(TaskEvent.task_id == task_id, TaskEvent.action == "claim")
        ).all()
    assert claims == [holder]


def test_a_second_claim_is_refused_precisely(world: World, task_id: int) -> None:
    claim(world, task_id, "rad1")
    with pytest.raises(TaskAlreadyClaimed, match="already IN PROGRESS") as caught:
        claim(world, task_id, "rad3")
    assert caught.value.ups_status == 0xC302


def test_claim_of_a_completed_task_is_refused_and_changes_nothing(
    world: World, task_id: int
) -> None:
    task = claim(world, task_id, "rad1")
    with world.writer() as session, session.begin():
        complete_task(session, task_id, world.user("rad1"), task.transaction_uid)
    before = world.task(task_id)

    with pytest.raises(TaskFinal, match="COMPLETED and may no longer be changed"):
        claim(world, task_id, "rad3")

    after = world.task(task_id)
    assert (after.state, after.claimed_by_user_id, after.updated_at) == (
        before.state, before.claimed_by_user_id, before.updated_at,
    )  # fmt: skip


def test_who_may_claim(world: World, task_id: int) -> None:
    with pytest.raises(TaskNotFound):  # reads only county2: the task is invisible to him
        claim(world, task_id, "rad2")
    with pytest.raises(TaskPermissionDenied):  # sees his site's tasks, read-only
        claim(world, task_id, "rg1")
    with pytest.raises(TaskPermissionDenied):
        claim(world, task_id, "admin")
    assert world.task(task_id).state == "SCHEDULED"


def test_complete_needs_the_holder_and_his_transaction_uid(world: World, task_id: int) -> None:
    task = claim(world, task_id, "rad1")
    uid = task.transaction_uid
    cases = [
        ("rad1", None, TransactionUIDError, "needs its Transaction UID"),
        ("rad1", "1.2.3", TransactionUIDError, "incorrect"),
        ("rad3", uid, TaskNotHolder, "held by another reader"),
    ]
    for who, given, error, message in cases:
        with world.writer() as session, session.begin(), pytest.raises(error, match=message):
            complete_task(session, task_id, world.user(who), given)
        assert world.task(task_id).state == "IN PROGRESS"

    with world.writer() as session, session.begin():
        done = complete_task(session, task_id, world.user("rad1"), uid)
    assert done.state == "COMPLETED" and world.task(task_id).completed_at is not None


def test_complete_of_a_scheduled_task_is_refused(world: World, task_id: int) -> None:
    with world.writer() as session, session.begin(), pytest.raises(TaskNotInProgress):
        complete_task(session, task_id, world.user("rad1"), "1.2.3")


def test_release_returns_the_task_and_voids_the_transaction_uid(world: World, task_id: int) -> None:
    task = claim(world, task_id, "rad1")
    with world.writer() as session, session.begin(), pytest.raises(TaskNotHolder):
        release_task(session, task_id, world.user("rad3"))
    with world.writer() as session, session.begin():
        release_task(session, task_id, world.user("rad1"), task.transaction_uid)

    stored = world.task(task_id)
    assert (stored.state, stored.claimed_by_user_id, stored.transaction_uid) == (
        "SCHEDULED", None, None,
    )  # fmt: skip
    with world.writer() as session, session.begin(), pytest.raises(TaskNotInProgress):
        complete_task(session, task_id, world.user("rad1"), task.transaction_uid)
    assert claim(world, task_id, "rad3").claimed_by_user_id == world.users["rad3"]


def test_an_expired_lease_returns_the_task_to_scheduled(world: World, task_id: int) -> None:
    start = datetime.now(UTC)
    claim(world, task_id, "rad1", start)
    with world.writer() as session, session.begin():
        assert expire_leases(session, start + LEASE - timedelta(seconds=1)) == []

    report = WorklistLoop(world.engine, world.policy).run_once(start + LEASE + timedelta(1))

    assert [e.task_id for e in report.expired] == [task_id]
    stored = world.task(task_id)
    assert (stored.state, stored.claimed_by_user_id) == ("SCHEDULED", None)


def test_a_claim_takes_over_an_expired_lease_at_once(world: World, task_id: int) -> None:
    start = datetime.now(UTC)
    first = claim(world, task_id, "rad1", start)
    with pytest.raises(TaskAlreadyClaimed):
        claim(world, task_id, "rad3", start + LEASE / 2)

    second = claim(world, task_id, "rad3", start + LEASE + timedelta(seconds=1))

    assert second.claimed_by_user_id == world.users["rad3"]
    assert second.transaction_uid != first.transaction_uid
    with world.writer() as session, session.begin(), pytest.raises(TaskNotHolder):
        complete_task(session, task_id, world.user("rad1"), first.transaction_uid)


def test_renewal_extends_the_lease(world: World, task_id: int) -> None:
    start = datetime.now(UTC)
    task = claim(world, task_id, "rad1", start)
    with world.writer() as session, session.begin():
        renew_lease(
            session, task_id, world.user("rad1"), task.transaction_uid,
            lease=LEASE, now=start + LEASE / 2,
        )  # fmt: skip
    with world.writer() as session, session.begin():
        assert expire_leases(session, start + LEASE + timedelta(seconds=1)) == []
    assert world.task(task_id).state == "IN PROGRESS"


def test_break_lock_by_an_admin_only(world: World, task_id: int) -> None:
    claim(world, task_id, "rad1")
    with world.writer() as session, session.begin(), pytest.raises(TaskPermissionDenied):
        break_lock(session, task_id, world.user("rad3"))
    with world.writer() as session, session.begin():
        break_lock(session, task_id, world.user("admin"), "reader unreachable")

    assert world.task(task_id).state == "SCHEDULED"
    with world.writer() as session, session.begin(), pytest.raises(TaskNotInProgress):
        break_lock(session, task_id, world.user("admin"))


def test_cancel_by_admin_or_by_the_holder_with_his_uid(world: World) -> None:
    first = world.take_in(world.complete_study())
    with world.writer() as session, session.begin():
        cancel_task(session, first, world.user("admin"), "duplicate order")
    assert (world.task(first).state, world.task(first).canceled_reason) == (
        "CANCELED", "duplicate order",
    )  # fmt: skip

    second = world.take_in(world.complete_study())
    task = claim(world, second, "rad1")
    with world.writer() as session, session.begin(), pytest.raises(TransactionUIDError):
        cancel_task(session, second, world.user("rad1"), "wrong patient")
    with world.writer() as session, session.begin():
        cancel_task(
            session, second, world.user("rad1"), "wrong patient",
            transaction_uid=task.transaction_uid,
        )  # fmt: skip
    assert world.task(second).state == "CANCELED"
    with world.writer() as session, session.begin(), pytest.raises(TaskFinal):
        cancel_task(session, second, world.user("admin"), "again")


def test_assignment_by_admin_checks_the_reader(world: World, task_id: int) -> None:
    with world.writer() as session, session.begin(), pytest.raises(InvalidAssignment):
        assign_task(session, task_id, world.user("admin"), "rad2")  # not county1
    with world.writer() as session, session.begin(), pytest.raises(InvalidAssignment):
        assign_task(session, task_id, world.user("admin"), "rg1")
    with world.writer() as session, session.begin(), pytest.raises(TaskPermissionDenied):
        assign_task(session, task_id, world.user("rad1"), "rad3")
    with world.writer() as session, session.begin():
        session.add(ReadingPool(name="chest"))
    with world.writer() as session, session.begin():
        assign_task(session, task_id, world.user("admin"), "rad3", pool="chest")

    stored = world.task(task_id)
    assert stored.assigned_user_id == world.users["rad3"] and stored.pool_id is not None
    claim(world, task_id, "rad3")
    with world.writer() as session, session.begin(), pytest.raises(TaskAlreadyClaimed):
        assign_task(session, task_id, world.user("admin"), "rad1")


def test_reassigned_task_leaves_the_old_readers_worklist(world: World, task_id: int) -> None:
    with world.writer() as session, session.begin():
        session.add(ReaderSite(user_id=world.users["rad2"], site_id=world.sites["county1"]))
    with world.writer() as session, session.begin():
        assign_task(session, task_id, world.user("admin"), "rad2")
    with pytest.raises(TaskNotFound):  # rad1 reads county1 but the task is rad2's now
        claim(world, task_id, "rad1")
    assert claim(world, task_id, "rad2").claimed_by_user_id == world.users["rad2"]


def test_a_malformed_transaction_uid_is_refused(world: World, task_id: int) -> None:
    with world.writer() as session, session.begin(), pytest.raises(InvalidWorklistInput):
        claim_task(session, task_id, world.user("rad1"), lease=LEASE, transaction_uid="x.1")


def test_task_events_are_append_only(world: World, task_id: int) -> None:
    for statement in (
        update(TaskEvent).values(detail="rewritten"),
        text("DELETE FROM task_events"),
    ):
        session = world.writer()
        with pytest.raises(DBAPIError, match="append-only"), session.begin():
            session.execute(statement)
        session.close()
    with world.writer() as session:
        assert "rewritten" not in session.scalars(select(TaskEvent.detail)).all()
        assert session.scalars(select(TaskEvent.task_id)).all().count(task_id) == 2
