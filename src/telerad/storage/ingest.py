"""The single ingest path: Part-10 bytes in, object stored and catalogued, or nothing at all.

Used by STOW-RS and the all-in-one mode alike. Order of work, and why it leaves nothing behind:

1. parse the header (no pixel decoding) and validate the UIDs — nothing written yet;
2. an instance already catalogued with the same SHA-256 is a no-op; with other content it is a
   conflict: the first copy stays, the new bytes are kept under ``rejected/`` for review;
3. write the object under a key that contains its hash (two contents can never collide);
4. write patient, study, series and instance rows in one transaction, which also re-evaluates
   the study's manifest (:mod:`telerad.storage.completeness`): a new instance it does not list
   with that hash re-opens the study, the last one it was waiting for completes it;
5. if step 4 fails, delete the object written in step 3 unless a committed row refers to it
   (an identical concurrent ingest may have won the race with the same key).

A process killed between 3 and 4 leaves an unreferenced object, which
:meth:`Archive.sweep_orphans` removes.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from telerad.storage.completeness import note_stored_instance
from telerad.storage.database import session_factory
from telerad.storage.errors import InstanceConflict, StorageUnavailable, StudyMismatch
from telerad.storage.keys import instance_key, rejected_key, study_prefix, uid_hash
from telerad.storage.models import Instance, Patient, RejectedInstance, Series, Study
from telerad.storage.objectstore import ObjectStore
from telerad.storage.parsing import ParsedInstance, as_part10, parse_instance

logger = logging.getLogger(__name__)
_CATALOG_ATTEMPTS = 4


class IngestStatus(enum.Enum):
    """Outcome of a successful ingest."""

    STORED = "stored"
    ALREADY_STORED = "already-stored"


@dataclass(frozen=True, slots=True)
class IngestSource:
    """Who sent an instance: the site that owns the study and the default patient issuer."""

    site_id: int | None
    issuer: str
    label: str
    #: An object the centre derived from the study (a report SR): stored and indexed like any
    #: instance, but it leaves the study's completeness alone (no manifest lists it).
    derived: bool = False


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What was stored (or found already stored)."""

    status: IngestStatus
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sha256: str
    size: int
    object_key: str
    #: This ingest completed the study's manifest (the worklist intake hook).
    completed_study: bool = False


