"""Reading reports: who may see which version, the version chain, and the output bundle.

Visibility (DESIGN.md, security model) is decided in one place, :func:`may_read_report`:

- an administrator sees every report;
- a radiologist sees the reports (drafts included) of the sites he reads for;
- a radiographer sees the preliminary and final versions of his site's studies, never drafts;
- anyone else (referrers, gateways) sees nothing here; other rules extend this with
  :func:`register_report_visibility` (delivery adds referrers and share links that way).

A report the caller may not see is reported exactly like a missing one
(:class:`ReportNotFound`), so nobody learns that another site's study has a report.

Errors: :class:`ReportError` → :class:`ReportNotFound`, :class:`ReportExists`,
:class:`ReportVersionMismatch`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from telerad.storage import (
    Instance,
    NotFound,
    Patient,
    Report,
    ReportDocument,
    Scope,
    Series,
    Study,
    User,
    find_instances,
)
from telerad.worklist.accounts import Principal, Role
from telerad.worklist.report_states import ReportKind, ReportStatus
from telerad.worklist.report_view import (
    DocumentRef,
    KeyImage,
    PatientStudy,
    ReportBundle,
    ReportVersion,
    Signature,
)
from telerad.worklist.templates import (
    InvalidReportContent,
    KeyImageRef,
    ReportContent,
    get_template,
    parse_content,
)

#: SOP Class UIDs of SR documents start with this (PS3.4 Annex B, "…1.1.88.").
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


class ReportError(Exception):
    """Base class of report service errors."""


class ReportNotFound(ReportError):
    """No such report or study, or one the caller may not see (HTTP 404)."""


class ReportExists(ReportError):
    """The task has a report already (HTTP 409); ``report_id`` names it."""

    def __init__(self, message: str, report_id: int) -> None:
        super().__init__(message)
        self.report_id = report_id


class ReportVersionMismatch(ReportError):
    """The report changed since the caller read it: its ETag does not match (HTTP 412)."""


#: ``rule(principal, report, session)`` → True grants reading; None/False leaves it to others.
VisibilityRule = Callable[[Principal, Report, Session], bool | None]
_rules: list[VisibilityRule] = []
_rules_lock = threading.Lock()


def register_report_visibility(rule: VisibilityRule) -> Callable[[], None]:
    """Add a rule that may grant reading a report (e.g. the referrer of the study's order);
    returns its unregistration."""
    with _rules_lock:
        _rules.append(rule)

    def unregister() -> None:
        with _rules_lock:
            if rule in _rules:
                _rules.remove(rule)

    return unregister


def may_read_report(principal: Principal, report: Report, session: Session) -> bool:
    """True if ``principal`` may read this report version (see the module docstring)."""
    if principal.is_site_token:
        return False
    if principal.role == Role.ADMIN:
        return True
    if principal.role == Role.RADIOLOGIST:
        return report.site_id is not None and report.site_id in principal.reading_site_ids
    if principal.role == Role.RADIOGRAPHER:
        issued = report.status != ReportStatus.DRAFT
        return issued and report.site_id is not None and report.site_id == principal.site_id
    with _rules_lock:
        rules = list(_rules)
    return any(rule(principal, report, session) for rule in rules)


def visible_report(
    session: Session, principal: Principal, report_id: int, *, lock: bool = False
) -> Report:
    """The report ``report_id`` if ``principal`` may read it; :class:`ReportNotFound` else."""
    query = select(Report).where(Report.id == report_id)
    report = session.scalar(query.with_for_update() if lock else query)
    if report is None or not may_read_report(principal, report, session):
        raise ReportNotFound(f"no report {report_id}")
    return report


def report_chain(session: Session, report: Report) -> list[Report]:
    """Every version of ``report``'s chain (original and addenda), oldest first."""
    query = select(Report).where(Report.task_id == report.task_id).order_by(Report.sequence)
    return list(session.scalars(query))


def visible_chain(session: Session, principal: Principal, report: Report) -> list[Report]:
    """The versions of the chain ``principal`` may read (a radiographer: no drafts)."""
    return [
        item for item in report_chain(session, report) if may_read_report(principal, item, session)
    ]


def study_reports(session: Session, principal: Principal, study_uid: str) -> list[Report]:
    """Every report version of a study the caller may read, by task then sequence."""
    query = (
        select(Report)
        .where(Report.study_uid == study_uid)
        .order_by(Report.task_id, Report.sequence)
    )
    return [item for item in session.scalars(query) if may_read_report(principal, item, session)]


def report_documents(session: Session, report_ids: Sequence[int]) -> list[ReportDocument]:
    """The SR documents issued for these versions, oldest first."""
    query = (
        select(ReportDocument)
        .where(ReportDocument.report_id.in_(list(report_ids)))
        .order_by(ReportDocument.id)
    )
    return list(session.scalars(query))


def stored_content(report: Report) -> ReportContent:
    """The version's content as stored (validated when it was written)."""
    template = get_template(report.template)
    return parse_content(
        template, json.loads(report.content_json), addendum=report.kind == ReportKind.ADDENDUM
    )


def aware(value: datetime) -> datetime:
    """SQLite returns naive timestamps; every timestamp telerad writes is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def to_version(
    report: Report,
    users: dict[int, User],
    documents: Sequence[ReportDocument] = (),
    predecessor: Report | None = None,
) -> ReportVersion:
    """A report row as the builders' plain :class:`ReportVersion`."""
    author = users.get(report.author_user_id)
    signature = None
    if report.signed_at is not None and report.signed_by_user_id is not None:
        signer = users.get(report.signed_by_user_id)
        signature = Signature(
            signer=report.signer_name,
            signer_username=signer.username if signer else "",
            signed_at=aware(report.signed_at),
            content_sha256=report.content_sha256 or "",
            record_sha256=report.record_sha256 or "",
        )
    return ReportVersion(
        id=report.id,
        study_uid=report.study_uid,
        sequence=report.sequence,
        kind=ReportKind(report.kind),
        status=ReportStatus(report.status),
        template=get_template(report.template),
        content=stored_content(report),
        author=author.full_name if author else "",
        author_username=author.username if author else "",
        created_at=aware(report.created_at),
        updated_at=aware(report.updated_at),
        version=report.version,
        preliminary_at=aware(report.preliminary_at) if report.preliminary_at else None,
        signature=signature,
        predecessor_id=report.predecessor_id,
        documents=tuple(
            DocumentRef(d.sop_instance_uid, d.series_uid, d.status, d.stored_at is not None)
            for d in documents
            if d.report_id == report.id
        ),
        predecessor_content=stored_content(predecessor) if predecessor is not None else None,
    )


def users_by_id(session: Session, reports: Sequence[Report]) -> dict[int, User]:
    """The authors and signers of ``reports``."""
    ids = {r.author_user_id for r in reports} | {
        r.signed_by_user_id for r in reports if r.signed_by_user_id is not None
    }
    return {user.id: user for user in session.scalars(select(User).where(User.id.in_(ids)))}


def chain_versions(session: Session, chain: Sequence[Report]) -> list[ReportVersion]:
    """The chain's rows as :class:`ReportVersion`, oldest first."""
    users = users_by_id(session, chain)
    documents = report_documents(session, [r.id for r in chain])
    by_id = {r.id: r for r in chain}
    return [to_version(r, users, documents, by_id.get(r.predecessor_id or -1)) for r in chain]


def study_metadata(session: Session, study_uid: str) -> list[dict[str, object]]:
    """DICOM JSON of the study's instances other than SR documents (the report's evidence)."""
    try:
        instances = find_instances(session, Scope(None), study_uid)
    except NotFound:
        raise ReportNotFound("the study has no stored instances") from None
    return [
        json.loads(item.metadata_json)
        for item in instances
        if not item.sop_class_uid.startswith(SR_CLASS_PREFIX)
    ]


def patient_study(session: Session, study_uid: str) -> PatientStudy:
    """Patient and study attributes of a study, from its stored metadata and catalog."""
    evidence = study_metadata(session, study_uid)
    modalities = session.scalar(
        select(Study.modalities_in_study).where(Study.study_uid == study_uid)
    )
    study = PatientStudy.from_dicom_json(evidence[0], (modalities or "").split("\\"))
    if not study.issuer_of_patient_id:
        issuer = session.scalar(
            select(Patient.issuer)
            .join(Study, Study.patient_pk == Patient.id)
            .where(Study.study_uid == study_uid)
        )
        study = _with_issuer(study, issuer or "")
    return study


def _with_issuer(study: PatientStudy, issuer: str) -> PatientStudy:
    return replace(study, issuer_of_patient_id=issuer.split("#")[0])


def load_bundle(
    session: Session,
    report: Report,
    institution: str,
    key_images: Sequence[KeyImage] = (),
    *,
    chain: Sequence[Report] | None = None,
) -> ReportBundle:
    """Everything the HTML, PDF, FHIR and SR builders need for ``report``."""
    rows = list(chain) if chain is not None else report_chain(session, report)
    versions = chain_versions(session, rows)
    current = next(v for v in versions if v.id == report.id)
    return ReportBundle(
        version=current,
        chain=tuple(versions),
        study=patient_study(session, report.study_uid),
        institution=institution,
        key_images=tuple(key_images),
    )


def check_key_images(session: Session, study_uid: str, refs: Sequence[KeyImageRef]) -> None:
    """Every key image must be an instance (and frame) of the study; raises
    :class:`~telerad.worklist.templates.InvalidReportContent` naming the first that is not."""
    if not refs:
        return
    rows = session.execute(
        select(Instance.sop_instance_uid, Instance.number_of_frames, Instance.sop_class_uid)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_uid == study_uid)
        .where(Instance.sop_instance_uid.in_([r.sop_instance_uid for r in refs]))
    ).all()
    known = {uid: (frames or 1, cls) for uid, frames, cls in rows}
    for ref in refs:
        if ref.sop_instance_uid not in known or known[ref.sop_instance_uid][1].startswith(
            SR_CLASS_PREFIX
        ):
            raise InvalidReportContent(
                f"key image {ref.sop_instance_uid} is not an image of the study"
            )
        if ref.frame > known[ref.sop_instance_uid][0]:
            raise InvalidReportContent(f"key image {ref.sop_instance_uid} has no frame {ref.frame}")
