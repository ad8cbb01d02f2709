"""Report templates: sections, coded fields and the validation of report content (pure).

Every template has the six sections of a radiology report (clinical information, technique,
comparison, findings, impression, recommendation) and, where it has them, coded fields whose
values are validated here and encoded in the DICOM SR (:mod:`telerad.worklist.sr`) and FHIR
outputs with the codes below.

Codes and where they come from (checked against the DICOM PS3.16 code tables bundled with
pydicom, ``pydicom.sr``):

- document titles, CID 7000 (LOINC): 24725-4 CT Head Report, 24627-2 CT Chest Report,
  41806-1 CT Abdomen Report, 18748-4 Diagnostic Imaging Report;
- section headings, CID 7001 (LOINC): 55752-0 Clinical Information, 55111-9 Current Procedure
  Descriptions, 55114-3 Prior Procedure Descriptions, 59776-5 Findings, 19005-8 Impressions,
  18783-1 Recommendations, 55107-7 Addendum, 55113-5 Key Images, 73568-8 Communication of
  Critical Results;
- report elements, CID 7002: LN 11329-0 History, DCM 121065 Procedure Description, DCM 121069
  Previous Finding, DCM 121071 Finding, DCM 121073 Impression, DCM 121075 Recommendation;
- findings (SNOMED CT, SCT): 1386000 Intracranial hemorrhage, 4147007 Mass, 59282003 Pulmonary
  embolism, 27925004 Nodule, 36118008 Pneumothorax, 60046008 Pleural effusion, 44132006
  Abscess, 81827009 Diameter; values from CID 240 "Present-Absent": 52101004 Present,
  272519000 Absent, 373068000 Undetermined;
- units (UCUM): ``mm``.

Concepts for which we found no code in those tables (midline shift, free intraperitoneal air,
bowel obstruction) use the private coding scheme ``99TLRAD`` (PS3.16 §8: designators starting
with "99" are local); the SR declares it in its Coding Scheme Identification Sequence.

Errors: :class:`ReportContentError` → :class:`UnknownTemplate`, :class:`InvalidReportContent`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Private coding scheme for concepts without a standard code here (PS3.16 §8).
LOCAL_SCHEME = "99TLRAD"
LOCAL_SCHEME_NAME = "telerad local codes"
#: Longest text of one section, and of all text of a report together (characters).
MAX_SECTION_CHARS = 20_000
MAX_TOTAL_CHARS = 100_000
MAX_KEY_IMAGES = 20
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: PS3.5 §9.1 UID syntax (kept here so this module imports nothing but the standard library).
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


class ReportContentError(Exception):
    """Base class of template and content errors."""


class UnknownTemplate(ReportContentError):
    """No template has that key."""


class InvalidReportContent(ReportContentError):
    """The content does not fit its template (unknown key, bad value, too long)."""


@dataclass(frozen=True, slots=True)
class Code:
    """A coded concept: (code value, coding scheme designator, code meaning), as in PS3.3 §8.8."""

    value: str
    scheme: str
    meaning: str

    def as_dict(self) -> dict[str, str]:
        """Plain JSON form."""
        return {"code": self.value, "scheme": self.scheme, "meaning": self.meaning}


PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
UNDETERMINED = Code("373068000", "SCT", "Undetermined")
MILLIMETRE = Code("mm", "UCUM", "mm")
PRESENCE = {"present": PRESENT, "absent": ABSENT, "undetermined": UNDETERMINED}


@dataclass(frozen=True, slots=True)
class Section:
    """A report section: its heading (CID 7001) and the concept of its text (CID 7002)."""

    key: str
    label: str
    heading: Code
    element: Code


SECTIONS: tuple[Section, ...] = (
    Section(
        "clinical_information",
        "Clinical information",
        Code("55752-0", "LN", "Clinical Information"),
        Code("11329-0", "LN", "History"),
    ),
    Section(
        "technique",
        "Technique",
        Code("55111-9", "LN", "Current Procedure Descriptions"),
        Code("121065", "DCM", "Procedure Description"),
    ),
    Section(
        "comparison",
        "Comparison",
        Code("55114-3", "LN", "Prior Procedure Descriptions"),
        Code("121069", "DCM", "Previous Finding"),
    ),
    Section(
        "findings",
        "Findings",
        Code("59776-5", "LN", "Findings"),
        Code("121071", "DCM", "Finding"),
    ),
    Section(
        "impression",
        "Impression",
        Code("19005-8", "LN", "Impressions"),
        Code("121073", "DCM", "Impression"),
    ),
    Section(
        "recommendation",
        "Recommendation",
        Code("18783-1", "LN", "Recommendations"),
        Code("121075", "DCM", "Recommendation"),
    ),
)
SECTION_KEYS = tuple(section.key for section in SECTIONS)
ADDENDUM_HEADING = Code("55107-7", "LN", "Addendum")
KEY_IMAGES_HEADING = Code("55113-5", "LN", "Key Images")
CRITICAL_HEADING = Code("73568-8", "LN", "Communication of Critical Results")
KEY_IMAGE_PURPOSE = Code("121080", "DCM", "Best illustration of finding")


@dataclass(frozen=True, slots=True)
class CodedField:
    """A coded field of a template.

    ``kind`` ``presence`` takes ``present``/``absent``/``undetermined`` (CID 240) and is
    critical when ``present`` if ``critical_when_present``; ``kind`` ``measurement`` takes a
    number of ``unit`` in ``[minimum, maximum]`` and is critical at or above
    ``critical_at`` (when set).
    """

    key: str
    label: str
    kind: str
    concept: Code
    unit: Code | None = None
    minimum: float = 0.0
    maximum: float = 0.0
    critical_when_present: bool = False
    critical_at: float | None = None

    @property
    def unit_label(self) -> str:
        """The unit's meaning, or "" for coded fields."""
        return self.unit.meaning if self.unit else ""

    def is_critical(self, value: str | float) -> bool:
        """True if ``value`` (already validated) is a critical finding."""
        if self.kind == "presence":
            return self.critical_when_present and value == "present"
        return self.critical_at is not None and float(value) >= self.critical_at