class Archive:
    """Object store plus catalog: the one place instances enter telerad."""

    def __init__(self, engine: Engine, objects: ObjectStore) -> None:
        self.engine = engine
        self.objects = objects
        self.sessions: sessionmaker[Session] = session_factory(engine)
        self._writer: sessionmaker[Session] = session_factory(engine, writer=True)

    def ingest_instance(
        self, data: bytes, source: IngestSource, *, study_uid: str | None = None
    ) -> IngestResult:
        """Store one Part-10 instance (see the module docstring for the guarantees).

        Parameters
        ----------
        data
            The complete Part-10 file (preamble, ``DICM``, File Meta, data set); a File Meta
            group without preamble is accepted and stored with one (:func:`as_part10`).
        source
            The sending site; its issuer is used when the data set has no IssuerOfPatientID.
        study_uid
            When the request targeted one study (PS3.18 §10.5.1), the instance must belong to it.

        Raises
        ------
        InvalidInstance, StudyMismatch, InstanceConflict, StorageUnavailable
        """
        data = as_part10(data)
        sha256 = hashlib.sha256(data).hexdigest()
        parsed = parse_instance(data)
        if study_uid is not None and parsed.study_uid != study_uid:
            raise StudyMismatch(
                "Study Instance UID differs from the one in the request",
                sop_class_uid=parsed.sop_class_uid,
                sop_instance_uid=parsed.sop_instance_uid,
            )
        existing = self._stored_sha256(parsed.sop_instance_uid)
        if existing is not None:
            return self._duplicate(data, sha256, existing, parsed, source)
        key = instance_key(parsed.study_uid, parsed.series_uid, parsed.sop_instance_uid, sha256)
        self.objects.put(key, data, sha256)
        try:
            raced, completed = self._catalog_with_retry(parsed, key, sha256, len(data), source)
        except BaseException:
            self._discard_unreferenced(key)
            raise
        if raced is not None:
            self._discard_unreferenced(key)
            return self._duplicate(data, sha256, raced, parsed, source)
        logger.info(
            "stored %s from %s (%d bytes)", parsed.sop_instance_uid, source.label, len(data)
        )
        return _result(IngestStatus.STORED, parsed, sha256, len(data), key, completed)

    def _catalog_with_retry(
        self, parsed: ParsedInstance, key: str, sha256: str, size: int, source: IngestSource
    ) -> tuple[str | None, bool]:
        """Catalog the instance; returns the stored hash if a concurrent ingest of the same
        SOP Instance won, and whether this instance completed its study. Another unique-key
        race (two instances creating one new patient, study or series at once) is retried:
        the second attempt finds the winner's row."""
        for attempt in range(_CATALOG_ATTEMPTS):
            try:
                return None, self._catalog(parsed, key, sha256, size, source)
            except sa_exc.IntegrityError:
                raced = self._stored_sha256(parsed.sop_instance_uid)
                if raced is not None:
                    return raced, False
                if attempt == _CATALOG_ATTEMPTS - 1:
                    raise
        return None, False  # pragma: no cover - the loop returns or raises

    def _stored_sha256(self, sop_instance_uid: str) -> str | None:
        with self.sessions() as session:
            query = select(Instance.sha256).where(Instance.sop_instance_uid == sop_instance_uid)
            return session.scalar(query)

    def _duplicate(
        self, data: bytes, sha256: str, stored: str, parsed: ParsedInstance, source: IngestSource
    ) -> IngestResult:
        """Same content: a no-op success. Other content: keep first, file the copy, refuse."""
        if stored == sha256:
            key = instance_key(parsed.study_uid, parsed.series_uid, parsed.sop_instance_uid, sha256)
            return _result(IngestStatus.ALREADY_STORED, parsed, sha256, len(data), key)
        self._keep_rejected_copy(data, sha256, stored, parsed, source)
        raise InstanceConflict(
            "another instance with this SOP Instance UID and different content is stored",
            sop_class_uid=parsed.sop_class_uid,
            sop_instance_uid=parsed.sop_instance_uid,
        )

    def _keep_rejected_copy(
        self, data: bytes, sha256: str, stored: str, parsed: ParsedInstance, source: IngestSource
    ) -> None:
        key = rejected_key(parsed.sop_instance_uid, sha256)
        self.objects.put(key, data, sha256)
        row = RejectedInstance(
            sop_instance_uid=parsed.sop_instance_uid,
            sha256=sha256,
            stored_sha256=stored,
            object_key=key,
            reason="conflict",
            source=source.label,
        )
        try:
            with self._writer.begin() as session:
                session.add(row)
        except sa_exc.IntegrityError:
            pass  # the same rejected copy was filed before
        logger.warning(
            "conflict for %s from %s: kept first copy", parsed.sop_instance_uid, source.label
        )

    def _catalog(
        self, parsed: ParsedInstance, key: str, sha256: str, size: int, source: IngestSource
    ) -> bool:
        """Write the rows of one new instance; True if it completed its study's manifest."""
        try:
            with self._writer.begin() as session:
                study = _upsert_study(session, parsed, source)
                series_pk = _upsert_series(session, parsed, study)
                session.add(_instance_row(parsed, series_pk, key, sha256, size, source))
                session.execute(
                    update(Series)
                    .where(Series.id == series_pk)
                    .values(num_instances=Series.num_instances + 1)
                )
                session.execute(
                    update(Study)
                    .where(Study.id == study.id)
                    .values(num_instances=Study.num_instances + 1, updated_at=datetime.now(UTC))
                )
                if source.derived:
                    return False
                return note_stored_instance(
                    session, parsed.study_uid, parsed.sop_instance_uid, sha256
                )
        except sa_exc.OperationalError as exc:
            raise StorageUnavailable(f"catalog unavailable: {exc.orig}") from exc

    def _discard_unreferenced(self, key: str) -> None:
        """Delete an object we wrote unless a committed catalog row refers to it."""
        try:
            with self.sessions() as session:
                if session.scalar(select(Instance.id).where(Instance.object_key == key)):
                    return
            self.objects.delete(key)
        except Exception:  # the sweep will catch what we could not delete now
            logger.exception("could not remove unreferenced object %s", key)

    def sweep_orphans(self, older_than: timedelta = timedelta(hours=1)) -> list[str]:
        """Delete instance objects no catalog row refers to (left by a crash mid-ingest).

        Only objects under ``studies/`` are considered; objects younger than ``older_than``
        are kept because an ingest may be between its object write and its commit. Age is
        judged by the catalog: an object whose study has been updated recently is skipped.
        """
        removed: list[str] = []
        with self.sessions() as session:
            known = set(session.scalars(select(Instance.object_key)))
            recent = {
                study_prefix(uid)
                for uid in session.scalars(
                    select(Study.study_uid).where(Study.updated_at > datetime.now(UTC) - older_than)
                )
            }
        for key in self.objects.list("studies/"):
            if key not in known and not any(key.startswith(p) for p in recent):
                self.objects.delete(key)
                removed.append(key)
        return removed


def _result(
    status: IngestStatus,
    parsed: ParsedInstance,
    sha256: str,
    size: int,
    key: str,
    completed_study: bool = False,
) -> IngestResult:
    return IngestResult(
        status=status,
        sop_class_uid=parsed.sop_class_uid,
        sop_instance_uid=parsed.sop_instance_uid,
        study_uid=parsed.study_uid,
        series_uid=parsed.series_uid,
        sha256=sha256,
        size=size,
        object_key=key,
        completed_study=completed_study,
    )


