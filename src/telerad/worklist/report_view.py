"""Plain values the report output builders (SR, HTML, PDF, FHIR) work on.

The service (:mod:`telerad.worklist.reports`) turns database rows and stored DICOM metadata
into these; the builders never see SQL, HTTP or the object store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from telerad.worklist.report_states import ReportKind, ReportStatus
from telerad.worklist.templates import ReportContent, ReportTemplate, critical_findings

_TAGS = {
    "PatientName": "00100010",
    "PatientID": "00100020",
    "IssuerOfPatientID": "00100021",
    "PatientBirthDate": "00100030",
    "PatientSex": "00100040",
    "StudyInstanceUID": "0020000D",
    "StudyDate": "00080020",
    "StudyTime": "00080030",
    "AccessionNumber": "00080050",
    "StudyDescription": "00081030",
    "ReferringPhysicianName": "00080090",
    "StudyID": "00200010",
    "InstitutionName": "00080080",
    "Modality": "00080060",
}


def json_value(metadata: Mapping[str, Any], keyword: str) -> str:
    """The first value of ``keyword`` in a DICOM JSON object (PS3.18 Annex F) as text."""
    element = metadata.get(_TAGS[keyword], {})
    values = element.get("Value") if isinstance(element, Mapping) else None
    if not values:
        return ""
    first = values[0]
    if isinstance(first, Mapping):  # PN: {"Alphabetic", "Ideographic", "Phonetic"} groups
        groups = [str(first.get(g, "")) for g in ("Alphabetic", "Ideographic", "Phonetic")]
        return "=".join(groups).rstrip("=")
    return str(first)


@dataclass(frozen=True, slots=True)
class PatientStudy:
    """Patient and study attributes copied from the study's stored metadata."""

    study_uid: str
    patient_name: str = ""
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    birth_date: str = ""
    sex: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_description: str = ""
    referring_physician: str = ""
    study_id: str = ""
    modalities: tuple[str, ...] = ()

    @classmethod
    def from_dicom_json(
        cls, metadata: Mapping[str, Any], modalities: Sequence[str] = ()
    ) -> PatientStudy:
        """From one instance's DICOM JSON (every instance of a study carries the same)."""
        return cls(
            study_uid=json_value(metadata, "StudyInstanceUID"),
            patient_name=json_value(metadata, "PatientName"),
            patient_id=json_value(metadata, "PatientID"),
            issuer_of_patient_id=json_value(metadata, "IssuerOfPatientID"),
            birth_date=json_value(metadata, "PatientBirthDate"),
            sex=json_value(metadata, "PatientSex"),
            study_date=json_value(metadata, "StudyDate"),
            study_time=json_value(metadata, "StudyTime"),
            accession_number=json_value(metadata, "AccessionNumber"),
            study_description=json_value(metadata, "StudyDescription"),
            referring_physician=json_value(metadata, "ReferringPhysicianName"),
            study_id=json_value(metadata, "StudyID"),
            modalities=tuple(modalities),
        )


@dataclass(frozen=True, slots=True)
class Signature:
    """Who signed a version, when, and the hashes that make it verifiable."""

    signer: str
    signer_username: str
    signed_at: datetime
    content_sha256: str
    record_sha256: str


@dataclass(frozen=True, slots=True)
class DocumentRef:
    """A DICOM SR instance issued for a version."""

    sop_instance_uid: str
    series_uid: str
    status: str
    stored: bool


@dataclass(frozen=True, slots=True)
class ReportVersion:
    """One report version with everything the outputs show."""

    id: int
    study_uid: str
    sequence: int
    kind: ReportKind
    status: ReportStatus
    template: ReportTemplate
    content: ReportContent
    author: str
    author_username: str
    created_at: datetime
    updated_at: datetime
    version: int
    preliminary_at: datetime | None = None
    signature: Signature | None = None
    predecessor_id: int | None = None
    documents: tuple[DocumentRef, ...] = ()
    #: The previous version's content, for addenda (to tell "appended" from "amended").
    predecessor_content: ReportContent | None = None

    @property
    def critical_findings(self) -> list[str]:
        """Labels of the coded fields with a critical value."""
        return critical_findings(self.template, self.content)

    @property
    def critical(self) -> bool:
        """Flagged by hand or by a critical field value."""
        return self.content.critical or bool(self.critical_findings)

    @property
    def fhir_status(self) -> str:
        """DiagnosticReport.status (FHIR R4 value set ``diagnostic-report-status``).

        A draft is ``registered`` (exists, no result yet); an addendum that only adds text is
        ``appended``, one that also changes the earlier content ``amended``.
        """
        if self.status is ReportStatus.DRAFT:
            return "registered"
        if self.status is ReportStatus.PRELIMINARY:
            return "preliminary"
        if self.kind is ReportKind.ORIGINAL:
            return "final"
        previous = self.predecessor_content
        unchanged = previous is not None and (
            dict(previous.sections) == dict(self.content.sections)
            and dict(previous.fields) == dict(self.content.fields)
        )
        return "appended" if unchanged else "amended"


@dataclass(frozen=True, slots=True)
class KeyImage:
    """A rendered key image: which frame of which instance, and its JPEG or PNG bytes."""

    sop_instance_uid: str
    frame: int
    data: bytes
    media_type: str = "image/jpeg"


@dataclass(frozen=True, slots=True)
class ReportBundle:
    """A version to render, with its chain (oldest first, including it), study and images."""

    version: ReportVersion
    chain: tuple[ReportVersion, ...]
    study: PatientStudy
    institution: str
    key_images: tuple[KeyImage, ...] = ()


@dataclass(frozen=True, slots=True)
class FieldRow:
    """A coded field as shown in HTML and PDF: label, value, code, and whether critical."""

    label: str
    value: str
    code: str
    critical: bool


def field_rows(version: ReportVersion) -> list[FieldRow]:
    """The version's coded field values, in template order, ready for display."""
    rows: list[FieldRow] = []
    for item in version.template.fields:
        if item.key not in version.content.fields:
            continue
        value = version.content.fields[item.key]
        shown = f"{float(value):g} {item.unit_label}" if item.kind != "presence" else str(value)
        concept = item.concept
        code = f"{concept.scheme} {concept.value} {concept.meaning}"
        rows.append(FieldRow(item.label, shown, code, item.is_critical(value)))
    return rows


def format_dicom_date(value: str) -> str:
    """``YYYYMMDD`` as ``YYYY-MM-DD`` (other values unchanged)."""
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def format_person_name(value: str) -> str:
    """A DICOM PN (``Family^Given^Middle^Prefix^Suffix``, PS3.5 §6.2.1) as ``Prefix Given
    Middle Family``, followed by its ideographic group in the family-name-first order of
    Chinese and Japanese names: ``Wang^Xiaoming=王^小明`` → ``Xiaoming Wang (王小明)``."""
    groups = value.split("=")
    parts = (groups[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    alphabetic = " ".join(p for p in (prefix, given, middle, family, suffix) if p)
    ideographic = "".join(groups[1].split("^")[:3]) if len(groups) > 1 else ""
    if ideographic and alphabetic:
        return f"{alphabetic} ({ideographic})"
    return alphabetic or ideographic or value
