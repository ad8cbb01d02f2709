"""The report as a self-contained HTML page (pure builder).

Rendered with Jinja2 with autoescaping on, so every text the radiologist or the study brought
in (section texts, patient name, institution) is escaped; key images are embedded as
``data:`` URIs so the page needs no further request (and no token) to show them.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from jinja2 import Environment, StrictUndefined

from telerad.worklist.report_view import (
    ReportBundle,
    ReportVersion,
    field_rows,
    format_dicom_date,
    format_person_name,
)
from telerad.worklist.templates import SECTIONS

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }} — {{ status_label }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; color: #111; }
header { border-bottom: 2px solid #333; margin-bottom: 1rem; }
.status { font-weight: bold; padding: 0.1rem 0.5rem; border: 1px solid #333; }
.critical { background: #fee; border: 2px solid #c00; padding: 0.5rem; font-weight: bold; }
table { border-collapse: collapse; } td, th { padding: 0.2rem 0.6rem; text-align: left; }
.text { white-space: pre-wrap; }
.hash { font-family: monospace; font-size: 0.8rem; word-break: break-all; }
figure { display: inline-block; margin: 0.5rem; } img { max-width: 24rem; }
</style>
</head>
<body>
<header>
<div class="institution">{{ institution }}</div>
<h1>{{ title }}</h1>
<p><span class="status">{{ status_label }}</span> Report {{ report_id }},
version {{ sequence }}{% if kind == "addendum" %} (addendum){% endif %}</p>
</header>
<section id="patient">
<table>
<tr><th>Patient</th><td>{{ patient_name }}</td></tr>
<tr><th>Patient ID</th><td>{{ patient_id }}{% if issuer %} ({{ issuer }}){% endif %}</td></tr>
<tr><th>Birth date</th><td>{{ birth_date }}</td><th>Sex</th><td>{{ sex }}</td></tr>
<tr><th>Study</th><td>{{ study_description }}</td><th>Date</th><td>{{ study_date }}</td></tr>
<tr><th>Accession</th><td>{{ accession }}</td><th>Referring</th><td>{{ referring }}</td></tr>
<tr><th>Study UID</th><td colspan="3" class="hash">{{ study_uid }}</td></tr>
</table>
</section>
{% if critical %}
<p class="critical">Critical finding{% if critical_findings %}: {{ critical_findings|join(", ") }}
{% endif %}</p>
{% endif %}
{% for section in sections %}
<section class="report-section" id="{{ section.key }}">
<h2>{{ section.label }}</h2>
<div class="text">{{ section.text }}</div>
{% if section.key == "findings" and fields %}
<table class="coded">
<tr><th>Finding</th><th>Value</th><th>Code</th></tr>
{% for row in fields %}
<tr{% if row.critical %} class="critical"{% endif %}><td>{{ row.label }}</td>
<td>{{ row.value }}</td><td>{{ row.code }}</td></tr>
{% endfor %}
</table>
{% endif %}
</section>
{% endfor %}
{% if images %}
<section id="key-images">
<h2>Key images</h2>
{% for image in images %}
<figure><img src="{{ image.src }}" alt="Key image {{ loop.index }}">
<figcaption>{{ image.caption }}</figcaption></figure>
{% endfor %}
</section>
{% endif %}
{% if addenda %}
<section id="addenda">
<h2>Addenda</h2>
{% for addendum in addenda %}
<article class="addendum">
<h3>Addendum {{ addendum.sequence }} — {{ addendum.signed }}</h3>
<div class="text">{{ addendum.text }}</div>
</article>
{% endfor %}
</section>
{% endif %}
<section id="signature">
<h2>Signature</h2>
{% if signature %}
<p>Signed by {{ signature.signer }} ({{ signature.username }}) on {{ signature.at }}</p>
<p>Content SHA-256: <span class="hash">{{ signature.content }}</span></p>
<p>Record SHA-256: <span class="hash">{{ signature.record }}</span></p>
{% else %}
<p>Not signed ({{ status_label }}). Author: {{ author }}</p>
{% endif %}
</section>
<section id="history">
<h2>History</h2>
<ol>
{% for item in history %}
<li>Version {{ item.sequence }} ({{ item.kind }}): {{ item.status }}{% if item.signed %},
signed {{ item.signed }}{% endif %}{% if item.record %},
record <span class="hash">{{ item.record }}</span>{% endif %}</li>
{% endfor %}
</ol>
</section>
</body>
</html>
"""
_ENVIRONMENT = Environment(autoescape=True, undefined=StrictUndefined, keep_trailing_newline=True)
_TEMPLATE = _ENVIRONMENT.from_string(_PAGE)
STATUS_LABELS = {
    "registered": "DRAFT",
    "preliminary": "PRELIMINARY",
    "final": "FINAL",
    "amended": "FINAL (AMENDED)",
    "appended": "FINAL (ADDENDUM)",
}


