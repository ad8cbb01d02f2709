"""The report as a FHIR R4 DiagnosticReport resource (pure builder).

Elements (FHIR R4 §DiagnosticReport): ``status`` from the R4 value set
``diagnostic-report-status`` (``registered`` for a draft, ``preliminary``, ``final``,
``amended`` or ``appended`` for addenda); ``category`` RAD (HL7 v2 table 0074); ``code``
LOINC 18748-4 "Diagnostic imaging study" plus the template's report title code; ``subject`` a
logical reference by the patient's identifier; ``effectiveDateTime`` the study date;
``issued`` when the version was issued or signed; ``performer`` the institution;
``resultsInterpreter`` the signer (or author); ``imagingStudy`` a reference to the
ImagingStudy whose id is the Study Instance UID (a UID is a valid FHIR id) with identifier
``urn:oid:<StudyInstanceUID>`` (system ``urn:dicom:uid``, as the ImagingStudy resource uses);
``conclusion`` the impression; ``conclusionCode`` the present coded findings; and
``presentedForm`` the PDF (inline base64 or by URL).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from telerad.worklist.report_view import ReportBundle, ReportVersion
from telerad.worklist.templates import LOCAL_SCHEME, Code

SYSTEMS = {
    "LN": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
    LOCAL_SCHEME: "urn:telerad:codes",
}
DICOM_UID_SYSTEM = "urn:dicom:uid"
REPORT_ID_SYSTEM = "urn:telerad:report"
USER_SYSTEM = "urn:telerad:user"


def coding(code: Code) -> dict[str, str]:
    """A DICOM-style code as a FHIR Coding."""
    return {"system": SYSTEMS[code.scheme], "code": code.value, "display": code.meaning}


def fhir_instant(value: datetime) -> str:
    """A FHIR ``instant`` (UTC, with seconds)."""
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def fhir_date(dicom_date: str) -> str | None:
    """A DICOM DA (``YYYYMMDD``) as a FHIR ``date``; None if not a full date."""
    if len(dicom_date) != 8 or not dicom_date.isdigit():
        return None
    return f"{dicom_date[:4]}-{dicom_date[4:6]}-{dicom_date[6:]}"


def build_diagnostic_report(
    bundle: ReportBundle,
    *,
    pdf: bytes | None = None,
    pdf_url: str | None = None,
    sr_sop_instance_uid: str | None = None,
) -> dict[str, Any]:
    """The DiagnosticReport of ``bundle.version`` as a JSON-ready dict.

    ``pdf`` is embedded as base64 in ``presentedForm``; else ``pdf_url`` is referenced.
    ``sr_sop_instance_uid`` (the DICOM SR of the version) is added as an identifier.
    """
    version = bundle.version
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": f"report-{version.id}",
        "meta": {"lastUpdated": fhir_instant(version.updated_at)},
        "identifier": _identifiers(version, sr_sop_instance_uid),
        "status": version.fhir_status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "code": "RAD",
                        "display": "Radiology",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": SYSTEMS["LN"], "code": "18748-4", "display": "Diagnostic imaging study"},
                coding(version.template.title),
            ],
            "text": version.template.title.meaning,
        },
        "subject": _subject(bundle),
        "performer": [{"display": bundle.institution}] if bundle.institution else [],
        "resultsInterpreter": [_interpreter(version)],
        "imagingStudy": [_imaging_study(version.study_uid)],
    }
    effective = fhir_date(bundle.study.study_date)
    if effective:
        resource["effectiveDateTime"] = effective
    issued = _issued(version)
    if issued:
        resource["issued"] = fhir_instant(issued)
    conclusion = _conclusion(bundle)
    if conclusion:
        resource["conclusion"] = conclusion
    conclusion_codes = _conclusion_codes(version)
    if conclusion_codes:
        resource["conclusionCode"] = conclusion_codes
    form = _presented_form(version, pdf, pdf_url, issued)
    if form:
        resource["presentedForm"] = [form]
    return {key: value for key, value in resource.items() if value != []}


def _identifiers(version: ReportVersion, sr_uid: str | None) -> list[dict[str, str]]:
    identifiers = [{"system": REPORT_ID_SYSTEM, "value": str(version.id)}]
    if sr_uid:
        identifiers.append({"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{sr_uid}"})
    return identifiers


def _subject(bundle: ReportBundle) -> dict[str, Any]:
    study = bundle.study
    issuer = quote(study.issuer_of_patient_id or "unknown", safe="")
    subject: dict[str, Any] = {
        "type": "Patient",
        "identifier": {"system": f"urn:telerad:patient-id:{issuer}", "value": study.patient_id},
    }
    if not study.patient_id:
        subject["identifier"] = {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study.study_uid}"}
    return subject


def _interpreter(version: ReportVersion) -> dict[str, Any]:
    if version.signature is not None:
        name = version.signature.signer or version.signature.signer_username
        username = version.signature.signer_username
    else:
        name, username = version.author or version.author_username, version.author_username
    return {
        "type": "Practitioner",
        "identifier": {"system": USER_SYSTEM, "value": username},
        "display": name,
    }


def _imaging_study(study_uid: str) -> dict[str, Any]:
    return {
        "reference": f"ImagingStudy/{study_uid}",
        "type": "ImagingStudy",
        "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"},
    }


def _issued(version: ReportVersion) -> datetime | None:
    if version.signature is not None:
        return version.signature.signed_at
    return version.preliminary_at


def _conclusion(bundle: ReportBundle) -> str:
    """The latest impression of the chain up to this version, followed by the addenda signed
    after it: an appended report's conclusion is the whole current conclusion."""
    upto = [v for v in bundle.chain if v.sequence <= bundle.version.sequence] or [bundle.version]
    impression, addenda = "", list[str]()
    for item in upto:
        text = item.content.sections.get("impression", "")
        if text:
            impression, addenda = text, []
        if item.content.addendum:
            addenda.append(f"Addendum {item.sequence}: {item.content.addendum}")
    return "\n".join(p for p in (impression, *addenda) if p)


def _conclusion_codes(version: ReportVersion) -> list[dict[str, Any]]:
    codes = []
    for item in version.template.fields:
        if item.kind == "presence" and version.content.fields.get(item.key) == "present":
            codes.append({"coding": [coding(item.concept)], "text": item.label})
    return codes


def _presented_form(
    version: ReportVersion, pdf: bytes | None, pdf_url: str | None, issued: datetime | None
) -> dict[str, Any] | None:
    if pdf is None and pdf_url is None:
        return None
    form: dict[str, Any] = {
        "contentType": "application/pdf",
        "language": "en-US",
        "title": f"{version.template.title.meaning} (report {version.id})",
    }
    if pdf is not None:
        form["data"] = base64.b64encode(pdf).decode("ascii")
    else:
        form["url"] = pdf_url
    if issued is not None:
        form["creation"] = fhir_instant(issued)
    return form
