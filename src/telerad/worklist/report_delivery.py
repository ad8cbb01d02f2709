"""Delivery's extensions of the report lifecycle: who else may read a report, and who is told.

Two hooks of the reports module are implemented here and installed once per process by
:func:`install_delivery_hooks` (the API's lifespan calls it):

- a visibility rule: the referring doctor named on the study's order (an explicit referral at
  the site) reads the study's preliminary and final versions, never drafts;
- a report listener: preliminary, final and addendum events notify the county side (the
  site's inbox and webhook, the referrer's inbox); a critical finding does the same with
  acknowledgement required, re-sent until acknowledged. The rows are written in the
  transaction that changed the report (an outbox: no event is lost, none sent for a rolled
  back change).
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.orm import Session

from telerad.storage import Report
from telerad.worklist.accounts import Principal, Role
from telerad.worklist.delivery import is_referrer_of, notify_report_event
from telerad.worklist.notify import ReportEvent, register_report_listener
from telerad.worklist.report_access import register_report_visibility
from telerad.worklist.report_states import ReportStatus

_installed = False
_lock = threading.Lock()


def referrer_may_read(principal: Principal, report: Report, session: Session) -> bool:
    """A referrer reads the issued versions of the studies he referred (of his own site)."""
    if principal.role != Role.REFERRER or principal.is_site_token:
        return False
    if report.status == ReportStatus.DRAFT or report.site_id is None:
        return False
    if report.site_id != principal.site_id:
        return False
    return is_referrer_of(session, principal, report.study_uid)


def deliver_report_event(kind: str, event: ReportEvent, session: Any) -> None:
    """Queue the notifications of one report event (in the report's transaction)."""
    notify_report_event(
        session,
        kind,
        report_id=event.report_id,
        study_uid=event.study_uid,
        status=event.fhir_status,
        version=event.sequence,
        extra={"critical": event.critical},
        now=event.at,
    )


def install_delivery_hooks() -> None:
    """Register the visibility rule and the report listener (once per process)."""
    global _installed
    with _lock:
        if _installed:
            return
        register_report_visibility(referrer_may_read)
        register_report_listener(deliver_report_event)
        _installed = True
