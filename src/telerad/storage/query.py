"""Search the catalog: QIDO-RS (PS3.18 §10.6) and, later, C-FIND share this one matcher.

:func:`search` turns a parsed :class:`~telerad.storage.matching.Query` into SQL over the
catalog columns, applies the caller's site scope, and returns DICOM JSON objects (PS3.18
Annex F) with the required return keys of Tables 10.6.3-3, -4 and -5 plus any ``includefield``
attributes, taken from the precomputed instance metadata.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from telerad.storage.matching import Criterion, MatchKind, Query, like_pattern
from telerad.storage.models import Instance, Patient, Series, Study
from telerad.storage.parsing import BASE_URI_MARKER

logger = logging.getLogger(__name__)


class Level(enum.Enum):
    """Query/Retrieve levels (PS3.4 §C.3)."""

    STUDY = "STUDY"
    SERIES = "SERIES"
    INSTANCE = "IMAGE"


@dataclass(frozen=True, slots=True)
class Scope:
    """What the caller may see.

    ``site_ids``: ``None`` means every site, otherwise studies of these sites only.
    ``study_uids``: ``None`` means no further limit, otherwise (a referrer's scope) only these
    studies, within the sites above.
    """

    site_ids: frozenset[int] | None = None
    study_uids: frozenset[str] | None = None

    def allows(self, site_id: int | None, study_uid: str | None = None) -> bool:
        """True if a study of ``site_id`` (with ``study_uid``) is visible in this scope.

        A study-limited scope allows nothing when the study is not named.
        """
        if self.site_ids is not None and site_id not in self.site_ids:
            return False
        return self.study_uids is None or (study_uid is not None and study_uid in self.study_uids)


@dataclass(slots=True)
class SearchResult:
    """Matches as DICOM JSON, plus attributes of the query that were not used for matching."""

    matches: list[dict[str, Any]]
    ignored: list[str] = field(default_factory=list)
    study_uids: list[str] = field(default_factory=list)


Column = InstrumentedAttribute[Any]

STUDY_COLUMNS: dict[str, Column] = {
    "StudyInstanceUID": Study.study_uid,
    "StudyDate": Study.study_date,
    "StudyTime": Study.study_time,
    "AccessionNumber": Study.accession_number,
    "StudyID": Study.study_id,
    "ReferringPhysicianName": Study.referring_physician_name,
    "StudyDescription": Study.study_description,
    "ModalitiesInStudy": Study.modalities_in_study,
    "TimezoneOffsetFromUTC": Study.timezone_offset,
    "NumberOfStudyRelatedSeries": Study.num_series,
    "NumberOfStudyRelatedInstances": Study.num_instances,
    "PatientName": Patient.patient_name,
    "PatientID": Patient.patient_id,
    "IssuerOfPatientID": Patient.issuer,
    "PatientBirthDate": Patient.birth_date,
    "PatientSex": Patient.sex,
}
SERIES_COLUMNS: dict[str, Column] = {
    "SeriesInstanceUID": Series.series_uid,
    "Modality": Series.modality,
    "SeriesNumber": Series.series_number,
    "SeriesDescription": Series.series_description,
    "BodyPartExamined": Series.body_part_examined,
    "PerformedProcedureStepStartDate": Series.pps_start_date,
    "PerformedProcedureStepStartTime": Series.pps_start_time,
    "NumberOfSeriesRelatedInstances": Series.num_instances,
}
INSTANCE_COLUMNS: dict[str, Column] = {
    "SOPInstanceUID": Instance.sop_instance_uid,
    "SOPClassUID": Instance.sop_class_uid,
    "InstanceNumber": Instance.instance_number,
    "Rows": Instance.rows,
    "Columns": Instance.columns,
    "BitsAllocated": Instance.bits_allocated,
    "NumberOfFrames": Instance.number_of_frames,
}
_LEVEL_COLUMNS = {
    Level.STUDY: STUDY_COLUMNS,
    Level.SERIES: {**STUDY_COLUMNS, **SERIES_COLUMNS},
    Level.INSTANCE: {**STUDY_COLUMNS, **SERIES_COLUMNS, **INSTANCE_COLUMNS},
}
#: Required return keys, PS3.18 Tables 10.6.3-3 (study), -4 (series), -5 (instance).
RETURN_KEYS = {
    Level.STUDY: [
        "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
        "ReferringPhysicianName", "TimezoneOffsetFromUTC", "PatientName", "PatientID",
        "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
        "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ],
    Level.SERIES: [
        "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
        "BodyPartExamined", "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "StudyInstanceUID",
    ],
    Level.INSTANCE: [
        "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
        "NumberOfFrames", "SeriesInstanceUID", "StudyInstanceUID",
    ],
}  # fmt: skip
_PN_GROUP_COLUMNS = (Patient.name_alphabetic, Patient.name_ideographic, Patient.name_phonetic)


def search(
    session: Session,
    level: Level,
    query: Query,
    scope: Scope,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> SearchResult:
    """Run a search at ``level``, optionally inside one study or series (PS3.18 §10.6.1).

    Returns the DICOM JSON of each match, in a stable order, after ``offset`` and ``limit``.
    RetrieveURL values carry :data:`BASE_URI_MARKER` for the adapter to replace.
    """
    columns = _LEVEL_COLUMNS[level]
    statement = _base_statement(level)
    statement = _scoped(statement, scope, study_uid, series_uid)
    ignored: list[str] = []
    for item in query.criteria:
        condition = _condition(item, columns, query.fuzzy)
        if condition is None:
            if item.kind is not MatchKind.UNIVERSAL and item.keyword not in columns:
                ignored.append(item.keyword)
            continue
        statement = statement.where(condition)
    statement = statement.order_by(*_order(level)).offset(query.offset)
    if query.limit is not None:
        statement = statement.limit(query.limit)
    rows = session.execute(statement).all()
    extra = _extra_keywords(level, query, columns)
    matches = [
        _to_json(level, row, query, extra, session, unscoped=study_uid is None) for row in rows
    ]
    return SearchResult(matches, ignored, [row.Study.study_uid for row in rows])


def _base_statement(level: Level) -> Any:
    if level is Level.STUDY:
        return select(Study, Patient).join(Patient, Study.patient_pk == Patient.id)
    if level is Level.SERIES:
        return (
            select(Series, Study, Patient)
            .join(Study, Series.study_pk == Study.id)
            .join(Patient, Study.patient_pk == Patient.id)
        )
    return (
        select(Instance, Series, Study, Patient)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
    )


def _scoped(
    statement: Select[Any], scope: Scope, study_uid: str | None, series_uid: str | None
) -> Select[Any]:
    if scope.site_ids is not None:
        statement = statement.where(Study.site_id.in_(sorted(scope.site_ids)))
    if scope.study_uids is not None:
        statement = statement.where(Study.study_uid.in_(sorted(scope.study_uids)))
    if study_uid is not None:
        statement = statement.where(Study.study_uid == study_uid)
    if series_uid is not None:
        statement = statement.where(Series.series_uid == series_uid)
    return statement


def _order(level: Level) -> list[Any]:
    if level is Level.STUDY:
        return [Study.study_date.desc(), Study.study_time.desc(), Study.id]
    if level is Level.SERIES:
        return [Study.id, Series.series_number, Series.id]
    return [Series.id, Instance.instance_number, Instance.id]


def _condition(
    item: Criterion, columns: dict[str, Column], fuzzy: bool
) -> ColumnElement[bool] | None:
    """SQL for one criterion; None when universal or not a catalog column."""
    if item.kind is MatchKind.UNIVERSAL or item.keyword not in columns:
        return None
    if item.keyword == "PatientName":
        return _person_name(item, fuzzy)
    column = columns[item.keyword]
    if item.keyword == "ModalitiesInStudy":
        return or_(*(_modality_in_study(v) for v in item.values[0].split("\\")))
    if item.vr == "PN":
        return _text_match(column, item.kind, item.values[0], fuzzy, case_insensitive=True)
    return _value_match(column, item)


def _value_match(column: Column, item: Criterion) -> ColumnElement[bool]:
    if item.kind is MatchKind.UID_LIST:
        return column.in_(item.values)
    if item.kind is MatchKind.RANGE:
        low, high = item.values
        parts = ([column >= low] if low else []) + ([column <= high + "\uffff"] if high else [])
        return and_(column != "", *parts)
    if item.vr in ("IS", "US", "UL", "SL", "SS"):
        try:
            return column == int(item.values[0])
        except ValueError:
            return column.is_(None)
    return _text_match(column, item.kind, item.values[0], fuzzy=False, case_insensitive=False)


def _text_match(
    column: Column, kind: MatchKind, value: str, fuzzy: bool, *, case_insensitive: bool
) -> ColumnElement[bool]:
    target: Any = func.lower(column) if case_insensitive else column
    value = value.lower() if case_insensitive else value
    condition: ColumnElement[bool]
    if kind is MatchKind.WILDCARD:
        condition = target.like(like_pattern(value), escape="\\")
    else:
        condition = target == value
    if fuzzy:  # any name component or word starting with the value
        stem = like_pattern(value.rstrip("*"))
        condition = or_(
            condition,
            target.like(stem + "%", escape="\\"),
            target.like("%^" + stem + "%", escape="\\"),
            target.like("% " + stem + "%", escape="\\"),
        )
    return condition


def _person_name(item: Criterion, fuzzy: bool) -> ColumnElement[bool]:
    """PatientName against its component groups (PS3.5 §6.2.1.1), case-insensitively.

    ``Wang^XiaoDong=王^小东`` matches each group on its own column; a value without ``=``
    matches the alphabetic, ideographic or phonetic group, or the whole value.
    """
    value = item.values[0]
    if "=" in value:
        groups = value.split("=")[:3]
        return and_(
            *(
                _text_match(column, _kind(group), group, fuzzy, case_insensitive=True)
                for column, group in zip(_PN_GROUP_COLUMNS, groups, strict=False)
                if group
            )
        )
    candidates = (*_PN_GROUP_COLUMNS, Patient.patient_name)
    return or_(
        *(_text_match(c, item.kind, value, fuzzy, case_insensitive=True) for c in candidates)
    )


def _kind(value: str) -> MatchKind:
    return MatchKind.WILDCARD if ("*" in value or "?" in value) else MatchKind.SINGLE


def _modality_in_study(modality: str) -> ColumnElement[bool]:
    """True if any series of the study has ``modality`` (PS3.4 §C.6.1.1.3)."""
    return Study.id.in_(select(Series.study_pk).where(Series.modality == modality))


def _extra_keywords(level: Level, query: Query, columns: dict[str, Column]) -> list[str]:
    """Requested ``includefield`` keywords that the catalog columns do not answer."""
    return [k for k in query.include_fields if k not in columns]


def _to_json(
    level: Level, row: Any, query: Query, extra: list[str], session: Session, *, unscoped: bool
) -> dict[str, Any]:
    keywords = list(RETURN_KEYS[level])
    if level is not Level.STUDY and unscoped:
        keywords += RETURN_KEYS[Level.STUDY]
    if level is Level.INSTANCE and unscoped:
        keywords += RETURN_KEYS[Level.SERIES]
    keywords += [k for k in query.include_fields if k in _LEVEL_COLUMNS[level]]
    result: dict[str, Any] = {}
    for keyword in keywords:
        result[_tag_hex(keyword)] = element(dictionary_VR(_tag_hex(keyword)), _value(row, keyword))
    result[_tag_hex("SpecificCharacterSet")] = element("CS", "ISO_IR 192")
    result[_tag_hex("InstanceAvailability")] = element("CS", "ONLINE")
    result[_tag_hex("RetrieveURL")] = element("UR", _retrieve_url(level, row))
    if extra or query.include_all:
        _merge_metadata(
            result, _representative_metadata(level, row, session), extra, query.include_all
        )
    return dict(sorted(result.items()))


def _value(row: Any, keyword: str) -> Any:
    column = _LEVEL_COLUMNS[Level.INSTANCE][keyword]
    owner = column.class_.__name__
    return getattr(getattr(row, owner), column.key)


def _retrieve_url(level: Level, row: Any) -> str:
    url = f"{BASE_URI_MARKER}/studies/{row.Study.study_uid}"
    if level is not Level.STUDY:
        url += f"/series/{row.Series.series_uid}"
    if level is Level.INSTANCE:
        url += f"/instances/{row.Instance.sop_instance_uid}"
    return url


def _representative_metadata(level: Level, row: Any, session: Session) -> dict[str, Any]:
    """The stored DICOM JSON of the row's instance, or of the first instance below it."""
    if level is Level.INSTANCE:
        text = row.Instance.metadata_json
    else:
        statement = select(Instance.metadata_json).join(Series, Instance.series_pk == Series.id)
        statement = statement.where(
            Series.id == row.Series.id if level is Level.SERIES else Series.study_pk == row.Study.id
        )
        text = session.scalar(statement.order_by(Instance.id).limit(1))
    return json.loads(text) if text else {}


def _merge_metadata(
    result: dict[str, Any], metadata: dict[str, Any], extra: Sequence[str], include_all: bool
) -> None:
    wanted = {_tag_hex(k) for k in extra}
    for tag, value in metadata.items():
        if tag in result or tag.startswith("0002") or tag == "7FE00010":
            continue
        if include_all or tag in wanted:
            result[tag] = value


def _tag_hex(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}"


def element(vr: str, value: Any) -> dict[str, Any]:
    """One DICOM JSON attribute (PS3.18 §F.2.2); empty values have no ``Value``."""
    if value is None or value == "":
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [person_name_json(str(value))]}
    if vr in ("IS", "US", "UL", "SL", "SS"):
        return {"vr": vr, "Value": [int(value)]}
    if isinstance(value, str) and "\\" in value:
        return {"vr": vr, "Value": value.split("\\")}
    return {"vr": vr, "Value": [value]}


def person_name_json(value: str) -> dict[str, str]:
    """A PN value as its JSON object of component groups (PS3.18 §F.2.2)."""
    names = ("Alphabetic", "Ideographic", "Phonetic")
    return {name: group for name, group in zip(names, value.split("="), strict=False) if group}
