"""The append-only audit log: who read or changed which patient data, when, from where.

Rows are only ever inserted; the migration installs database triggers that make UPDATE and
DELETE on ``audit_events`` fail, so not even a bug in telerad can rewrite history.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from telerad.storage.models import AuditEvent, Study


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
) -> int:
    """Append one event per study touched (one event without a study if none).

    The caller commits ``session``; the patient of each study is recorded by its catalog key.
    Returns the number of events added.
    """
    uids = sorted(set(study_uids))
    patients: dict[str, int] = {}
    if uids:
        rows = session.execute(
            select(Study.study_uid, Study.patient_pk).where(Study.study_uid.in_(uids))
        )
        patients = {uid: pk for uid, pk in rows}
    targets: list[str | None] = list(uids) or [None]
    for uid in targets:
        session.add(
            AuditEvent(
                actor=actor,
                actor_role=actor_role,
                action=action,
                resource=resource[:512],
                study_uid=uid,
                patient_pk=patients.get(uid) if uid else None,
                source_address=source_address[:64],
                outcome=outcome,
                detail=detail,
            )
        )
    return len(uids) or 1
