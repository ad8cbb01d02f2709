"""Reading tasks as UPS workitems: DICOM JSON and search keys (PS3.4 Annex CC, PS3.18 §11), pure.

A task is a Unified Procedure Step of the UPS Push SOP Class (every UPS instance is, PS3.4
CC.3.1) whose SOP Instance UID is the task's ``workitem_uid``. :func:`workitem_json` renders
the attributes of PS3.4 Table CC.2.5-3 that a reading task has:

- SOP Common: SOP Class UID, SOP Instance UID, Specific Character Set (UTF-8);
- Unified Procedure Step Scheduled Procedure Information: Scheduled Procedure Step Priority
  (HIGH/MEDIUM/LOW), Procedure Step Label, Worklist Label, Scheduled Procedure Step
  Start / Modification / Expected Completion DateTime, Scheduled Workitem Code Sequence
  (DCM 110005 "Interpretation", CID 9231), Scheduled Human Performers Sequence (the assigned
  reader), Input Information Sequence (the study's series and instances, with a WADO-RS
  Retrieval Sequence), Input Readiness State READY, Comments (the clinical question);
- Unified Procedure Step Relationship: Patient's Name, Patient ID, Issuer of Patient ID,
  Birth Date, Sex, and the Referenced Request Sequence (Study Instance UID, Accession Number);
- Unified Procedure Step Progress Information: Procedure Step State, and for a canceled
  task the Reason For Cancellation.

The Transaction UID is never returned (PS3.4 CC.2.5.1.2: the SCP does not disclose it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from telerad.worklist.errors import InvalidWorklistInput
from telerad.worklist.sla import PRIORITY_FROM_UPS, UPS_PRIORITY, Priority
from telerad.worklist.states import ProcedureStepState

UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"
WORKLIST_LABEL = "telerad reading"
INTERPRETATION = ("110005", "DCM", "Interpretation")


@dataclass(frozen=True, slots=True)
class WorkitemFacts:
    """Everything a workitem shows, as plain values."""

    workitem_uid: str
    state: str
    priority: str
    label: str
    created_at: datetime
    updated_at: datetime
    due_at: datetime
    study_uid: str
    accession_number: str = ""
    clinical_question: str = ""
    performer: str | None = None
    canceled_reason: str | None = None
    patient_name: str = ""
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    #: (Series Instance UID, ((SOP Class UID, SOP Instance UID), ...)) per series.
    series: Sequence[tuple[str, Sequence[tuple[str, str]]]] = field(default_factory=tuple)
    retrieve_url: str = ""


def workitem_json(facts: WorkitemFacts, *, inputs: bool = True) -> dict[str, Any]:
    """The workitem as DICOM JSON (PS3.18 Annex F); ``inputs=False`` leaves out the Input
    Information Sequence (searches)."""
    body: dict[str, Any] = {
        "00080005": _el("CS", "ISO_IR 192"),
        "00080016": _el("UI", UPS_PUSH_SOP_CLASS),
        "00080018": _el("UI", facts.workitem_uid),
        "00100010": _pn(facts.patient_name),
        "00100020": _el("LO", facts.patient_id),
        "00100021": _el("LO", facts.issuer_of_patient_id),
        "00100030": _el("DA", facts.patient_birth_date),
        "00100040": _el("CS", facts.patient_sex),
        "00404005": _el("DT", dicom_datetime(facts.created_at)),
        "00404010": _el("DT", dicom_datetime(facts.updated_at)),
        "00404011": _el("DT", dicom_datetime(facts.due_at)),
        "00404018": _seq([_code(*INTERPRETATION)]),
        "00404034": _seq([_performer(facts.performer)] if facts.performer else []),
        "00404041": _el("CS", "READY"),
        "0040A370": _seq([_request(facts)]),
        "00741000": _el("CS", facts.state),
        "00741200": _el("CS", UPS_PRIORITY[Priority(facts.priority)]),
        "00741202": _el("LO", WORKLIST_LABEL),
        "00741204": _el("LO", facts.label[:64]),
    }
    if facts.clinical_question:
        body["00400400"] = _el("LT", facts.clinical_question[:10240])
    if facts.state == ProcedureStepState.CANCELED and facts.canceled_reason:
        body["00741238"] = _el("LT", facts.canceled_reason)
    if inputs:
        body["00404021"] = _seq(_inputs(facts))
    return dict(sorted(body.items()))


def dicom_datetime(value: datetime) -> str:
    """A DT value in UTC with its offset (PS3.5 Table 6.2-1)."""
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y%m%d%H%M%S.%f") + "+0000"


@dataclass(frozen=True, slots=True)
class WorkitemQuery:
    """Search for Workitems (PS3.18 §11.9): the supported matching keys, parsed."""

    states: tuple[ProcedureStepState, ...] = ()
    priorities: tuple[Priority, ...] = ()
    workitem_uids: tuple[str, ...] = ()
    study_uid: str | None = None
    patient_id: str | None = None
    start_range: tuple[datetime | None, datetime | None] = (None, None)
    due_range: tuple[datetime | None, datetime | None] = (None, None)
    limit: int = 100
    offset: int = 0
    ignored: tuple[str, ...] = ()


#: Query key (keyword or tag; nested with ".") → field of :class:`WorkitemQuery`.
SEARCH_KEYS = {
    "ProcedureStepState": "states",
    "00741000": "states",
    "ScheduledProcedureStepPriority": "priorities",
    "00741200": "priorities",
    "SOPInstanceUID": "workitem_uids",
    "00080018": "workitem_uids",
    "ReferencedRequestSequence.StudyInstanceUID": "study_uid",
    "0040A370.0020000D": "study_uid",
    "StudyInstanceUID": "study_uid",
    "0020000D": "study_uid",
    "PatientID": "patient_id",
    "00100020": "patient_id",
    "ScheduledProcedureStepStartDateTime": "start_range",
    "00404005": "start_range",
    "ExpectedCompletionDateTime": "due_range",
    "00404011": "due_range",
}
_IGNORED_PARAMETERS = {"includefield", "fuzzymatching"}
MAX_LIMIT = 1000


def parse_workitem_query(items: Iterable[tuple[str, str]]) -> WorkitemQuery:
    """Parse QIDO-style query parameters (PS3.18 §8.3.4); unknown keys are ignored and listed
    in ``ignored``. Raises :class:`InvalidWorklistInput` for a bad value."""
    values: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in items:
        if key in ("limit", "offset"):
            values[key] = _count(key, value)
        elif key in _IGNORED_PARAMETERS:
            continue
        elif key.upper() in SEARCH_KEYS or key in SEARCH_KEYS:
            name = SEARCH_KEYS.get(key) or SEARCH_KEYS[key.upper()]
            if value.strip() not in ("", "*"):
                values[name] = _parse(name, value.strip())
        else:
            ignored.append(key[:64])
    if values.get("limit", 100) > MAX_LIMIT:
        raise InvalidWorklistInput(f"limit is at most {MAX_LIMIT}")
    return WorkitemQuery(**values, ignored=tuple(ignored))


def _parse(name: str, value: str) -> object:
    parts = [v for v in value.replace(",", "\\").split("\\") if v]
    if name == "states":
        return tuple(_state(v) for v in parts)
    if name == "priorities":
        return tuple(_priority(v) for v in parts)
    if name == "workitem_uids":
        return tuple(parts)
    if name in ("start_range", "due_range"):
        return _range(value)
    return value


def _state(value: str) -> ProcedureStepState:
    try:
        return ProcedureStepState(value.upper())
    except ValueError:
        raise InvalidWorklistInput(f"invalid ProcedureStepState {value[:32]!r}") from None


def _priority(value: str) -> Priority:
    try:
        return PRIORITY_FROM_UPS[value.upper()]
    except KeyError:
        raise InvalidWorklistInput(
            f"ScheduledProcedureStepPriority is HIGH, MEDIUM or LOW, not {value[:32]!r}"
        ) from None


def _range(value: str) -> tuple[datetime | None, datetime | None]:
    low, sep, high = value.partition("-")
    if not sep:
        point = _dt(value)
        return point, point
    return (_dt(low) if low else None), (_dt(high) if high else None)


def _dt(value: str) -> datetime:
    """A DT value (YYYYMMDD[HHMM[SS[.F]]][&ZZXX]); without an offset it is UTC."""
    digits, offset = value, "+0000"
    for sign in "+-":
        if sign in value[8:]:
            at = value.rindex(sign)
            digits, offset = value[:at], value[at:]
    formats = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    try:
        base = digits.split(".")[0]
        parsed = datetime.strptime(f"{base}{offset}", formats[len(base)] + "%z")
        if "." in digits:
            parsed = parsed.replace(microsecond=int(digits.split(".")[1].ljust(6, "0")[:6]))
    except (KeyError, ValueError):
        raise InvalidWorklistInput(f"invalid DT value {value[:32]!r}") from None
    return parsed.astimezone(UTC)


def _count(key: str, value: str) -> int:
    if not value.isdigit():
        raise InvalidWorklistInput(f"{key} must be a non-negative integer")
    return int(value)


def _el(vr: str, value: object) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]} if value not in ("", None) else {"vr": vr}


def _pn(name: str) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]} if name else {"vr": "PN"}


def _seq(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}


def _code(value: str, scheme: str, meaning: str) -> dict[str, Any]:
    return {
        "00080100": _el("SH", value),
        "00080102": _el("SH", scheme),
        "00080104": _el("LO", meaning),
    }


def _performer(username: str) -> dict[str, Any]:
    return {
        "00404009": _seq([_code(username[:16], "99TELERAD", username[:64])]),
        "00404037": _pn(username),
    }


def _request(facts: WorkitemFacts) -> dict[str, Any]:
    return {
        "00080050": _el("SH", facts.accession_number[:16]),
        "0020000D": _el("UI", facts.study_uid),
        "00321060": _el("LO", facts.label[:64]),
    }


def _inputs(facts: WorkitemFacts) -> list[dict[str, Any]]:
    """Referenced Instances and Access Macro (PS3.3 Table 10-3b), one item per series."""
    retrieval = {"00081190": _el("UR", facts.retrieve_url)} if facts.retrieve_url else {}
    return [
        {
            "0020000D": _el("UI", facts.study_uid),
            "0020000E": _el("UI", series_uid),
            "00081199": _seq(
                [{"00081150": _el("UI", c), "00081155": _el("UI", i)} for c, i in instances]
            ),
            "0040E020": _el("CS", "DICOM"),
            "0040E025": _seq([retrieval]) if retrieval else {"vr": "SQ"},
        }
        for series_uid, instances in facts.series
    ]
