"""The worklist as UPS-RS (PS3.18 chapter 11): search, retrieve, change state — the database side.

Visibility is the worklist's (:func:`~telerad.worklist.tasks.visible_to`). Change Workitem State
(PS3.18 §11.7, PS3.4 Table CC.1.1-2) maps onto the claims:

=============== =========================================================================
IN PROGRESS     claim with the user agent's new Transaction UID (required)
COMPLETED       complete by the holder with his Transaction UID; already COMPLETED: warning
CANCELED        cancel by the holder with his Transaction UID; already CANCELED: warning
SCHEDULED       refused (0xC303): UPS has no way back (telerad's release is ``/api``)
=============== =========================================================================
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from telerad.storage import Instance, Patient, ReadingRequest, ReadingTask, Series, Study, User
from telerad.worklist.claims import cancel_task, claim_task, complete_task
from telerad.worklist.errors import InvalidWorklistInput, NoWayBack, TransactionUIDError
from telerad.worklist.states import ProcedureStepState
from telerad.worklist.tasks import Actor, task_by_workitem, visible_to
from telerad.worklist.workitems import WorkitemFacts, WorkitemQuery

S = ProcedureStepState
#: Warning texts of PS3.18 §11.7.3.2 for the states a workitem is already in.
ALREADY = {
    S.COMPLETED: "The UPS is already in the requested state of COMPLETED.",
    S.CANCELED: "The UPS is already in the requested state of CANCELED.",
}


def search_workitems(
    session: Session, actor: Actor, query: WorkitemQuery
) -> list[tuple[ReadingTask, WorkitemFacts]]:
    """Visible workitems matching ``query`` (most pressing first)."""
    statement = _filtered(select(ReadingTask).where(visible_to(actor)), query)
    statement = statement.order_by(ReadingTask.due_at, ReadingTask.id)
    tasks = list(session.scalars(statement.limit(query.limit).offset(query.offset)))
    return [(task, workitem_facts(session, task, "", series=False)) for task in tasks]


def _filtered(statement: Select[ReadingTask], q: WorkitemQuery) -> Select[ReadingTask]:
    task = ReadingTask
    if q.states:
        statement = statement.where(task.state.in_([s.value for s in q.states]))
    if q.priorities:
        statement = statement.where(task.priority.in_([p.value for p in q.priorities]))
    if q.workitem_uids:
        statement = statement.where(task.workitem_uid.in_(q.workitem_uids))
    if q.study_uid:
        statement = statement.where(task.study_uid == q.study_uid)
    if q.patient_id:
        ids = (
            select(Study.study_uid)
            .join(Patient, Patient.id == Study.patient_pk)
            .where(Patient.patient_id == q.patient_id)
        )
        statement = statement.where(task.study_uid.in_(ids))
    for column, (low, high) in ((task.created_at, q.start_range), (task.due_at, q.due_range)):
        if low is not None:
            statement = statement.where(column >= low)
        if high is not None:
            statement = statement.where(column <= high)
    return statement


def retrieve_workitem(
    session: Session, workitem_uid: str, actor: Actor, retrieve_base: str
) -> tuple[ReadingTask, WorkitemFacts]:
    """One visible workitem with its input instances; :class:`TaskNotFound` otherwise."""
    task = task_by_workitem(session, workitem_uid, actor)
    return task, workitem_facts(session, task, retrieve_base)


def change_workitem_state(
    session: Session,
    workitem_uid: str,
    actor: Actor,
    requested: str,
    transaction_uid: str | None,
    *,
    lease: timedelta,
    now: datetime | None = None,
) -> tuple[ReadingTask, str | None]:
    """Change the state of a workitem; returns the task and a warning text (or ``None``)."""
    try:
        state = ProcedureStepState(requested.strip().upper())
    except ValueError:
        raise InvalidWorklistInput(
            "Procedure Step State must be IN PROGRESS, COMPLETED or CANCELED"
        ) from None
    task = task_by_workitem(session, workitem_uid, actor)
    if state is S.SCHEDULED:
        raise NoWayBack("a workitem cannot be changed back to SCHEDULED", task.state)
    if state in ALREADY and task.state == state:
        return task, ALREADY[state]
    if not transaction_uid:
        raise TransactionUIDError("The Transaction UID is missing.", task.state, missing=True)
    if state is S.IN_PROGRESS:
        return claim_task(
            session, task.id, actor, lease=lease, now=now, transaction_uid=transaction_uid
        ), None
    if state is S.COMPLETED:
        return complete_task(session, task.id, actor, transaction_uid, now=now), None
    return cancel_task(
        session, task.id, actor, "canceled by its performer", transaction_uid=transaction_uid,
        now=now, request=False,
    ), None  # fmt: skip


def workitem_facts(
    session: Session, task: ReadingTask, retrieve_base: str, *, series: bool = True
) -> WorkitemFacts:
    """The plain values of a task's workitem (patient and order from the catalog)."""
    row = session.execute(
        select(Study, Patient)
        .join(Patient, Patient.id == Study.patient_pk)
        .where(Study.study_uid == task.study_uid)
    ).first()
    study, patient = (row[0], row[1]) if row else (None, None)
    order = session.get(ReadingRequest, task.request_id) if task.request_id else None
    performer = session.get(User, task.assigned_user_id) if task.assigned_user_id else None
    return WorkitemFacts(
        workitem_uid=task.workitem_uid,
        state=task.state,
        priority=task.priority,
        label=f"Read {task.modality or 'study'} {task.body_part}".strip(),
        created_at=task.created_at,
        updated_at=task.updated_at,
        due_at=task.due_at,
        study_uid=task.study_uid,
        accession_number=(order.accession_number if order and order.accession_number else "")
        or (study.accession_number if study else ""),
        clinical_question=task.clinical_question,
        performer=performer.username if performer else None,
        canceled_reason=task.canceled_reason,
        patient_name=patient.patient_name if patient else "",
        patient_id=patient.patient_id if patient else "",
        issuer_of_patient_id=patient.issuer if patient else "",
        patient_birth_date=patient.birth_date if patient else "",
        patient_sex=patient.sex if patient else "",
        series=_series(session, task.study_uid) if series else (),
        retrieve_url=f"{retrieve_base}/studies/{task.study_uid}" if retrieve_base else "",
    )


def _series(
    session: Session, study_uid: str
) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    rows = session.execute(
        select(Series.series_uid, Instance.sop_class_uid, Instance.sop_instance_uid)
        .join(Instance, Instance.series_pk == Series.id)
        .join(Study, Study.id == Series.study_pk)
        .where(Study.study_uid == study_uid)
        .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    )
    grouped: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for series_uid, sop_class, sop_instance in rows:
        grouped[series_uid].append((sop_class, sop_instance))
    return tuple((uid, tuple(items)) for uid, items in grouped.items())
