"""The worklist schema: orders, reading tasks and their history, routing, pools and readers.

The tables belong to the one central schema (imported by :mod:`telerad.storage.models` so that
``Base.metadata`` holds them and Alembic revision ``0003`` creates them); the rules that act on
them live in :mod:`telerad.worklist`.

A *reading request* is the county's order for a study (priority, clinical question, referring
doctor). A *reading task* is one unit of reading work, modelled on a Unified Procedure Step
(PS3.4 Annex CC): its ``state`` is one of the UPS states (``SCHEDULED``, ``IN PROGRESS``,
``COMPLETED``, ``CANCELED``), ``transaction_uid`` is the UPS Transaction UID (0008,1195) of the
reader who holds it (PS3.4 CC.1.1) and ``workitem_uid`` its SOP Instance UID as a UPS-RS workitem
(PS3.18 chapter 11). ``(study_uid, study_generation)`` is unique: intake creates at most one task
per completion of a study, whoever races to do it.
"""

from __future__ import annotations

from datetime import datetime

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
from sqlalchemy.orm import Mapped, mapped_column

from telerad.storage.models import Base, utcnow


class ReadingRequest(Base):
    """The county's order for reading one study (before or after the study arrives)."""

    __tablename__ = "reading_requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), index=True)
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    #: ``STAT``, ``URGENT`` or ``ROUTINE``.
    priority: Mapped[str] = mapped_column(String(8), default="ROUTINE")
    clinical_question: Mapped[str] = mapped_column(Text, default="")
    history: Mapped[str] = mapped_column(Text, default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    #: The referring doctor (a ``referrer`` user of the same site), set explicitly by the site.
    referrer_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    requested_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReadingPool(Base):
    """A group of radiologists sharing tasks, such as "neuro" or "chest"."""

    __tablename__ = "reading_pools"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReadingPoolMember(Base):
    """A radiologist in a pool."""

    __tablename__ = "reading_pool_members"
    pool_id: Mapped[int] = mapped_column(
        ForeignKey("reading_pools.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class ReaderProfile(Base):
    """A radiologist's working hours, cap on open tasks and subspecialties.

    ``working_hours`` is JSON ``{"mon": [["08:00", "17:00"]], ...}`` in ``timezone`` (an IANA
    name); ``None`` means always available. ``max_open_tasks`` ``None`` means no cap.
    """

    __tablename__ = "reader_profiles"
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    working_hours: Mapped[str | None] = mapped_column(Text)
    max_open_tasks: Mapped[int | None] = mapped_column(Integer)
    #: Comma-separated, e.g. ``neuro,chest``.
    subspecialties: Mapped[str] = mapped_column(String(256), default="")
    #: When a task was last assigned to him (the tie-breaker of load balancing).
    last_assigned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RoutingRule(Base):
    """Where tasks go: the first active rule (lowest ``position``) whose criteria all match.

    A ``None`` criterion matches anything. The target is a radiologist, a pool, or both (the
    user first, the pool when he is not eligible). ``escalation_pool_id`` receives the rule's
    overdue tasks. ``set_priority`` is the priority of a study that comes without an order.
    """

    __tablename__ = "routing_rules"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0, index=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    priority: Mapped[str | None] = mapped_column(String(8))
    assignee_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("reading_pools.id", ondelete="SET NULL"))
    escalation_pool_id: Mapped[int | None] = mapped_column(
        ForeignKey("reading_pools.id", ondelete="SET NULL")
    )
    set_priority: Mapped[str | None] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReadingTask(Base):
    """One reading of one completion of a study: a UPS-like workitem (PS3.4 Annex CC)."""

    __tablename__ = "reading_tasks"
    __table_args__ = (
        UniqueConstraint("study_uid", "study_generation", name="uq_reading_tasks_generation"),
        Index("ix_reading_tasks_state_due", "state", "due_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: SOP Instance UID of the task as a UPS-RS workitem (PS3.18 §11).
    workitem_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    #: 1 for the first completion of the study, +1 for each follow-up.
    study_generation: Mapped[int] = mapped_column(Integer, default=1)
    #: The study's completion (manifest ``completed_at``) this task has taken in.
    study_completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), index=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("reading_requests.id"))
    #: UPS Procedure Step State (0074,1000): SCHEDULED, IN PROGRESS, COMPLETED, CANCELED.
    state: Mapped[str] = mapped_column(String(16), default="SCHEDULED")
    priority: Mapped[str] = mapped_column(String(8), default="ROUTINE")
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    modality: Mapped[str] = mapped_column(String(64), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    clinical_question: Mapped[str] = mapped_column(Text, default="")
    assigned_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    pool_id: Mapped[int | None] = mapped_column(
        ForeignKey("reading_pools.id", ondelete="SET NULL"), index=True
    )
    routing_rule_id: Mapped[int | None] = mapped_column(
        ForeignKey("routing_rules.id", ondelete="SET NULL")
    )
    claimed_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: UPS Transaction UID (0008,1195) of the current holder (PS3.4 CC.1.1).
    transaction_uid: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    follow_up_of_task_id: Mapped[int | None] = mapped_column(ForeignKey("reading_tasks.id"))
    #: ``None``, ``near_due`` or ``overdue`` (SLA flags of the background loop).
    sla_flag: Mapped[str | None] = mapped_column(String(16))
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    escalated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    canceled_reason: Mapped[str | None] = mapped_column(Text)


class TaskEvent(Base):
    """One step in a task's history. Append-only (enforced by triggers, as the audit log)."""

    __tablename__ = "task_events"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("reading_tasks.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
