"""Worklist intake: a reading task for every completion of a study (DESIGN.md, step 5).

:func:`take_in_study` runs when a study becomes complete (the manifest and STOW routes call it
right after ``became_complete``) and again from the background sweep
(:func:`studies_awaiting_intake`), so a crash between completion and intake loses nothing. It
is idempotent: it locks the study's manifest row, compares the completion (``completed_at``)
with the latest task's, and ``(study_uid, study_generation)`` is unique, so concurrent
intakes of one completion create one task.

For a completion not yet taken in:

- no task yet: a new task (generation 1);
- the latest task is open (SCHEDULED / IN PROGRESS): the change is noted in its history and
  the task takes in the new completion (nobody reads a stale study without knowing);
- the latest task is COMPLETED or CANCELED: a *follow-up* task (generation + 1) linked to it —
  new images of a study already read are never a silent change.

Priority: the order's; without an order, the ``set_priority`` of the first matching rule that
has one; else ``ROUTINE``. Due time: completion + the SLA of the priority. Routing:
:func:`~telerad.worklist.routing.route`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from pydicom.uid import generate_uid
from sqlalchemy import Engine, exists, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from telerad.storage import (
    ReadingRequest,
    ReadingTask,
    Series,
    Study,
    StudyManifest,
    session_factory,
)
from telerad.worklist.directory import load_readers, load_rules, note_assignment
from telerad.worklist.routing import Routing, Rule, TaskFacts, route, rule_priority
from telerad.worklist.sla import Priority, WorklistPolicy, parse_priority
from telerad.worklist.states import OPEN_STATES, ProcedureStepState
from telerad.worklist.tasks import SYSTEM_ACTOR, add_event, aware

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IntakeResult:
    """What intake did for a study: ``created`` a task, ``noted`` the change in an open one,
    or nothing (already taken in, or the study is not complete)."""

    study_uid: str
    task_id: int | None
    created: bool = False
    noted: bool = False
    follow_up_of: int | None = None


def take_in_study(
    session: Session, study_uid: str, policy: WorklistPolicy, now: datetime | None = None
) -> IntakeResult:
    """Create or update the reading task for the study's current completion (inside the
    caller's writer transaction; the caller commits)."""
    now = now or datetime.now(UTC)
    manifest = session.scalar(
        select(StudyManifest).where(StudyManifest.study_uid == study_uid).with_for_update()
    )
    completed_at = aware(manifest.completed_at) if manifest and manifest.complete else None
    if manifest is None or completed_at is None:
        return IntakeResult(study_uid, None)
    latest = session.scalar(
        select(ReadingTask)
        .where(ReadingTask.study_uid == study_uid)
        .order_by(ReadingTask.study_generation.desc())
        .limit(1)
        .with_for_update()
    )
    if latest is not None and (aware(latest.study_completed_at) or now) >= completed_at:
        return IntakeResult(study_uid, latest.id)
    if latest is not None and latest.state in OPEN_STATES:
        return _note_change(session, latest, manifest, now)
    return _create(session, manifest, latest, policy, now)


def intake_study(
    engine: Engine, study_uid: str, policy: WorklistPolicy, now: datetime | None = None
) -> IntakeResult:
    """:func:`take_in_study` in a transaction of its own (the routes' hook); a concurrent
    intake of the same completion makes this one a no-op."""
    writer = session_factory(engine, writer=True)
    try:
        with writer.begin() as session:
            return take_in_study(session, study_uid, policy, now)
    except sa_exc.IntegrityError:  # another process created the task between our reads
        logger.info("intake of %s: task created concurrently", study_uid)
        return IntakeResult(study_uid, None)


