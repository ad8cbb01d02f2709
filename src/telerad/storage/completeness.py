"""Study completeness: the centre's side of the gateway's study manifest (DESIGN.md, step 3).

DICOM has no "study complete" attribute. A gateway that judges a study stable at the edge posts
a *manifest*: every SOP Instance UID it holds for the study with the SHA-256 of the Part-10
file it forwarded. The centre keeps the latest manifest of each study (a new one replaces the
previous one), keyed by Study Instance UID so that it may arrive before any instance, and calls
the study complete only when every entry is stored here with the same SHA-256.

Two paths change the state, each in one transaction that locks the study row and then the
manifest row (the same order, so they cannot deadlock):

- :func:`submit_manifest` records a manifest and evaluates it;
- the ingest path calls :func:`note_stored_instance` for every newly stored instance: one the
  manifest does not list with that hash re-opens a complete study, and the last instance the
  manifest was waiting for completes it.

``completed_at`` is written only on the transition to complete and cleared when the study
re-opens. ``became_complete`` tells the caller that *this* call completed the study: the hook
where worklist intake creates the reading task.

Errors: :class:`~telerad.storage.errors.InvalidManifest`,
:class:`~telerad.storage.errors.InvalidKey` (the study UID),
:class:`~telerad.storage.errors.StudyNotFound` (a study of another site),
:class:`~telerad.storage.errors.StorageUnavailable`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine, Row, Select, delete, insert, or_, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from telerad.storage.database import session_factory
from telerad.storage.errors import InvalidKey, InvalidManifest, StorageUnavailable, StudyNotFound
from telerad.storage.keys import validate_uid
from telerad.storage.models import Instance, ManifestEntry, Series, Study, StudyManifest, utcnow

#: Largest manifest accepted: far above any real study, small enough to evaluate in one query.
MAX_MANIFEST_ENTRIES = 100_000
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_ATTEMPTS = 3
if TYPE_CHECKING:
    #: (site_id, num_instances) of a study.
    StudyRow = Row[int | None, int]


@dataclass(frozen=True, slots=True)
class StudyCompleteness:
    """How far a study's latest manifest is fulfilled at the centre.

    ``received`` counts the instances stored for the study, ``expected`` the entries of the
    latest manifest (0 without one). ``missing`` lists manifest entries not stored in this
    study, ``mismatched`` those stored with another SHA-256. ``site_id`` is the site the study
    belongs to, for the adapters' visibility checks. ``became_complete`` is true only for the
    call that made the study complete.
    """

    study_uid: str
    site_id: int | None
    received: int
    expected: int
    complete: bool
    missing: tuple[str, ...]
    mismatched: tuple[str, ...]
    manifest_at: datetime | None
    completed_at: datetime | None
    became_complete: bool = False


def submit_manifest(
    engine: Engine, study_uid: str, entries: Mapping[str, str], site_id: int | None
) -> StudyCompleteness:
    """Record ``entries`` as the latest manifest of ``study_uid`` and evaluate it.

    Parameters
    ----------
    engine
        The catalog; the manifest is written in one transaction of its own.
    study_uid
        Study Instance UID; the study need not have any instance stored yet.
    entries
        SOP Instance UID → SHA-256 (64 lowercase hex digits) of its Part-10 file; at least
        one entry and at most :data:`MAX_MANIFEST_ENTRIES`.
    site_id
        The posting site; ``None`` for an administrator, who may post for any study.

    Raises
    ------
    InvalidKey, InvalidManifest, StudyNotFound, StorageUnavailable
    """
    validate_uid(study_uid, "Study Instance UID")
    checked = _validated(entries)
    writer = session_factory(engine, writer=True)
    for attempt in range(_ATTEMPTS):
        try:
            with writer.begin() as session:
                return _record(session, study_uid, checked, site_id)
        except sa_exc.IntegrityError:
            if attempt == _ATTEMPTS - 1:  # two first manifests raced; the retry finds the row
                raise
        except sa_exc.OperationalError as exc:
            raise StorageUnavailable(f"catalog unavailable: {exc.orig}") from exc
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def study_completeness(session: Session, study_uid: str) -> StudyCompleteness | None:
    """The completeness of ``study_uid``; ``None`` if neither study nor manifest is known."""
    validate_uid(study_uid, "Study Instance UID")
    study = _study(session, study_uid, lock=False)
    manifest = session.scalar(_manifest_query(study_uid))
    if manifest is None:
        if study is None:
            return None
        return StudyCompleteness(
            study_uid, study.site_id, study.num_instances, 0, False, (), (), None, None
        )
    return _status(study, manifest, _compared(session, manifest), became_complete=False)


def note_stored_instance(
    session: Session, study_uid: str, sop_instance_uid: str, sha256: str
) -> bool:
    """Re-evaluate a study after an instance was newly stored in it (inside the ingest's
    transaction, after the instance row was added; the study row is already locked).

    Returns True if this instance completed the study.
    """
    manifest = session.scalar(_manifest_query(study_uid).with_for_update())
    if manifest is None:
        return False
    listed = session.scalar(
        select(ManifestEntry.sha256).where(
            ManifestEntry.manifest_pk == manifest.id,
            ManifestEntry.sop_instance_uid == sop_instance_uid,
        )
    )
    fulfilled = listed == sha256 and not _outstanding(session, manifest.id, study_uid, limit=1)
    return _set_complete(manifest, fulfilled)


def _validated(entries: Mapping[str, str]) -> dict[str, str]:
    if not entries:
        raise InvalidManifest("a manifest lists at least one instance")
    if len(entries) > MAX_MANIFEST_ENTRIES:
        raise InvalidManifest(f"a manifest lists at most {MAX_MANIFEST_ENTRIES} instances")
    for uid, digest in entries.items():
        try:
            validate_uid(uid, "SOP Instance UID")
        except InvalidKey as exc:
            raise InvalidManifest(str(exc)) from exc
        if not isinstance(digest, str) or _SHA256_RE.fullmatch(digest) is None:
            raise InvalidManifest(f"sha256 of {uid} must be 64 lowercase hex digits")
    return dict(entries)


def _record(
    session: Session, study_uid: str, entries: dict[str, str], site_id: int | None
) -> StudyCompleteness:
    study = _study(session, study_uid, lock=True)
    manifest = session.scalar(_manifest_query(study_uid).with_for_update())
    owner = _owner(study, manifest, site_id)
    if manifest is None:
        manifest = StudyManifest(study_uid=study_uid, complete=False)
        session.add(manifest)
    manifest.site_id = owner
    manifest.expected_instances = len(entries)
    manifest.manifest_at = utcnow()
    session.flush()
    session.execute(delete(ManifestEntry).where(ManifestEntry.manifest_pk == manifest.id))
    rows = [
        {"manifest_pk": manifest.id, "sop_instance_uid": uid, "sha256": digest}
        for uid, digest in entries.items()
    ]
    session.execute(insert(ManifestEntry), rows)
    compared = _compared(session, manifest)
    became_complete = _set_complete(manifest, not compared[0] and not compared[1])
    return _status(study, manifest, compared, became_complete)


def _owner(
    study: StudyRow | None, manifest: StudyManifest | None, site_id: int | None
) -> int | None:
    """The site the study belongs to; :class:`StudyNotFound` if not the caller's.

    As in ingest, a study stored without a site (by an administrator) takes any site's data.
    """
    if study is not None and study.site_id is not None:
        owner: int | None = study.site_id
    elif manifest is not None and manifest.site_id is not None:
        owner = manifest.site_id
    else:
        owner = site_id
    if site_id is not None and owner != site_id:
        raise StudyNotFound("no such study")
    return owner


def _compared(session: Session, manifest: StudyManifest) -> tuple[list[str], list[str]]:
    """(missing, mismatched) SOP Instance UIDs of the manifest, in UID order."""
    missing: list[str] = []
    mismatched: list[str] = []
    for uid, stored in _outstanding(session, manifest.id, manifest.study_uid):
        (missing if stored is None else mismatched).append(uid)
    return missing, mismatched


def _status(
    study: StudyRow | None,
    manifest: StudyManifest,
    compared: tuple[list[str], list[str]],
    became_complete: bool,
) -> StudyCompleteness:
    owner = study.site_id if study is not None else None
    return StudyCompleteness(
        study_uid=manifest.study_uid,
        site_id=owner if owner is not None else manifest.site_id,
        received=study.num_instances if study is not None else 0,
        expected=manifest.expected_instances,
        complete=manifest.complete,
        missing=tuple(compared[0]),
        mismatched=tuple(compared[1]),
        manifest_at=_aware(manifest.manifest_at),
        completed_at=_aware(manifest.completed_at),
        became_complete=became_complete,
    )


def _set_complete(manifest: StudyManifest, fulfilled: bool) -> bool:
    """Record the outcome; True only on the transition to complete."""
    if fulfilled and not manifest.complete:
        manifest.complete, manifest.completed_at = True, utcnow()
        return True
    if not fulfilled:
        manifest.complete, manifest.completed_at = False, None
    return False


def _study(session: Session, study_uid: str, *, lock: bool) -> StudyRow | None:
    query = select(Study.site_id, Study.num_instances).where(Study.study_uid == study_uid)
    return session.execute(query.with_for_update() if lock else query).first()


def _manifest_query(study_uid: str) -> Select[StudyManifest]:
    return select(StudyManifest).where(StudyManifest.study_uid == study_uid)


def _outstanding(
    session: Session, manifest_pk: int, study_uid: str, limit: int | None = None
) -> list[tuple[str, str | None]]:
    """Manifest entries not stored in the study with their hash, in UID order, each with the
    hash stored under its UID in this study (``None``: missing)."""
    stored = (
        select(Instance.sop_instance_uid, Instance.sha256)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_uid == study_uid)
        .subquery()
    )
    query = (
        select(ManifestEntry.sop_instance_uid, stored.c.sha256)
        .outerjoin(stored, stored.c.sop_instance_uid == ManifestEntry.sop_instance_uid)
        .where(ManifestEntry.manifest_pk == manifest_pk)
        .where(or_(stored.c.sha256.is_(None), stored.c.sha256 != ManifestEntry.sha256))
    )
    query = query.limit(limit) if limit else query.order_by(ManifestEntry.sop_instance_uid)
    return [(uid, digest) for uid, digest in session.execute(query)]


def _aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive timestamps; every timestamp telerad writes is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