def render_report_html(bundle: ReportBundle) -> str:
    """The report page: header, patient and study, sections with coded findings, key images,
    addenda, signature block and version history. Every value is HTML-escaped."""
    version = bundle.version
    study = bundle.study
    return _TEMPLATE.render(
        title=version.template.title.meaning,
        institution=bundle.institution,
        status_label=STATUS_LABELS[version.fhir_status],
        report_id=version.id,
        sequence=version.sequence,
        kind=version.kind.value,
        patient_name=format_person_name(study.patient_name),
        patient_id=study.patient_id,
        issuer=study.issuer_of_patient_id,
        birth_date=format_dicom_date(study.birth_date),
        sex=study.sex,
        study_description=study.study_description,
        study_date=format_dicom_date(study.study_date),
        accession=study.accession_number,
        referring=format_person_name(study.referring_physician),
        study_uid=study.study_uid,
        critical=version.critical,
        critical_findings=version.critical_findings,
        sections=_sections(version),
        fields=field_rows(version),
        images=[
            {
                "src": f"data:{image.media_type};base64,{base64.b64encode(image.data).decode()}",
                "caption": f"{image.sop_instance_uid} frame {image.frame}",
            }
            for image in bundle.key_images
        ],
        addenda=_addenda(bundle),
        signature=_signature(version),
        author=version.author or version.author_username,
        history=[_history_item(item) for item in bundle.chain],
    )


def format_time(value: datetime) -> str:
    """A timestamp as shown in reports (UTC, minutes)."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _sections(version: ReportVersion) -> list[dict[str, str]]:
    sections = []
    for section in SECTIONS:
        text = version.content.sections.get(section.key, "")
        has_fields = section.key == "findings" and bool(version.content.fields)
        if text or has_fields:
            sections.append({"key": section.key, "label": section.label, "text": text})
    return sections


def _addenda(bundle: ReportBundle) -> list[dict[str, object]]:
    addenda: list[dict[str, object]] = []
    for item in bundle.chain:
        if item.sequence > bundle.version.sequence or not item.content.addendum:
            continue
        signed = format_time(item.signature.signed_at) if item.signature else "not signed"
        if item.signature:
            signed = f"{item.signature.signer or item.signature.signer_username}, {signed}"
        addenda.append({"sequence": item.sequence, "signed": signed, "text": item.content.addendum})
    return addenda


def _signature(version: ReportVersion) -> dict[str, str] | None:
    signature = version.signature
    if signature is None:
        return None
    return {
        "signer": signature.signer or signature.signer_username,
        "username": signature.signer_username,
        "at": format_time(signature.signed_at),
        "content": signature.content_sha256,
        "record": signature.record_sha256,
    }


def _history_item(version: ReportVersion) -> dict[str, object]:
    signature = version.signature
    return {
        "sequence": version.sequence,
        "kind": version.kind.value,
        "status": version.status.value,
        "signed": format_time(signature.signed_at) if signature else "",
        "record": signature.record_sha256 if signature else "",
    }
