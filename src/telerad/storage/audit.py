"""The append-only audit log: who read or changed which patient data, when, from where.

Rows are only ever inserted; the migration installs database triggers that make UPDATE and
DELETE on ``audit_events`` fail, so not even a bug in telerad can rewrite history.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session

from telerad.storage.models import AuditEvent, Study, utcnow


def record_access(
    session: Session,
    *,
    actor: str,
    actor_role: str,
    action: str,
    resource: str,
    source_address: str,
    study_uids: Iterable[str] = (),
    outcome: str = "success",
    detail: str = "",
    at: datetime | None = None,
) -> int:
    """Append one event per study touched (one event without a study if none).

    The caller commits ``session``; the patient of each study is recorded by its catalog key.
    ``at`` is when the access happened (default: now; a writer that records later passes it).
    Returns the number of events added.
    """
    at = at or utcnow()
    uids = sorted(set(study_uids))
    patients: dict[str, int] = {}
    if uids:
        rows_found = session.execute(_PATIENTS_OF_STUDIES, {"uids": uids})
        patients = {uid: pk for uid, pk in rows_found}
    targets: list[str | None] = list(uids) or [None]
    rows = [
        {
            "at": at,
            "actor": actor,
            "actor_role": actor_role,
            "action": action,
            "resource": resource[:512],
            "study_uid": uid,
            "patient_pk": patients.get(uid) if uid else None,
            "source_address": source_address[:64],
            "outcome": outcome,
            "detail": detail,
        }
        for uid in targets
    ]
    # Core INSERT (one executemany), not ORM objects: the audit write is on every read's path.
    session.execute(_INSERT_EVENT, rows)
    return len(uids) or 1


#: Built once (a statement costs more to build than to run here).
_PATIENTS_OF_STUDIES = select(Study.study_uid, Study.patient_pk).where(
    Study.study_uid.in_(bindparam("uids", expanding=True))
)
_INSERT_EVENT = insert(AuditEvent)
