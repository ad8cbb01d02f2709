"""The report schema: report versions and the DICOM SR documents issued for them.

The tables belong to the one central schema (imported by :mod:`telerad.storage.models` so that
``Base.metadata`` holds them and Alembic revision ``0004`` creates them); the rules that act on
them (templates, states, signatures, SR/PDF/FHIR) live in :mod:`telerad.worklist`.

A *report* row is one version of the report of one reading task: the original (``sequence`` 0,
``kind`` ``report``) or an addendum (``sequence`` 1, 2, …, ``kind`` ``addendum``) whose
``predecessor_id`` names the version it amends. ``UNIQUE(predecessor_id)`` keeps the chain
linear (a version has at most one successor) and ``UNIQUE(task_id, sequence)`` allows one
original per task. A final row is immutable: the migration installs triggers that make UPDATE
and DELETE of a row whose status is ``final`` fail inside the database.

A *report document* is one DICOM SR instance issued for a version (a preliminary one, then the
final one), with the SOP Instance UID fixed before the object is stored so that storing it can
be retried without creating a second instance.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from telerad.storage.models import Base, utcnow


class Report(Base):
    """One version of a structured report (original or addendum)."""

    __tablename__ = "reports"
    __table_args__ = (
        UniqueConstraint("task_id", "sequence", name="uq_reports_task_sequence"),
        UniqueConstraint("predecessor_id", name="uq_reports_predecessor"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    #: The study's site (copied from the study when the report is created, for visibility).
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), index=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("reading_tasks.id"), index=True)
    #: 0 for the original report, n for the n-th addendum.
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    #: ``report`` or ``addendum``.
    kind: Mapped[str] = mapped_column(String(16), default="report")
    predecessor_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id"))
    template: Mapped[str] = mapped_column(String(32))
    #: ``draft``, ``preliminary`` or ``final``.
    status: Mapped[str] = mapped_column(String(16), default="draft", index=True)
    #: Optimistic concurrency: +1 on every change (the ETag).
    version: Mapped[int] = mapped_column(Integer, default=1)
    #: The content as canonical JSON (sections, coded fields, key images, critical flag).
    content_json: Mapped[str] = mapped_column(Text)
    critical: Mapped[bool] = mapped_column(Boolean, default=False)
    author_user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    preliminary_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    signed_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    #: The signer's display name as it was when he signed.
    signer_name: Mapped[str] = mapped_column(String(128), default="")
    signed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: SHA-256 of the canonical content (set when signed).
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    #: SHA-256 over the content hash, the signature and the predecessor's record hash.
    record_sha256: Mapped[str | None] = mapped_column(String(64))
    #: The series every SR document of this report chain is stored in.
    sr_series_uid: Mapped[str] = mapped_column(String(64))


class ReportDocument(Base):
    """A DICOM SR instance issued for a report version; ``stored_at`` once it is in the study."""

    __tablename__ = "report_documents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    #: ``preliminary`` or ``final``: the report status the document records.
    status: Mapped[str] = mapped_column(String(16))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: SHA-256 of the stored Part-10 object.
    sha256: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
