"""HTML (escaped), PDF (opens, text extractable, images) and FHIR R4 DiagnosticReport outputs
of a report (pure builders)."""

from __future__ import annotations

import base64
import io
from typing import Any

import pypdf
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from markupsafe import escape
from PIL import Image

from telerad.worklist import (
    KeyImage,
    build_diagnostic_report,
    render_report_html,
    render_report_pdf,
)
from telerad.worklist.templates import parse_content
from tests.factories import ct_datasets, report_bundle

HOSTILE = '<img src=x onerror="alert(1)"> & </div>'
CONTENT = {
    "sections": {
        "clinical_information": HOSTILE,
        "findings": "Left subdural haematoma.\nSecond line.",
        "impression": "Acute SDH — urgent review.",
        "recommendation": "Neurosurgery.",
    },
    "fields": {"haemorrhage": "present", "midline_shift_mm": 6.5, "mass": "absent"},
}


@pytest.fixture(scope="module")
def datasets() -> list[Any]:
    return ct_datasets(2, patient_name="O'Brien^Seán<b>")


def jpeg(width: int = 40, height: int = 30) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 100).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_html_escapes_everything_it_did_not_write(datasets: list[Any]) -> None:
    bundle = report_bundle(datasets, CONTENT, institution="St <Mary> & Co")
    page = render_report_html(bundle)
    assert HOSTILE not in page and 'onerror="alert' not in page
    assert str(escape(HOSTILE)) in page
    assert "St &lt;Mary&gt; &amp; Co" in page
    assert "Seán&lt;b&gt; O&#39;Brien" in page
    assert "Acute SDH — urgent review." in page
    assert "Critical finding: Intracranial haemorrhage, Midline shift" in page
    assert "c" * 64 in page and "d" * 64 in page  # signature block: both hashes
    assert "Jane Roe (rad1) on 2026-11-24 13:30 UTC" in page


def test_html_shows_key_images_and_addenda(datasets: list[Any]) -> None:
    image = jpeg()
    original = report_bundle(datasets, CONTENT).version
    content = {**CONTENT, "addendum": "Comparison <with> prior."}
    bundle = report_bundle(
        datasets, content, kind="addendum", sequence=1, chain=(original,),
        predecessor_content=original.content,
        key_images=(KeyImage(datasets[0].SOPInstanceUID, 1, image),),
    )  # fmt: skip
    page = render_report_html(bundle)
    assert f"data:image/jpeg;base64,{base64.b64encode(image).decode()}" in page
    assert "Comparison &lt;with&gt; prior." in page
    assert "FINAL (ADDENDUM)" in page
    assert page.count("<li>Version") == 2


def test_pdf_opens_and_its_text_is_extractable(datasets: list[Any]) -> None:
    bundle = report_bundle(
        datasets, CONTENT, key_images=(KeyImage(datasets[0].SOPInstanceUID, 1, jpeg(200, 100)),)
    )
    pdf = render_report_pdf(bundle)
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert pdf.startswith(b"%PDF-")
    for expected in ("Acute SDH — urgent review.", HOSTILE, "Intracranial haemorrhage",
                     "City Hospital", "c" * 64, "Seán<b> O'Brien", "CT Head Report"):  # fmt: skip
        assert expected in text, expected
    assert sum(len(page.images) for page in reader.pages) == 1
    assert reader.metadata is not None and reader.metadata.title == "CT Head Report 10"


def test_pdf_prints_chinese_names_and_text() -> None:
    """County patients' names are often Chinese (GB18030 at the scanner): the PDF must carry
    the characters, not empty boxes from a font without CJK glyphs."""
    datasets = ct_datasets(1, patient_name="Wang^Xiaoming=王^小明")
    content = {**CONTENT, "sections": {**CONTENT["sections"], "impression": "右侧硬膜下血肿。"}}
    pdf = render_report_pdf(report_bundle(datasets, content))
    text = "".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)
    assert "右侧硬膜下血肿。" in text
    assert "王" in text and "小明" in text
    assert b"STSong-Light" in pdf


STATUSES = [
    ("draft", "report", False, "registered"),
    ("preliminary", "report", False, "preliminary"),
    ("final", "report", False, "final"),
    ("final", "addendum", True, "appended"),
    ("final", "addendum", False, "amended"),
]


@pytest.mark.parametrize(("status", "kind", "same", "expected"), STATUSES)
def test_fhir_status(
    datasets: list[Any], status: str, kind: str, same: bool, expected: str
) -> None:
    from telerad.worklist import get_template

    previous = parse_content(get_template("ct-head"), CONTENT if same else {"sections": {}})
    content = {**CONTENT, "addendum": "More."} if kind == "addendum" else CONTENT
    bundle = report_bundle(
        datasets, content, status=status, kind=kind, predecessor_content=previous,
        sequence=1 if kind == "addendum" else 0,
    )  # fmt: skip
    resource = build_diagnostic_report(bundle)
    assert resource["status"] == expected
    assert DiagnosticReport.model_validate(resource).status == expected


def test_fhir_diagnostic_report_fields(datasets: list[Any]) -> None:
    bundle = report_bundle(datasets, CONTENT)
    pdf = b"%PDF-1.4 fake"
    resource = build_diagnostic_report(bundle, pdf=pdf, sr_sop_instance_uid="1.2.3.4")
    model = DiagnosticReport.model_validate(resource)
    study_uid = datasets[0].StudyInstanceUID
    assert model.get_resource_type() == "DiagnosticReport"
    assert [(c.system, c.code) for c in model.code.coding] == [
        ("http://loinc.org", "18748-4"), ("http://loinc.org", "24725-4"),
    ]  # fmt: skip
    assert resource["imagingStudy"] == [{
        "reference": f"ImagingStudy/{study_uid}", "type": "ImagingStudy",
        "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"},
    }]  # fmt: skip
    assert resource["subject"]["identifier"]["value"] == datasets[0].PatientID
    assert resource["effectiveDateTime"] == (
        f"{datasets[0].StudyDate[:4]}-{datasets[0].StudyDate[4:6]}-{datasets[0].StudyDate[6:]}"
    )
    assert resource["issued"] == "2026-11-24T13:30:15Z"
    assert resource["resultsInterpreter"][0]["display"] == "Jane Roe"
    assert resource["conclusion"] == "Acute SDH — urgent review."
    assert [c["coding"][0]["code"] for c in resource["conclusionCode"]] == ["1386000"]
    assert base64.b64decode(resource["presentedForm"][0]["data"]) == pdf
    assert {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4"} in resource["identifier"]


def test_fhir_without_pdf_links_it(datasets: list[Any]) -> None:
    resource = build_diagnostic_report(report_bundle(datasets, CONTENT), pdf_url="https://x/1.pdf")
    assert resource["presentedForm"][0] == {
        "contentType": "application/pdf", "language": "en-US", "url": "https://x/1.pdf",
        "title": "CT Head Report (report 10)", "creation": "2026-11-24T13:30:15Z",
    }  # fmt: skip
    DiagnosticReport.model_validate(resource)
