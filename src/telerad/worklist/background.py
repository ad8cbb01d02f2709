"""The worklist's background loop: intake sweep, lease expiry, SLA flags and escalation.

One :class:`WorklistLoop` runs in each API process (started by the app's lifespan, so
``telerad serve`` and ``telerad api`` both have it); several processes sharing one database
never do a piece of work twice (row locks with ``SKIP LOCKED`` on PostgreSQL, ``BEGIN
IMMEDIATE`` on SQLite, and the intake's unique constraint). Each step runs in a transaction of
its own and a failing step is logged and retried at the next pass, so one bad row or a
database outage never stops the loop. The clock is injectable for tests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from telerad.storage import Archive, session_factory
from telerad.worklist.claims import Expired, expire_leases
from telerad.worklist.escalation import (
    Escalation,
    EscalationHook,
    escalate_overdue,
    flag_near_due,
)
from telerad.worklist.intake import IntakeResult, intake_study, studies_awaiting_intake
from telerad.worklist.report_publish import (
    PublishResult,
    publish_documents,
    reports_with_pending_documents,
)
from telerad.worklist.sla import WorklistPolicy

logger = logging.getLogger(__name__)
Clock = Callable[[], datetime]
#: A pending SR document younger than this is left to the request that recorded it.
PUBLISH_GRACE = timedelta(seconds=60)


def utc_now() -> datetime:
    """The real clock."""
    return datetime.now(UTC)


@dataclass
class PassReport:
    """What one pass of the loop did."""

    intake: list[IntakeResult] = field(default_factory=list)
    expired: list[Expired] = field(default_factory=list)
    near_due: list[int] = field(default_factory=list)
    escalated: list[Escalation] = field(default_factory=list)
    published: list[PublishResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class WorklistLoop:
    """Runs :meth:`run_once` every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(
        self,
        engine: Engine,
        policy: WorklistPolicy,
        *,
        interval: float = 30.0,
        clock: Clock = utc_now,
        on_escalated: EscalationHook | None = None,
        archive: Archive | None = None,
        institution: str = "telerad",
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.interval = interval
        self.clock = clock
        self.on_escalated = on_escalated
        self.archive = archive
        self.institution = institution
        self._readers: sessionmaker[Session] = session_factory(engine)
        self._writers: sessionmaker[Session] = session_factory(engine, writer=True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: datetime | None = None) -> PassReport:
        """One pass: intake sweep, lease expiry, near-due flags, escalation, and report SR
        documents whose storing failed (with an ``archive``)."""
        now = now or self.clock()
        report = PassReport()
        self._step(report, "intake", lambda: report.intake.extend(self._sweep(now)))
        self._step(report, "leases", lambda: report.expired.extend(self._expire(now)))
        self._step(report, "near-due", lambda: report.near_due.extend(self._flag(now)))
        self._step(report, "escalation", lambda: report.escalated.extend(self._escalate(now)))
        self._step(report, "documents", lambda: report.published.extend(self._publish(now)))
        return report

    def start(self) -> None:
        """Run the loop on a daemon thread (the first pass at once)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="worklist-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to stop and wait for the pass in progress to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        """True while the loop's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval)

    def _step(self, report: PassReport, name: str, work: Callable[[], object]) -> None:
        try:
            work()
        except Exception as exc:
            logger.exception("worklist loop: %s failed", name)
            report.errors.append(f"{name}: {type(exc).__name__}")

    def _sweep(self, now: datetime) -> list[IntakeResult]:
        with self._readers() as session:
            pending = studies_awaiting_intake(session, self.policy.batch)
        return [intake_study(self.engine, uid, self.policy, now) for uid in pending]

    def _expire(self, now: datetime) -> list[Expired]:
        with self._writers.begin() as session:
            return expire_leases(session, now, self.policy.batch)

    def _flag(self, now: datetime) -> list[int]:
        with self._writers.begin() as session:
            return flag_near_due(session, self.policy, now)

    def _escalate(self, now: datetime) -> list[Escalation]:
        with self._writers.begin() as session:
            return escalate_overdue(session, self.policy, now, self.on_escalated)

    def _publish(self, now: datetime) -> list[PublishResult]:
        """Store report SR documents left pending (storage was down when the report was
        issued). Storing is idempotent (the same bytes are rebuilt), so two processes racing
        on one document cost a duplicate build, never a duplicate instance."""
        if self.archive is None:
            return []
        with self._readers() as session:
            pending = reports_with_pending_documents(
                session, self.policy.batch, recorded_before=now - PUBLISH_GRACE
            )
        return [publish_documents(self.archive, rid, self.institution) for rid in pending]