def _presence(key: str, label: str, concept: Code, critical: bool = False) -> CodedField:
    return CodedField(key, label, "presence", concept, critical_when_present=critical)


def _millimetres(
    key: str, label: str, concept: Code, maximum: float, critical_at: float | None = None
) -> CodedField:
    return CodedField(
        key, label, "measurement", concept, MILLIMETRE, 0.0, maximum, critical_at=critical_at
    )


@dataclass(frozen=True, slots=True)
class ReportTemplate:
    """A report template: its key, title (CID 7000) and coded fields."""

    key: str
    label: str
    title: Code
    fields: tuple[CodedField, ...] = ()

    def field(self, key: str) -> CodedField:
        """The coded field ``key``; :class:`InvalidReportContent` if the template has none."""
        for item in self.fields:
            if item.key == key:
                return item
        raise InvalidReportContent(f"template {self.key!r} has no field {key!r}")


TEMPLATES: dict[str, ReportTemplate] = {
    template.key: template
    for template in (
        ReportTemplate(
            "ct-head",
            "CT head",
            Code("24725-4", "LN", "CT Head Report"),
            (
                _presence(
                    "haemorrhage",
                    "Intracranial haemorrhage",
                    Code("1386000", "SCT", "Intracranial hemorrhage"),
                    critical=True,
                ),
                _millimetres(
                    "midline_shift_mm",
                    "Midline shift",
                    Code("MLS", LOCAL_SCHEME, "Midline shift"),
                    maximum=50.0,
                    critical_at=5.0,
                ),
                _presence("mass", "Mass", Code("4147007", "SCT", "Mass")),
            ),
        ),
        ReportTemplate(
            "ct-chest",
            "CT chest",
            Code("24627-2", "LN", "CT Chest Report"),
            (
                _presence(
                    "pulmonary_embolism",
                    "Pulmonary embolism",
                    Code("59282003", "SCT", "Pulmonary embolism"),
                    critical=True,
                ),
                _presence("nodules", "Pulmonary nodules", Code("27925004", "SCT", "Nodule")),
                _millimetres(
                    "largest_nodule_mm",
                    "Largest nodule diameter",
                    Code("81827009", "SCT", "Diameter"),
                    maximum=300.0,
                ),
                _presence(
                    "pneumothorax",
                    "Pneumothorax",
                    Code("36118008", "SCT", "Pneumothorax"),
                    critical=True,
                ),
                _presence(
                    "pleural_effusion",
                    "Pleural effusion",
                    Code("60046008", "SCT", "Pleural effusion"),
                ),
            ),
        ),
        ReportTemplate(
            "ct-abdomen",
            "CT abdomen",
            Code("41806-1", "LN", "CT Abdomen Report"),
            (
                _presence(
                    "free_air",
                    "Free intraperitoneal air",
                    Code("FREEAIR", LOCAL_SCHEME, "Free intraperitoneal air"),
                    critical=True,
                ),
                _presence(
                    "bowel_obstruction",
                    "Bowel obstruction",
                    Code("BOWELOBS", LOCAL_SCHEME, "Bowel obstruction"),
                    critical=True,
                ),
                _presence("abscess", "Abscess", Code("44132006", "SCT", "Abscess")),
                _presence("mass", "Mass", Code("4147007", "SCT", "Mass")),
            ),
        ),
        ReportTemplate("generic", "Generic", Code("18748-4", "LN", "Diagnostic Imaging Report")),
    )
}


