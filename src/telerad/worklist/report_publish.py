"""Storing the SR documents of reports into their studies (after the lifecycle's commit).

:func:`publish_documents` builds the DICOM SR (:mod:`telerad.worklist.sr`) of every recorded
but unstored :class:`~telerad.storage.ReportDocument` of a report chain and stores it through
:meth:`~telerad.storage.Archive.ingest_instance`, the path STOW-RS uses, so QIDO-RS, WADO-RS
and any PACS querying the centre see it. The source is marked ``derived``: a report does not
change the study's completeness. Rebuilding a document gives the same bytes, so a retry after
a crash finds it ``ALREADY_STORED``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from telerad.storage import (
    Archive,
    IngestError,
    IngestSource,
    Patient,
    Report,
    ReportDocument,
    StorageUnavailable,
    Study,
    session_factory,
)
from telerad.worklist.report_access import (
    ReportNotFound,
    load_bundle,
    report_chain,
    report_documents,
    study_metadata,
)
from telerad.worklist.sr import PredecessorRef, SrIdentity, build_report_sr, sr_part10

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What :func:`publish_documents` stored, and what failed (to be retried)."""

    stored: tuple[str, ...]
    failed: tuple[str, ...]


def pending_documents(session: Session, report: Report) -> list[ReportDocument]:
    """SR documents of the report's chain recorded but not yet stored, oldest first."""
    ids = [r.id for r in report_chain(session, report)]
    return [d for d in report_documents(session, ids) if d.stored_at is None]


def publish_documents(
    archive: Archive, report_id: int, institution: str, *, manufacturer: str = "telerad"
) -> PublishResult:
    """Build and store every pending SR document of the report's chain into its study,
    through :meth:`~telerad.storage.Archive.ingest_instance` (as STOW-RS does). Each document
    is rebuilt identically on a retry, so a document stored before a crash is found
    ``ALREADY_STORED``. Failures are recorded on the document and returned, not raised."""
    stored: list[str] = []
    failed: list[str] = []
    reader = session_factory(archive.engine)
    writer = session_factory(archive.engine, writer=True)
    with reader() as session:
        report = session.get(Report, report_id)
        if report is None:
            raise ReportNotFound(f"no report {report_id}")
        pending = [d.id for d in pending_documents(session, report)]
    for document_id in pending:
        with reader() as session:
            raw, source, uid = _document_bytes(session, document_id, institution, manufacturer)
        try:
            result = archive.ingest_instance(raw, source, study_uid=_study_of(archive, uid))
        except (IngestError, StorageUnavailable) as exc:
            _record_failure(writer, document_id, exc)
            failed.append(uid)
            continue
        with writer.begin() as session:
            session.execute(
                update(ReportDocument)
                .where(ReportDocument.id == document_id)
                .values(
                    stored_at=datetime.now(UTC),
                    sha256=result.sha256,
                    attempts=ReportDocument.attempts + 1,
                )
            )
        stored.append(uid)
    return PublishResult(tuple(stored), tuple(failed))


def _study_of(archive: Archive, document_uid: str) -> str:
    with session_factory(archive.engine)() as session:
        query = (
            select(Report.study_uid)
            .join(ReportDocument, ReportDocument.report_id == Report.id)
            .where(ReportDocument.sop_instance_uid == document_uid)
        )
        study_uid = session.scalar(query)
        assert study_uid is not None
        return study_uid


def _document_bytes(
    session: Session, document_id: int, institution: str, manufacturer: str
) -> tuple[bytes, IngestSource, str]:
    document = session.get(ReportDocument, document_id)
    assert document is not None
    report = session.get(Report, document.report_id)
    assert report is not None
    chain = report_chain(session, report)
    bundle = load_bundle(session, report, institution, chain=chain)
    earlier = [d for d in report_documents(session, [r.id for r in chain]) if d.id < document.id]
    identity = SrIdentity(document.sop_instance_uid, document.series_uid, document.instance_number)
    predecessors = [
        PredecessorRef(report.study_uid, d.series_uid, d.sop_instance_uid) for d in earlier
    ]
    sr = build_report_sr(
        bundle,
        study_metadata(session, report.study_uid),
        identity,
        predecessors=predecessors,
        manufacturer=manufacturer,
    )
    issuer = session.scalar(
        select(Patient.issuer)
        .join(Study, Study.patient_pk == Patient.id)
        .where(Study.study_uid == report.study_uid)
    )
    source = IngestSource(report.site_id, (issuer or "").split("#")[0], "report", derived=True)
    return sr_part10(sr), source, document.sop_instance_uid


def _record_failure(writer: sessionmaker[Session], document_id: int, exc: Exception) -> None:
    logger.warning("report document %d not stored: %s", document_id, exc)
    with writer.begin() as session:
        session.execute(
            update(ReportDocument)
            .where(ReportDocument.id == document_id)
            .values(attempts=ReportDocument.attempts + 1, last_error=str(exc)[:2000])
        )


def reports_with_pending_documents(
    session: Session, limit: int = 100, *, recorded_before: datetime | None = None
) -> list[int]:
    """Reports with an SR document recorded but not stored yet (for a retry sweep: call
    :func:`publish_documents` for each), oldest first. ``recorded_before`` leaves out
    documents the request that recorded them is probably storing right now."""
    query = select(ReportDocument.report_id).where(ReportDocument.stored_at.is_(None))
    if recorded_before is not None:
        query = query.where(ReportDocument.created_at < recorded_before)
    query = (
        query.group_by(ReportDocument.report_id).order_by(func.min(ReportDocument.id)).limit(limit)
    )
    return list(session.scalars(query))
