"""The report lifecycle over the database: create, autosave, preliminary, sign, addendum.

Every function works inside the caller's writer session and transaction (SQLite: BEGIN
IMMEDIATE) and locks the report row it changes; the caller commits. The decisions are the pure
ones of :mod:`telerad.worklist.report_states` (transition table, writer rule, record hashes);
this module reads the facts, applies them and records the SR documents to issue.

- **Autosave** takes the version the client last read (its ETag); a different one is
  :class:`~telerad.worklist.report_access.ReportVersionMismatch` (HTTP 412), so two editors
  never overwrite each other silently. Every change increments ``version``.
- **Preliminary** and **sign** record a :class:`~telerad.storage.ReportDocument` with a fixed
  SOP Instance UID; :func:`publish_documents` builds the DICOM SR and stores it into the study
  through the archive's ingest path after the commit, and may be re-run until it succeeds.
- **Sign** hashes the canonical content, chains the record hash to the predecessor's, sets
  the version final (immutable from then on, the database enforces it) and, for the original
  report, completes the reading task (:func:`telerad.worklist.complete_task`).
- Report events (:mod:`telerad.worklist.notify`) are delivered inside the transaction.

Errors: :class:`~telerad.worklist.report_access.ReportNotFound` (404),
:class:`~telerad.worklist.report_states.NotReportWriter` (403),
:class:`~telerad.worklist.report_states.InvalidReportTransition` and
:class:`~telerad.worklist.report_access.ReportExists` (409),
:class:`~telerad.worklist.report_access.ReportVersionMismatch` (412),
:class:`~telerad.worklist.templates.InvalidReportContent` (400).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pydicom.uid import generate_uid
from sqlalchemy import delete, func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from telerad.storage import (
    ReadingTask,
    Report,
    ReportDocument,
    Study,
    User,
)
from telerad.worklist.accounts import Principal, Role
from telerad.worklist.claims import complete_task
from telerad.worklist.notify import ReportEvent, on_report_event
from telerad.worklist.report_access import (
    ReportExists,
    ReportNotFound,
    ReportVersionMismatch,
    aware,
    chain_versions,
    check_key_images,
    report_chain,
    stored_content,
    visible_report,
)
from telerad.worklist.report_states import (
    InvalidReportTransition,
    NotReportWriter,
    ReportAction,
    ReportKind,
    ReportStatus,
    SignedVersion,
    WriteFacts,
    check_writer,
    next_status,
    record_sha256,
    verify_chain,
)
from telerad.worklist.states import OPEN_STATES
from telerad.worklist.tasks import Actor, actor_for
from telerad.worklist.templates import (
    ReportContent,
    canonical_json,
    content_sha256,
    critical_findings,
    get_template,
    is_critical,
    parse_content,
)

logger = logging.getLogger(__name__)


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


def _user(session: Session, actor: Actor) -> User:
    user = session.get(User, actor.user_id) if actor.user_id is not None else None
    if user is None:
        raise NotReportWriter("only a radiologist writes reports")
    return user


def create_report(
    session: Session,
    principal: Principal,
    study_uid: str,
    template: str,
    raw_content: object = None,
    *,
    task_id: int | None = None,
    now: datetime | None = None,
) -> Report:
    """Start the report of the study's reading task as a draft.

    The task is ``task_id``, or the study's task the caller holds (IN PROGRESS). A study the
    caller may not read for answers :class:`ReportNotFound`; a task he does not hold
    :class:`NotReportWriter`; a task that has a report :class:`ReportExists`.
    """
    now = _now(now)
    form = get_template(template)
    actor = actor_for(session, principal)
    site_id = _visible_study_site(session, principal, study_uid)
    task = _task_for(session, actor, study_uid, task_id)
    check_writer(_facts(actor, site_id, ReportKind.ORIGINAL, task))
    existing = session.scalar(
        select(Report.id).where(Report.task_id == task.id, Report.sequence == 0)
    )
    if existing is not None:
        raise ReportExists(f"task {task.id} has report {existing}", existing)
    content = _validated(session, study_uid, form.key, raw_content or {}, addendum=False)
    report = Report(
        study_uid=study_uid,
        site_id=site_id,
        task_id=task.id,
        sequence=0,
        kind=ReportKind.ORIGINAL.value,
        template=form.key,
        status=ReportStatus.DRAFT.value,
        version=1,
        content_json=canonical_json(content.as_dict()).decode(),
        critical=is_critical(form, content),
        author_user_id=_user(session, actor).id,
        created_at=now,
        updated_at=now,
        signer_name="",
        sr_series_uid=str(generate_uid()),
    )
    return _insert(session, report, f"task {task.id} has a report already")


def save_report(
    session: Session,
    principal: Principal,
    report_id: int,
    raw_content: object,
    expected_version: int,
    *,
    now: datetime | None = None,
) -> Report:
    """Autosave: replace the content of a draft (or preliminary) version the caller writes."""
    report, _actor = _writable(session, principal, report_id, ReportAction.SAVE, expected_version)
    content = _validated(
        session,
        report.study_uid,
        report.template,
        raw_content,
        addendum=report.kind == ReportKind.ADDENDUM,
    )
    report.content_json = canonical_json(content.as_dict()).decode()
    report.critical = is_critical(get_template(report.template), content)
    _touch(report, _now(now))
    session.flush()
    return report


def submit_preliminary(
    session: Session,
    principal: Principal,
    report_id: int,
    expected_version: int | None = None,
    *,
    now: datetime | None = None,
) -> Report:
    """Issue the report as preliminary (an SR document PARTIAL / UNVERIFIED / PRELIMINARY)."""
    now = _now(now)
    report, actor = _writable(
        session, principal, report_id, ReportAction.PRELIMINARY, expected_version
    )
    report.status = ReportStatus.PRELIMINARY.value
    report.preliminary_at = now
    _touch(report, now)
    _add_document(session, report, ReportStatus.PRELIMINARY)
    session.flush()
    _emit(session, report, actor, "preliminary", now)
    return report


def sign_report(
    session: Session,
    principal: Principal,
    report_id: int,
    expected_version: int | None = None,
    *,
    now: datetime | None = None,
) -> Report:
    """Sign a version final: who, when, the content hash and the chained record hash.

    The original report's reading task is completed in the same transaction.
    """
    now = _now(now)
    report, actor = _writable(session, principal, report_id, ReportAction.SIGN, expected_version)
    user = _user(session, actor)
    content = stored_content(report)
    predecessor_hash = None
    if report.predecessor_id is not None:
        predecessor = session.get(Report, report.predecessor_id)
        predecessor_hash = predecessor.record_sha256 if predecessor else None
    content_hash = content_sha256(report.template, report.study_uid, content)
    signer = user.full_name or user.username
    report.status = ReportStatus.FINAL.value
    report.signed_by_user_id = user.id
    report.signer_name = signer
    report.signed_at = now
    report.content_sha256 = content_hash
    report.record_sha256 = record_sha256(
        content_hash, signer, now, report.sequence, predecessor_hash
    )
    _touch(report, now)
    session.execute(
        delete(ReportDocument).where(
            ReportDocument.report_id == report.id, ReportDocument.stored_at.is_(None)
        )
    )
    _add_document(session, report, ReportStatus.FINAL)
    if report.kind == ReportKind.ORIGINAL:
        task = session.get(ReadingTask, report.task_id)
        assert task is not None
        complete_task(session, task.id, actor, task.transaction_uid, now=now)
    session.flush()
    kind = "final" if report.kind == ReportKind.ORIGINAL else "addendum"
    _emit(session, report, actor, kind, now)
    return report


def add_addendum(
    session: Session, principal: Principal, report_id: int, *, now: datetime | None = None
) -> Report:
    """Start an addendum to the final version ``report_id`` (the latest of its chain): a new
    draft version pointing to it, with its content to amend or append to."""
    now = _now(now)
    target = visible_report(session, principal, report_id, lock=True)
    next_status(ReportKind(target.kind), ReportStatus(target.status), ReportAction.ADDENDUM)
    successor = session.scalar(select(Report.id).where(Report.predecessor_id == target.id))
    if successor is not None:
        raise _successor_exists(target.id, successor)
    actor = actor_for(session, principal)
    task = session.get(ReadingTask, target.task_id)
    assert task is not None
    facts = _facts(actor, target.site_id, ReportKind.ADDENDUM, task)
    check_writer(_with_signer(facts, target.signed_by_user_id))
    content = stored_content(target)
    addendum = ReportContent(
        sections=content.sections,
        fields=content.fields,
        key_images=content.key_images,
        critical=content.critical,
    )
    report = Report(
        study_uid=target.study_uid,
        site_id=target.site_id,
        task_id=target.task_id,
        sequence=target.sequence + 1,
        kind=ReportKind.ADDENDUM.value,
        predecessor_id=target.id,
        template=target.template,
        status=ReportStatus.DRAFT.value,
        version=1,
        content_json=canonical_json(addendum.as_dict()).decode(),
        critical=target.critical,
        author_user_id=_user(session, actor).id,
        created_at=now,
        updated_at=now,
        signer_name="",
        sr_series_uid=target.sr_series_uid,
    )
    return _insert(session, report, f"report {target.id} has an addendum already")


def _successor_exists(report_id: int, successor: int) -> Exception:
    return InvalidReportTransition(
        f"report {report_id} already has addendum {successor}; amend the latest version"
    )


def _insert(session: Session, report: Report, conflict: str) -> Report:
    try:
        with session.begin_nested():
            session.add(report)
            session.flush()
    except sa_exc.IntegrityError:
        existing = session.scalar(
            select(Report.id).where(
                Report.task_id == report.task_id, Report.sequence == report.sequence
            )
        )
        raise ReportExists(conflict, existing or 0) from None
    return report


def _visible_study_site(session: Session, principal: Principal, study_uid: str) -> int | None:
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        raise ReportNotFound("no such study")
    readable = principal.role == Role.ADMIN or (
        principal.role == Role.RADIOLOGIST and study.site_id in principal.reading_site_ids
    )
    if not readable:
        raise ReportNotFound("no such study")
    return study.site_id


def _task_for(session: Session, actor: Actor, study_uid: str, task_id: int | None) -> ReadingTask:
    query = select(ReadingTask).where(ReadingTask.study_uid == study_uid)
    if task_id is not None:
        task = session.scalar(query.where(ReadingTask.id == task_id))
        if task is None:
            raise ReportNotFound(f"the study has no task {task_id}")
        return task
    held = session.scalar(
        query.where(
            ReadingTask.claimed_by_user_id == actor.user_id,
            ReadingTask.state.in_([s.value for s in OPEN_STATES]),
        ).order_by(ReadingTask.study_generation.desc())
    )
    if held is not None:
        return held
    latest = session.scalar(query.order_by(ReadingTask.study_generation.desc()).limit(1))
    if latest is None:
        raise NotReportWriter("the study has no reading task yet")
    return latest


def _facts(actor: Actor, site_id: int | None, kind: ReportKind, task: ReadingTask) -> WriteFacts:
    return WriteFacts(
        user_id=actor.user_id or -1,
        role=actor.role,
        reading_site_ids=actor.reading_site_ids,
        study_site_id=site_id,
        kind=kind,
        task_state=task.state,
        task_holder_id=task.claimed_by_user_id,
    )


def _with_signer(facts: WriteFacts, signer: int | None, author: int | None = None) -> WriteFacts:
    return WriteFacts(
        **{
            **{name: getattr(facts, name) for name in WriteFacts.__slots__},
            "predecessor_signer_id": signer,
            "author_id": author,
        }
    )


def _writable(
    session: Session,
    principal: Principal,
    report_id: int,
    action: ReportAction,
    expected_version: int | None,
) -> tuple[Report, Actor]:
    """Lock the report, then check (in this order) visibility 404, transition 409, writer
    403 and version 412."""
    report = visible_report(session, principal, report_id, lock=True)
    next_status(ReportKind(report.kind), ReportStatus(report.status), action)
    actor = actor_for(session, principal)
    task = session.get(ReadingTask, report.task_id)
    assert task is not None
    facts = _facts(actor, report.site_id, ReportKind(report.kind), task)
    predecessor_signer = None
    if report.predecessor_id is not None:
        predecessor_signer = session.scalar(
            select(Report.signed_by_user_id).where(Report.id == report.predecessor_id)
        )
    check_writer(_with_signer(facts, predecessor_signer, report.author_user_id))
    if expected_version is not None and expected_version != report.version:
        raise ReportVersionMismatch(
            f"report {report.id} is at version {report.version}, not {expected_version}"
        )
    return report, actor


def _validated(
    session: Session, study_uid: str, template: str, raw: object, *, addendum: bool
) -> ReportContent:
    content = parse_content(get_template(template), raw, addendum=addendum)
    check_key_images(session, study_uid, content.key_images)
    return content


def _touch(report: Report, now: datetime) -> None:
    report.version = report.version + 1
    report.updated_at = now


def _add_document(session: Session, report: Report, status: ReportStatus) -> None:
    chain_ids = select(Report.id).where(Report.task_id == report.task_id)
    issued = session.scalar(
        select(func.count(ReportDocument.id)).where(ReportDocument.report_id.in_(chain_ids))
    )
    session.add(
        ReportDocument(
            report_id=report.id,
            status=status.value,
            sop_instance_uid=str(generate_uid()),
            series_uid=report.sr_series_uid,
            instance_number=(issued or 0) + 1,
            attempts=0,
            last_error="",
        )
    )


def _emit(session: Session, report: Report, actor: Actor, kind: str, now: datetime) -> None:
    """Deliver the report event (and ``critical`` with it when the version carries one)."""
    template = get_template(report.template)
    content = stored_content(report)
    versions = chain_versions(session, report_chain(session, report))
    version = next(v for v in versions if v.id == report.id)
    event = ReportEvent(
        report_id=report.id,
        study_uid=report.study_uid,
        site_id=report.site_id,
        task_id=report.task_id,
        sequence=report.sequence,
        predecessor_id=report.predecessor_id,
        status=report.status,
        fhir_status=version.fhir_status,
        critical=report.critical,
        critical_findings=tuple(critical_findings(template, content)),
        actor=actor.name,
        actor_user_id=actor.user_id or 0,
        at=now,
    )
    on_report_event(kind, event, session)
    if report.critical:
        on_report_event("critical", event, session)


def content_hash_of(report: Report) -> str:
    """The content hash recomputed from the stored content (for chain verification)."""
    return content_sha256(report.template, report.study_uid, stored_content(report))


def verify_report_chain(session: Session, report: Report) -> tuple[bool, tuple[str, ...]]:
    """Recompute every hash of the signed versions of ``report``'s chain."""
    signed = [r for r in report_chain(session, report) if r.status == ReportStatus.FINAL]
    versions = [
        SignedVersion(
            report_id=r.id,
            sequence=r.sequence,
            content_sha256=r.content_sha256 or "",
            signer=r.signer_name,
            signed_at=aware(r.signed_at) if r.signed_at else datetime.min.replace(tzinfo=UTC),
            record_sha256=r.record_sha256 or "",
        )
        for r in signed
    ]
    check = verify_chain(versions, [content_hash_of(r) for r in signed])
    return check.intact, check.problems