def get_template(key: str) -> ReportTemplate:
    """The template ``key``; :class:`UnknownTemplate` otherwise."""
    try:
        return TEMPLATES[key]
    except (KeyError, TypeError):
        known = ", ".join(sorted(TEMPLATES))
        raise UnknownTemplate(f"unknown template {str(key)[:40]!r} (known: {known})") from None


@dataclass(frozen=True, slots=True)
class KeyImageRef:
    """An image (and frame) of the study the radiologist picked as a key image."""

    sop_instance_uid: str
    frame: int = 1


@dataclass(frozen=True, slots=True)
class ReportContent:
    """Validated report content: section texts, coded field values, key images, flags."""

    sections: Mapping[str, str] = field(default_factory=dict)
    fields: Mapping[str, str | float] = field(default_factory=dict)
    key_images: tuple[KeyImageRef, ...] = ()
    #: The radiologist's own critical-finding flag (besides critical field values).
    critical: bool = False
    #: The text of an addendum (addenda only).
    addendum: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON form (the form :func:`parse_content` reads)."""
        return {
            "sections": dict(self.sections),
            "fields": dict(self.fields),
            "key_images": [
                {"sop_instance_uid": k.sop_instance_uid, "frame": k.frame} for k in self.key_images
            ],
            "critical": self.critical,
            "addendum": self.addendum,
        }


_CONTENT_KEYS = {"sections", "fields", "key_images", "critical", "addendum"}


def parse_content(
    template: ReportTemplate, raw: object, *, addendum: bool = False
) -> ReportContent:
    """Validate ``raw`` (decoded JSON) against ``template``.

    Every section and field is optional while drafting; unknown keys, wrong types, values
    outside their choices or range, control characters and over-long texts are rejected with
    :class:`InvalidReportContent` naming the offending key. ``addendum`` text is accepted only
    for addenda.
    """
    if not isinstance(raw, Mapping):
        raise InvalidReportContent("content must be a JSON object")
    unknown = set(raw) - _CONTENT_KEYS
    if unknown:
        raise InvalidReportContent(
            f"unknown content key(s): {', '.join(sorted(map(str, unknown)))}"
        )
    sections = _sections(raw.get("sections", {}))
    addendum_text = _text("addendum", raw.get("addendum", ""))
    if addendum_text and not addendum:
        raise InvalidReportContent("only an addendum has addendum text")
    total = sum(map(len, sections.values())) + len(addendum_text)
    if total > MAX_TOTAL_CHARS:
        raise InvalidReportContent(f"the report text exceeds {MAX_TOTAL_CHARS} characters")
    critical = raw.get("critical", False)
    if not isinstance(critical, bool):
        raise InvalidReportContent("critical must be true or false")
    return ReportContent(
        sections=sections,
        fields=_fields(template, raw.get("fields", {})),
        key_images=_key_images(raw.get("key_images", [])),
        critical=critical,
        addendum=addendum_text,
    )


def _sections(raw: object) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise InvalidReportContent("sections must be an object of section → text")
    result: dict[str, str] = {}
    for key, value in raw.items():
        if key not in SECTION_KEYS:
            raise InvalidReportContent(
                f"unknown section {str(key)[:40]!r} (sections: {', '.join(SECTION_KEYS)})"
            )
        text = _text(f"sections.{key}", value)
        if text:
            result[key] = text
    return {key: result[key] for key in SECTION_KEYS if key in result}


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidReportContent(f"{name} must be text")
    text = value.replace("\r\n", "\n").replace("\r", "\n")
    if len(text) > MAX_SECTION_CHARS:
        raise InvalidReportContent(f"{name} exceeds {MAX_SECTION_CHARS} characters")
    if _CONTROL.search(text):
        raise InvalidReportContent(f"{name} contains control characters")
    return text.strip()


def _fields(template: ReportTemplate, raw: object) -> dict[str, str | float]:
    if not isinstance(raw, Mapping):
        raise InvalidReportContent("fields must be an object of field → value")
    values: dict[str, str | float] = {}
    for key, value in raw.items():
        item = template.field(str(key))
        if value is None:
            continue
        values[item.key] = _field_value(item, value)
    return {item.key: values[item.key] for item in template.fields if item.key in values}


def _field_value(item: CodedField, value: object) -> str | float:
    if item.kind == "presence":
        if value not in PRESENCE:
            raise InvalidReportContent(f"fields.{item.key} must be one of {', '.join(PRESENCE)}")
        return str(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidReportContent(f"fields.{item.key} must be a number ({item.unit_label})")
    if not item.minimum <= value <= item.maximum:
        raise InvalidReportContent(
            f"fields.{item.key} must be between {item.minimum:g} and {item.maximum:g} "
            f"{item.unit_label}"
        )
    return float(value)


def _key_images(raw: object) -> tuple[KeyImageRef, ...]:
    if not isinstance(raw, list):
        raise InvalidReportContent("key_images must be a list")
    if len(raw) > MAX_KEY_IMAGES:
        raise InvalidReportContent(f"at most {MAX_KEY_IMAGES} key images")
    refs: list[KeyImageRef] = []
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping) or set(item) - {"sop_instance_uid", "frame"}:
            raise InvalidReportContent(f"key_images[{index}] must be {{sop_instance_uid, frame}}")
        uid, frame = item.get("sop_instance_uid"), item.get("frame", 1)
        if not isinstance(uid, str) or len(uid) > 64 or not _UID_RE.fullmatch(uid):
            raise InvalidReportContent(f"key_images[{index}].sop_instance_uid is not a UID")
        if isinstance(frame, bool) or not isinstance(frame, int) or not 1 <= frame <= 100_000:
            raise InvalidReportContent(f"key_images[{index}].frame must be a positive integer")
        ref = KeyImageRef(uid, frame)
        if ref not in refs:
            refs.append(ref)
    return tuple(refs)


def critical_findings(template: ReportTemplate, content: ReportContent) -> list[str]:
    """Labels of the coded fields whose values are critical findings (template order)."""
    return [
        item.label
        for item in template.fields
        if item.key in content.fields and item.is_critical(content.fields[item.key])
    ]


def is_critical(template: ReportTemplate, content: ReportContent) -> bool:
    """The report carries a critical finding: flagged by the radiologist or by a field value."""
    return content.critical or bool(critical_findings(template, content))


def canonical_json(value: object) -> bytes:
    """UTF-8 JSON with sorted keys and no insignificant whitespace: the bytes that are hashed."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def content_sha256(template_key: str, study_uid: str, content: ReportContent) -> str:
    """SHA-256 (hex) of the canonical content of a report, bound to its template and study."""
    document = {"template": template_key, "study_uid": study_uid, **content.as_dict()}
    return hashlib.sha256(canonical_json(document)).hexdigest()


def template_summary(template: ReportTemplate) -> dict[str, Any]:
    """A template as plain JSON, for clients building a report form."""
    return {
        "key": template.key,
        "label": template.label,
        "title": template.title.as_dict(),
        "sections": [
            {"key": s.key, "label": s.label, "heading": s.heading.as_dict()} for s in SECTIONS
        ],
        "fields": [_field_summary(item) for item in template.fields],
    }


def _field_summary(item: CodedField) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "key": item.key,
        "label": item.label,
        "kind": item.kind,
        "concept": item.concept.as_dict(),
    }
    if item.kind == "presence":
        summary["choices"] = {key: code.as_dict() for key, code in PRESENCE.items()}
        summary["critical_when_present"] = item.critical_when_present
    else:
        summary["unit"] = item.unit.as_dict() if item.unit else None
        summary["minimum"], summary["maximum"] = item.minimum, item.maximum
        summary["critical_at"] = item.critical_at
    return summary