def studies_awaiting_intake(session: Session, limit: int = 200) -> list[str]:
    """Complete studies whose current completion no task has taken in yet."""
    taken = exists().where(
        ReadingTask.study_uid == StudyManifest.study_uid,
        ReadingTask.study_completed_at >= StudyManifest.completed_at,
    )
    query = (
        select(StudyManifest.study_uid)
        .where(StudyManifest.complete.is_(True), ~taken)
        .order_by(StudyManifest.completed_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def _note_change(
    session: Session, task: ReadingTask, manifest: StudyManifest, now: datetime
) -> IntakeResult:
    detail = f"study complete again with {manifest.expected_instances} instances"
    task.study_completed_at = manifest.completed_at
    task.updated_at = now
    add_event(session, task, SYSTEM_ACTOR, "study-changed", detail, now)
    session.flush()
    logger.info("study %s changed while task %d is %s", task.study_uid, task.id, task.state)
    return IntakeResult(task.study_uid, task.id, noted=True)


def _create(
    session: Session,
    manifest: StudyManifest,
    previous: ReadingTask | None,
    policy: WorklistPolicy,
    now: datetime,
) -> IntakeResult:
    study = session.scalar(select(Study).where(Study.study_uid == manifest.study_uid))
    order = session.scalar(
        select(ReadingRequest).where(ReadingRequest.study_uid == manifest.study_uid)
    )
    rules = load_rules(session)
    facts = _facts(session, study, manifest, order, rules)
    routing = route(rules, facts, load_readers(session), now, auto_assign=policy.auto_assign)
    completed_at = aware(manifest.completed_at) or now
    priority = Priority(facts.priority)
    task = ReadingTask(
        workitem_uid=str(generate_uid()),
        study_uid=manifest.study_uid,
        study_generation=previous.study_generation + 1 if previous else 1,
        study_completed_at=manifest.completed_at,
        site_id=facts.site_id,
        request_id=order.id if order else None,
        state=ProcedureStepState.SCHEDULED.value,
        priority=priority.value,
        due_at=policy.due_at(priority, completed_at),
        modality="\\".join(sorted(facts.modalities)),
        body_part=facts.body_part,
        clinical_question=order.clinical_question if order else "",
        assigned_user_id=routing.assigned_user_id,
        pool_id=routing.pool_id,
        routing_rule_id=routing.rule_id,
        follow_up_of_task_id=previous.id if previous else None,
        created_at=now,
        updated_at=now,
    )
    session.add(task)
    session.flush()
    _record_creation(session, task, previous, routing, now)
    return IntakeResult(
        task.study_uid, task.id, created=True, follow_up_of=previous.id if previous else None
    )


def _record_creation(
    session: Session,
    task: ReadingTask,
    previous: ReadingTask | None,
    routing: Routing,
    now: datetime,
) -> None:
    kind = f"follow-up of task {previous.id} ({previous.state})" if previous else "new study"
    add_event(session, task, SYSTEM_ACTOR, "created", f"{kind}; due {task.due_at}", now)
    detail = f"{routing.reason}; user={routing.assigned_user_id} pool={routing.pool_id}"
    add_event(session, task, SYSTEM_ACTOR, "routed", detail, now)
    if routing.assigned_user_id is not None:
        note_assignment(session, routing.assigned_user_id, now)
    logger.info("task %d created for study %s (%s)", task.id, task.study_uid, kind)


def _facts(
    session: Session,
    study: Study | None,
    manifest: StudyManifest,
    order: ReadingRequest | None,
    rules: list[Rule],
) -> TaskFacts:
    site_id = study.site_id if study and study.site_id is not None else manifest.site_id
    modalities = frozenset(
        m.upper() for m in (study.modalities_in_study.split("\\") if study else []) if m
    )
    body_part = order.body_part if order and order.body_part else _body_part(session, study)
    facts = TaskFacts(site_id, modalities, body_part.upper(), Priority.ROUTINE.value)
    if order is not None:
        return replace(facts, priority=parse_priority(order.priority).value)
    by_rule = rule_priority(rules, facts)
    return replace(facts, priority=parse_priority(by_rule).value) if by_rule else facts


def _body_part(session: Session, study: Study | None) -> str:
    if study is None:
        return ""
    query = (
        select(Series.body_part_examined)
        .where(Series.study_pk == study.id, Series.body_part_examined != "")
        .order_by(Series.series_number, Series.id)
        .limit(1)
    )
    return session.scalar(query) or ""
