"""The append-only audit log: who read or changed which patient data, when, from where.

Rows are only ever inserted; the migration installs database triggers that make UPDATE and
DELETE on ``audit_events`` fail, so not even a bug in telerad can rewrite history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

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
    return record_accesses(
        session,
        [
            {
                "actor": actor, "actor_role": actor_role, "action": action,
                "resource": resource, "source_address": source_address,
                "study_uids": study_uids, "outcome": outcome, "detail": detail, "at": at,
            }
        ],
    )  # fmt: skip


def record_accesses(session: Session, accesses: Sequence[Mapping[str, Any]]) -> int:
    """:func:`record_access` for many accesses (each a mapping of its keyword arguments):
    one lookup of the patients of every study named, one multi-row INSERT. The batched audit
    writer calls this; it costs a fraction of one call per access. Returns the rows added."""
    now = utcnow()
    prepared = [(access, sorted(set(access.get("study_uids", ())))) for access in accesses]
    named = sorted({uid for _, uids in prepared for uid in uids})
    patients: dict[str, int] = {}
    for start in range(0, len(named), _LOOKUP_CHUNK):
        found = session.execute(
            _PATIENTS_OF_STUDIES, {"uids": named[start : start + _LOOKUP_CHUNK]}
        )
        patients.update((uid, pk) for uid, pk in found)
    rows = [
        {
            "at": access.get("at") or now,
            "actor": access["actor"],
            "actor_role": access["actor_role"],
            "action": access["action"],
            "resource": access["resource"][:512],
            "study_uid": uid,
            "patient_pk": patients.get(uid) if uid else None,
            "source_address": access["source_address"][:64],
            "outcome": access.get("outcome", "success"),
            "detail": access.get("detail", ""),
        }
        for access, uids in prepared
        for uid in (uids or [None])
    ]
    if rows:
        # Core INSERT (one executemany), not ORM objects: the audit write is on every read's path.
        session.execute(_INSERT_EVENT, rows)
    return len(rows)


#: Study UIDs per patient lookup: well below any database's limit on bound parameters.
_LOOKUP_CHUNK = 500
#: Built once (a statement costs more to build than to run here).
_PATIENTS_OF_STUDIES = select(Study.study_uid, Study.patient_pk).where(
    Study.study_uid.in_(bindparam("uids", expanding=True))
)
_INSERT_EVENT = insert(AuditEvent)
