"""Priorities, due times and SLA flags, pure (plain values in, plain values out).

A task is due ``sla(priority)`` after its study became complete. It is *near due* once less
than ``near_due_fraction`` of that time is left, and *overdue* from its due time on. UPS
carries the priority as Scheduled Procedure Step Priority (0074,1200): HIGH, MEDIUM or LOW
(PS3.3 C.30.1, Unified Procedure Step Scheduled Procedure Information Module).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from telerad.settings import WorklistSettings
from telerad.worklist.errors import InvalidWorklistInput


class Priority(enum.StrEnum):
    """How urgent a reading is."""

    STAT = "STAT"
    URGENT = "URGENT"
    ROUTINE = "ROUTINE"


#: Priority → Scheduled Procedure Step Priority (0074,1200).
UPS_PRIORITY = {Priority.STAT: "HIGH", Priority.URGENT: "MEDIUM", Priority.ROUTINE: "LOW"}
PRIORITY_FROM_UPS = {value: key for key, value in UPS_PRIORITY.items()}
#: Sort rank, most urgent first.
RANK = {Priority.STAT: 0, Priority.URGENT: 1, Priority.ROUTINE: 2}


def parse_priority(value: str) -> Priority:
    """``STAT``, ``URGENT`` or ``ROUTINE`` (any case); :class:`InvalidWorklistInput` else."""
    try:
        return Priority(value.strip().upper())
    except ValueError:
        raise InvalidWorklistInput(
            f"priority must be STAT, URGENT or ROUTINE, not {value[:32]!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class WorklistPolicy:
    """The SLA and lease rules, from ``settings.worklist``."""

    sla: dict[Priority, timedelta]
    near_due_fraction: float
    lease: timedelta
    escalation_repeat: timedelta | None
    batch: int = 200
    auto_assign: bool = True

    @classmethod
    def from_settings(cls, settings: WorklistSettings) -> WorklistPolicy:
        """The policy the settings describe."""
        repeat = settings.escalation_repeat_minutes
        return cls(
            sla={
                Priority.STAT: timedelta(minutes=settings.sla_minutes_stat),
                Priority.URGENT: timedelta(minutes=settings.sla_minutes_urgent),
                Priority.ROUTINE: timedelta(minutes=settings.sla_minutes_routine),
            },
            near_due_fraction=settings.near_due_fraction,
            lease=timedelta(minutes=settings.lease_minutes),
            escalation_repeat=timedelta(minutes=repeat) if repeat else None,
            batch=settings.sweep_batch,
            auto_assign=settings.auto_assign,
        )

    def due_at(self, priority: Priority, completed_at: datetime) -> datetime:
        """When the report of a study completed at ``completed_at`` is due."""
        return completed_at + self.sla[priority]

    def near_due_from(self, priority: Priority, due_at: datetime) -> datetime:
        """From when on a task due at ``due_at`` counts as near due."""
        return due_at - self.sla[priority] * self.near_due_fraction


def sla_flag(policy: WorklistPolicy, priority: Priority, due_at: datetime, now: datetime) -> str:
    """``overdue``, ``near_due`` or ``""`` for a task at ``now``."""
    if now >= due_at:
        return "overdue"
    if now >= policy.near_due_from(priority, due_at):
        return "near_due"
    return ""
