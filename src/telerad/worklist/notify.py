"""The report event hook: how the report lifecycle tells delivery what happened.

Contract (for the delivery code that implements notifications):

- register a listener once at start-up with :func:`register_report_listener`; it returns a
  function that unregisters it (tests);
- the listener is called as ``listener(kind, event, session)`` with ``kind`` one of
  :data:`EVENT_KINDS`:

  ``preliminary``  a preliminary report was issued (also when re-issued after edits);
  ``final``        the original report was signed;
  ``addendum``     an addendum was signed (the report chain has a new final version);
  ``critical``     a version carrying a critical finding was issued (preliminary) or signed:
                   sent *in addition to* the event above, once per issue, so that delivery can
                   notify at once and track the acknowledgement;

- it runs **inside the database transaction** that changed the report, with that transaction's
  SQLAlchemy ``session``: write notification rows (an outbox) there, so that they commit
  atomically with the report; do no network I/O in the listener (send from a background
  worker). An exception raised by a listener aborts the report change (nothing half-done);
- with no listener registered, events are dropped (the default is a no-op).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

EVENT_KINDS = ("preliminary", "final", "addendum", "critical")


@dataclass(frozen=True, slots=True)
class ReportEvent:
    """What happened to which report (plain values; no patient name or ID)."""

    report_id: int
    study_uid: str
    site_id: int | None
    task_id: int
    sequence: int
    predecessor_id: int | None
    status: str
    #: FHIR DiagnosticReport.status of the version (preliminary, final, amended, appended).
    fhir_status: str
    critical: bool
    #: Labels of the coded critical findings (may be empty when flagged by hand).
    critical_findings: tuple[str, ...]
    actor: str
    actor_user_id: int
    at: datetime


#: ``listener(kind, event, session)``; ``session`` is the SQLAlchemy session of the change.
ReportListener = Callable[[str, ReportEvent, Any], None]
_listeners: list[ReportListener] = []
_lock = threading.Lock()


def register_report_listener(listener: ReportListener) -> Callable[[], None]:
    """Call ``listener`` for every report event from now on; returns its unregistration."""
    with _lock:
        _listeners.append(listener)

    def unregister() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return unregister


def on_report_event(kind: str, event: ReportEvent, session: Any) -> None:
    """Deliver one event to every listener (in registration order). See the module docstring."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown report event kind {kind!r}")
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(kind, event, session)