def _upsert_patient(session: Session, parsed: ParsedInstance, source: IngestSource) -> Patient:
    """Find or create the patient keyed by (issuer, Patient ID); refresh demographics."""
    attrs = parsed.attributes
    issuer = attrs["IssuerOfPatientID"] or source.issuer
    patient_id = attrs["PatientID"]
    if not patient_id:  # no ID: never merge strangers, one patient per study
        issuer = f"{issuer}#{uid_hash(parsed.study_uid)[:16]}"
    query = select(Patient).where(Patient.issuer == issuer, Patient.patient_id == patient_id)
    patient = session.scalar(query.with_for_update())
    if patient is None:
        patient = Patient(issuer=issuer, patient_id=patient_id)
        session.add(patient)
    patient.patient_name = attrs["PatientName"] or patient.patient_name or ""
    patient.name_alphabetic = attrs["PatientNameAlphabetic"] or patient.name_alphabetic or ""
    patient.name_ideographic = attrs["PatientNameIdeographic"] or patient.name_ideographic or ""
    patient.name_phonetic = attrs["PatientNamePhonetic"] or patient.name_phonetic or ""
    patient.birth_date = attrs["PatientBirthDate"][:8] or patient.birth_date or ""
    patient.sex = attrs["PatientSex"] or patient.sex or ""
    session.flush()
    return patient


def _upsert_study(session: Session, parsed: ParsedInstance, source: IngestSource) -> Study:
    """Find (locked) or create the study; a study belongs to the site that first sent it."""
    query = select(Study).where(Study.study_uid == parsed.study_uid).with_for_update()
    study = session.scalar(query)
    if study is not None:
        if source.site_id is not None and study.site_id not in (None, source.site_id):
            raise StudyMismatch(
                "the study belongs to another site",
                sop_class_uid=parsed.sop_class_uid,
                sop_instance_uid=parsed.sop_instance_uid,
            )
        return study
    attrs = parsed.attributes
    study = Study(
        study_uid=parsed.study_uid,
        patient_pk=_upsert_patient(session, parsed, source).id,
        site_id=source.site_id,
        study_date=attrs["StudyDate"][:8],
        study_time=attrs["StudyTime"][:16],
        accession_number=attrs["AccessionNumber"],
        study_id=attrs["StudyID"],
        referring_physician_name=attrs["ReferringPhysicianName"],
        study_description=attrs["StudyDescription"],
        specific_character_set=attrs["SpecificCharacterSet"],
        timezone_offset=attrs["TimezoneOffsetFromUTC"][:8],
        num_series=0,
        num_instances=0,
    )
    session.add(study)
    session.flush()
    return study


def _upsert_series(session: Session, parsed: ParsedInstance, study: Study) -> int:
    """Find or create the series; keep the study's series count and modalities current."""
    query = select(Series.id, Series.study_pk).where(Series.series_uid == parsed.series_uid)
    row = session.execute(query).first()
    if row is not None:
        if row.study_pk != study.id:
            raise StudyMismatch(
                "the series belongs to another study",
                sop_class_uid=parsed.sop_class_uid,
                sop_instance_uid=parsed.sop_instance_uid,
            )
        return int(row.id)
    attrs = parsed.attributes
    series = Series(
        series_uid=parsed.series_uid,
        study_pk=study.id,
        modality=attrs["Modality"],
        series_number=parsed.series_number,
        series_description=attrs["SeriesDescription"],
        body_part_examined=attrs["BodyPartExamined"],
        pps_start_date=attrs["PerformedProcedureStepStartDate"][:8],
        pps_start_time=attrs["PerformedProcedureStepStartTime"][:16],
        specific_character_set=attrs["SpecificCharacterSet"],
        num_instances=0,
    )
    session.add(series)
    modalities = set(filter(None, study.modalities_in_study.split("\\")))
    if attrs["Modality"]:
        modalities.add(attrs["Modality"])
    study.modalities_in_study = "\\".join(sorted(modalities))
    study.num_series = study.num_series + 1
    session.flush()
    return series.id


def _instance_row(
    parsed: ParsedInstance, series_pk: int, key: str, sha256: str, size: int, source: IngestSource
) -> Instance:
    return Instance(
        sop_instance_uid=parsed.sop_instance_uid,
        series_pk=series_pk,
        sop_class_uid=parsed.sop_class_uid,
        instance_number=parsed.instance_number,
        transfer_syntax_uid=parsed.transfer_syntax_uid,
        rows=parsed.rows,
        columns=parsed.columns,
        bits_allocated=parsed.bits_allocated,
        number_of_frames=parsed.number_of_frames,
        size=size,
        sha256=sha256,
        object_key=key,
        frame_ranges=None if parsed.frame_ranges is None else json.dumps(parsed.frame_ranges),
        metadata_json=parsed.metadata_json(),
        source=source.label,
    )
