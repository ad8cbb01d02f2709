"""The catalog schema (SQLAlchemy 2 declarative models).

One schema and one Alembic history serve the whole central database: the DICOM catalog
(patients, studies, series, instances, conflicts), the accounts the catalog's access rules need
(sites, users, tokens), the latest study manifests (completeness) and the append-only audit
log. ``storage`` owns the schema because every other package depends on it; the domain rules
for accounts live in :mod:`telerad.worklist` and the authorization rules in
:mod:`telerad.viewer_api`.

Attributes kept as columns are the QIDO-RS / C-FIND matching and return keys of PS3.18
§10.6.1.2 (Tables 10.6.1-5 and 10.6.3-3/4/5) and PS3.4 C.6.1.1; every other attribute is served
from the instance's precomputed DICOM JSON (PS3.18 Annex F).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Timezone-aware now, for default timestamps."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every catalog table."""


class Site(Base):
    """A sending hospital: its issuer of patient IDs and its modalities."""

    __tablename__ = "sites"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64))
    accept_any_ae: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    modalities: Mapped[list[Modality]] = relationship(
        back_populates="site", cascade="all, delete-orphan", lazy="selectin"
    )


class Modality(Base):
    """A DICOM device of a site, known by its AE title (and address for replies)."""

    __tablename__ = "site_modalities"
    __table_args__ = (UniqueConstraint("ae_title", name="uq_site_modalities_ae"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    ae_title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    site: Mapped[Site] = relationship(back_populates="modalities")


class User(Base):
    """A person who signs in: admin, radiographer, radiologist or referrer."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(128), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReaderSite(Base):
    """A site whose studies a radiologist may read."""

    __tablename__ = "reader_sites"
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    site_id: Mapped[int] = mapped_column(
        ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True
    )


class SiteToken(Base):
    """A per-site API token (gateways); only its SHA-256 is stored."""

    __tablename__ = "site_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Patient(Base):
    """A patient, unique per (Issuer of Patient ID, Patient ID)."""

    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("issuer", "patient_id", name="uq_patients_issuer_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    patient_name: Mapped[str] = mapped_column(String(1024), default="")
    name_alphabetic: Mapped[str] = mapped_column(String(340), default="", index=True)
    name_ideographic: Mapped[str] = mapped_column(String(340), default="", index=True)
    name_phonetic: Mapped[str] = mapped_column(String(340), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")


class Study(Base):
    """A study and its study-level matching keys."""

    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    referring_physician_name: Mapped[str] = mapped_column(String(340), default="")
    study_description: Mapped[str] = mapped_column(String(1024), default="")
    modalities_in_study: Mapped[str] = mapped_column(String(256), default="")
    specific_character_set: Mapped[str] = mapped_column(String(128), default="")
    timezone_offset: Mapped[str] = mapped_column(String(8), default="")
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Series(Base):
    """A series and its series-level matching keys."""

    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str] = mapped_column(String(1024), default="")
    body_part_examined: Mapped[str] = mapped_column(String(64), default="")
    pps_start_date: Mapped[str] = mapped_column(String(8), default="")
    pps_start_time: Mapped[str] = mapped_column(String(16), default="")
    specific_character_set: Mapped[str] = mapped_column(String(128), default="")
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Instance(Base):
    """A stored SOP instance: where its bytes are and what they are."""

    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    bits_allocated: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(512), unique=True)
    #: JSON list, one entry per frame, each a list of [offset, length] byte ranges in the object.
    frame_ranges: Mapped[str | None] = mapped_column(Text)
    #: The instance's DICOM JSON (PS3.18 Annex F) without pixel data, with BulkDataURIs.
    metadata_json: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(128), default="")
    ingested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RejectedInstance(Base):
    """A copy refused because another instance with the same SOP Instance UID is stored."""

    __tablename__ = "rejected_instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    stored_sha256: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(512), unique=True)
    reason: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(128), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    """One access to or change of patient data. Append-only (enforced by triggers)."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_study", "study_uid"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    actor_role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    resource: Mapped[str] = mapped_column(String(512))
    study_uid: Mapped[str | None] = mapped_column(String(64))
    patient_pk: Mapped[int | None] = mapped_column(Integer)
    source_address: Mapped[str] = mapped_column(String(64), default="")
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    detail: Mapped[str] = mapped_column(Text, default="")


class StudyManifest(Base):
    """The latest manifest a gateway posted for a study, and whether it is fulfilled.

    Keyed by Study Instance UID rather than by the study row, so that a manifest can arrive
    before any instance of its study. ``site_id`` is the site the study belongs to (or, before
    the study exists, the site that posted the manifest).
    """

    __tablename__ = "study_manifests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), index=True)
    expected_instances: Mapped[int] = mapped_column(Integer)
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    manifest_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: When the study last became complete; ``None`` while it is not complete.
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ManifestEntry(Base):
    """One instance a manifest lists: its SOP Instance UID and the SHA-256 of its Part-10 file."""

    __tablename__ = "study_manifest_entries"
    manifest_pk: Mapped[int] = mapped_column(
        ForeignKey("study_manifests.id", ondelete="CASCADE"), primary_key=True
    )
    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))


# The worklist and report tables live in their own modules; importing them here puts them in
# Base.metadata.
from telerad.storage import report_models as _report_models  # noqa: E402, F401
from telerad.storage import worklist_models as _worklist_models  # noqa: E402, F401
