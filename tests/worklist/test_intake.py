"""Worklist intake on SQLite and PostgreSQL: one task per completion, follow-ups, the sweep."""

from __future__ import annotations

import threading
from datetime import timedelta

from pydicom.uid import generate_uid
from sqlalchemy import func, select

from telerad.storage import (
    IngestSource,
    ReadingTask,
    RoutingRule,
    TaskEvent,
    session_factory,
    submit_manifest,
)
from telerad.worklist import (
    Actor,
    OrderFields,
    WorklistLoop,
    claim_task,
    complete_task,
    intake_study,
    put_reading_request,
    studies_awaiting_intake,
)
from tests.factories import ct_datasets, ct_instances, manifest_of, part10
from tests.worklist.conftest import World


def tasks_of(world: World, study_uid: str) -> list[ReadingTask]:
    with session_factory(world.engine)() as session:
        query = select(ReadingTask).where(ReadingTask.study_uid == study_uid)
        return list(session.scalars(query.order_by(ReadingTask.study_generation)))


def events_of(world: World, task_id: int) -> list[str]:
    with session_factory(world.engine)() as session:
        query = select(TaskEvent.action).where(TaskEvent.task_id == task_id)
        return list(session.scalars(query.order_by(TaskEvent.id)))


def test_a_complete_study_gets_one_routine_task_due_after_the_sla(world: World) -> None:
    study = world.complete_study("county1")

    task = world.task(world.take_in(study))

    completed = world.completed_at(study)
    assert task.state == "SCHEDULED"
    assert task.priority == "ROUTINE"
    assert task.site_id == world.sites["county1"]
    assert task.modality == "CT" and task.body_part == "CHEST"
    due = task.due_at if task.due_at.tzinfo else task.due_at.replace(tzinfo=completed.tzinfo)
    assert due - completed == timedelta(minutes=24 * 60)
    # no rule: the least-loaded reader of the site (rad1 and rad3 read county1; rad1 first)
    assert task.assigned_user_id == world.users["rad1"]
    assert events_of(world, task.id) == ["created", "routed"]


def test_intake_is_idempotent(world: World) -> None:
    study = world.complete_study()

    first = world.take_in(study)
    again = intake_study(world.engine, study, world.policy)

    assert again.task_id == first and not again.created
    assert len(tasks_of(world, study)) == 1


def test_concurrent_intakes_of_one_completion_create_one_task(world: World) -> None:
    study = world.complete_study()
    results = []

    def take() -> None:
        results.append(intake_study(world.engine, study, world.policy))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(r.created for r in results) == 1
    assert len(tasks_of(world, study)) == 1


def test_the_order_sets_priority_question_and_due_time(world: World) -> None:
    study_instances = ct_instances(2)
    study, entries = manifest_of(study_instances)
    admin = Actor(world.users["admin"], "admin", "admin")
    with world.writer() as session, session.begin():
        put_reading_request(
            session, study, admin,
            OrderFields(priority="stat", clinical_question="bleed?", site="county1"),
            world.policy,
        )  # fmt: skip
    source = IngestSource(world.sites["county1"], "COUNTY1", "c1")
    for raw in study_instances:
        world.archive.ingest_instance(raw, source)
    submit_manifest(world.engine, study, entries, world.sites["county1"])

    task = world.task(world.take_in(study))

    assert task.priority == "STAT" and task.clinical_question == "bleed?"
    completed = world.completed_at(study)
    due = task.due_at if task.due_at.tzinfo else task.due_at.replace(tzinfo=completed.tzinfo)
    assert due - completed == timedelta(minutes=60)


def test_a_rule_gives_the_priority_of_a_study_without_order(world: World) -> None:
    with world.writer() as session, session.begin():
        session.add(RoutingRule(position=1, modality="CT", set_priority="URGENT"))
    study = world.complete_study()

    task = world.task(world.take_in(study))

    assert task.priority == "URGENT"


def test_new_instances_after_reading_make_a_linked_follow_up(world: World) -> None:
    instances = ct_instances(2)
    source = IngestSource(world.sites["county1"], "COUNTY1", "c1")
    for raw in instances:
        world.archive.ingest_instance(raw, source)
    study, entries = manifest_of(instances)
    submit_manifest(world.engine, study, entries, world.sites["county1"])
    first = world.take_in(study)
    with world.writer() as session, session.begin():
        task = claim_task(session, first, world.user("rad1"), lease=world.policy.lease)
        complete_task(session, first, world.user("rad1"), task.transaction_uid)

    more = _same_study_instance(study)
    world.archive.ingest_instance(more, source)
    entries.update(manifest_of([more])[1])
    assert submit_manifest(world.engine, study, entries, world.sites["county1"]).became_complete
    second = world.take_in(study)

    follow_up = world.task(second)
    assert second != first
    assert follow_up.follow_up_of_task_id == first
    assert follow_up.study_generation == 2 and follow_up.state == "SCHEDULED"
    assert world.task(first).state == "COMPLETED"


def test_new_instances_while_open_are_noted_not_a_new_task(world: World) -> None:
    instances = ct_instances(2)
    source = IngestSource(world.sites["county1"], "COUNTY1", "c1")
    for raw in instances:
        world.archive.ingest_instance(raw, source)
    study, entries = manifest_of(instances)
    submit_manifest(world.engine, study, entries, world.sites["county1"])
    first = world.take_in(study)

    more = _same_study_instance(study)
    world.archive.ingest_instance(more, source)
    entries.update(manifest_of([more])[1])
    submit_manifest(world.engine, study, entries, world.sites["county1"])
    again = intake_study(world.engine, study, world.policy)

    assert again.noted and again.task_id == first
    assert len(tasks_of(world, study)) == 1
    assert events_of(world, first)[-1] == "study-changed"
    assert intake_study(world.engine, study, world.policy).noted is False  # noted once


def test_the_sweep_takes_in_what_a_crash_left_behind(world: World) -> None:
    studies = [world.complete_study() for _ in range(3)]
    with session_factory(world.engine)() as session:
        assert set(studies) <= set(studies_awaiting_intake(session))

    report = WorklistLoop(world.engine, world.policy).run_once()

    assert {r.study_uid for r in report.intake if r.created} == set(studies)
    assert not report.errors
    with session_factory(world.engine)() as session:
        assert studies_awaiting_intake(session) == []
        count = session.scalar(select(func.count()).select_from(ReadingTask))
    assert count == 3


def _same_study_instance(study_uid: str) -> bytes:
    """One more instance (new series) of ``study_uid``."""
    ds = ct_datasets(1)[0]
    ds.StudyInstanceUID = study_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return part10(ds)
