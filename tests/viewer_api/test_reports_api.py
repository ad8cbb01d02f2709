"""Reports over HTTP on SQLite and PostgreSQL: the lifecycle with real roles, the SR in the
study (QIDO), the outputs (HTML, PDF, FHIR), the addendum chain, visibility and refusals."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pydicom
import pypdf
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from sqlalchemy import select

from telerad.storage import AuditEvent, ReadingTask, User
from telerad.worklist import create_user
from tests.conftest import PASSWORD, Api
from tests.factories import ct_instances, manifest_of, multipart_related

CONTENT = {
    "sections": {
        "clinical_information": "Headache <script>alert(1)</script>",
        "technique": "Non-contrast CT head.",
        "findings": "Acute left subdural haematoma.",
        "impression": "Acute SDH & midline shift.",
        "recommendation": "Neurosurgical referral.",
    },
    "fields": {"haemorrhage": "present", "midline_shift_mm": 6.5, "mass": "absent"},
}


@dataclass
class Study:
    uid: str
    task_id: int
    instances: list[str]


def login(api: Api, name: str) -> dict[str, str]:
    if name not in api.tokens:
        response = api.client.post("/api/auth/token", data={"username": name, "password": PASSWORD})
        assert response.status_code == 200, response.text
        api.tokens[name] = response.json()["access_token"]
    return api.headers(name)


def add_user(api: Api, name: str, role: str, site: str | None, reads: tuple[str, ...]) -> None:
    with api.services.writer.begin() as session:
        if session.scalar(select(User).where(User.username == name)) is None:
            create_user(session, name, PASSWORD, role, site=site, reads_for=reads)


def read_study(api: Api, reader: str = "rad1") -> Study:
    """A county1 study stored and completed over HTTP; its task claimed by ``reader``."""
    instances = ct_instances(2)
    body, content_type = multipart_related(instances)
    headers = {"Content-Type": content_type, **api.headers("site")}
    assert api.client.post("/dicomweb/studies", content=body, headers=headers).status_code == 200
    study_uid, entries = manifest_of(instances)
    manifest = {"instances": [{"sop_instance_uid": u, "sha256": h} for u, h in entries.items()]}
    response = api.client.put(
        f"/api/studies/{study_uid}/manifest", json=manifest, headers=api.headers("site")
    )
    assert response.json()["complete"]
    # intake ran on completion: the task is on the worklist of a county1 radiologist
    [task] = api.client.get(
        "/api/worklist", params={"study": study_uid}, headers=login(api, "admin")
    ).json()
    task_id = task["id"]
    if task.get("assigned_to") != reader:  # an administrator (re)assigns it
        assigned = api.client.post(
            f"/api/worklist/{task_id}/assign", json={"user": reader}, headers=login(api, "admin")
        )
        assert assigned.status_code == 200, assigned.text
    claimed = api.client.post(f"/api/worklist/{task_id}/claim", headers=login(api, reader))
    assert claimed.status_code == 200, claimed.text
    return Study(study_uid, task_id, sorted(entries))


def post(api: Api, path: str, who: str, **kwargs: Any) -> Any:
    return api.client.post(
        f"/api/reports{path}", headers={**login(api, who), **kwargs.pop("headers", {})}, **kwargs
    )


def get(api: Api, path: str, who: str, **headers: str) -> Any:
    return api.client.get(f"/api/reports{path}", headers={**login(api, who), **headers})


def put(api: Api, report_id: int, who: str, body: Any, etag: str | None) -> Any:
    headers = login(api, who) | ({"If-Match": etag} if etag else {})
    return api.client.put(f"/api/reports/{report_id}", json=body, headers=headers)


def draft(api: Api, study: Study) -> tuple[int, str]:
    response = post(api, "", "rad1", json={"study_uid": study.uid, "template": "ct-head"})
    assert response.status_code == 201, response.text
    return response.json()["id"], response.headers["ETag"]


def sr_series(api: Api, study_uid: str, who: str = "admin") -> list[dict[str, Any]]:
    response = api.client.get(
        f"/dicomweb/studies/{study_uid}/series", params={"Modality": "SR"}, headers=login(api, who)
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_lifecycle_over_http(shared_api: Api) -> None:
    api = shared_api
    add_user(api, "rad9", "radiologist", None, ("county1",))
    add_user(api, "rad-other", "radiologist", None, ("county2",))
    study = read_study(api)
    elsewhere = api.client.get(
        "/api/worklist", params={"study": study.uid}, headers=login(api, "rad-other")
    )
    assert elsewhere.status_code == 200 and elsewhere.json() == []
    report_id, etag = draft(api, study)

    assert put(api, report_id, "rad1", CONTENT, None).status_code == 428
    assert put(api, report_id, "rad1", CONTENT, f'"{report_id}.99"').status_code == 412
    saved = put(api, report_id, "rad1", CONTENT, etag)
    assert saved.status_code == 200 and saved.json()["version"] == 2
    assert saved.json()["critical_findings"] == ["Intracranial haemorrhage", "Midline shift"]
    assert get(api, f"/{report_id}", "rg1").status_code == 404  # a draft: not for the site yet

    assert post(api, f"/{report_id}/sign", "rad9").status_code == 403  # rad1 holds the task
    assert post(api, f"/{report_id}/addendum", "rad1").status_code == 409  # a draft
    prelim = post(
        api, f"/{report_id}/preliminary", "rad1", headers={"If-Match": saved.headers["ETag"]}
    )
    assert prelim.status_code == 200, prelim.text
    assert [d["stored"] for d in prelim.json()["documents"]] == [True]
    assert get(api, f"/{report_id}", "rg1").json()["status"] == "preliminary"

    signed = post(api, f"/{report_id}/sign", "rad1")
    assert signed.status_code == 200, signed.text
    body = signed.json()
    assert body["status"] == "final" and len(body["signature"]["content_sha256"]) == 64
    assert [d["status"] for d in body["documents"]] == ["preliminary", "final"]
    with api.services.sessions() as session:
        assert session.get(ReadingTask, study.task_id).state == "COMPLETED"  # type: ignore[union-attr]
    [series] = sr_series(api, study.uid, "rg1")
    assert series["00201209"]["Value"] == [2]  # preliminary and final SR documents
    assert put(api, report_id, "rad1", CONTENT, signed.headers["ETag"]).status_code == 409


def test_outputs_html_pdf_fhir(shared_api: Api) -> None:
    api = shared_api
    study = read_study(api)
    report_id, etag = draft(api, study)
    put(api, report_id, "rad1", CONTENT, etag)
    assert post(api, f"/{report_id}/sign", "rad1").status_code == 200

    html = get(api, f"/{report_id}.html", "rg1")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html.text and "<script>" not in html.text
    assert "Acute SDH &amp; midline shift." in html.text
    negotiated = get(api, f"/{report_id}", "rg1", Accept="text/html")
    assert negotiated.text == html.text

    pdf = get(api, f"/{report_id}.pdf", "rg1")
    assert pdf.headers["content-type"] == "application/pdf"
    text = "".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Acute SDH & midline shift." in text and "Intracranial haemorrhage" in text

    fhir = get(api, f"/{report_id}/fhir", "rg1")
    assert fhir.headers["content-type"].startswith("application/fhir+json")
    resource = DiagnosticReport.model_validate(fhir.json())
    assert resource.status == "final"
    assert fhir.json()["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{study.uid}"
    assert fhir.json()["conclusion"] == "Acute SDH & midline shift."
    assert get(api, f"/{report_id}", "rg1", Accept="application/fhir+json").json() == fhir.json()


def test_addendum_chain_over_http(shared_api: Api) -> None:
    api = shared_api
    add_user(api, "rad9", "radiologist", None, ("county1",))
    study = read_study(api)
    first, etag = draft(api, study)
    put(api, first, "rad1", CONTENT, etag)
    assert post(api, f"/{first}/sign", "rad1").status_code == 200

    started = post(api, f"/{first}/addendum", "rad9")
    assert started.status_code == 201, started.text
    second = started.json()["id"]
    assert post(api, f"/{first}/addendum", "rad1").status_code == 409  # one successor only
    body = {**CONTENT, "addendum": "Outside CT from 2020 reviewed: lesion is new."}
    saved = put(api, second, "rad9", body, started.headers["ETag"])
    assert saved.status_code == 200, saved.text
    assert post(api, f"/{second}/sign", "rad9").status_code == 200

    versions = get(api, f"/{second}/versions", "rg1").json()
    assert versions["chain_intact"] is True
    assert [(v["sequence"], v["status"]) for v in versions["versions"]] == [
        (0, "final"),
        (1, "final"),
    ]
    assert versions["versions"][1]["predecessor_id"] == first
    assert get(api, f"/{first}", "rg1").json()["status"] == "final"  # the old one stays readable
    fhir = get(api, f"/{second}/fhir", "rg1").json()
    assert fhir["status"] == "appended"
    assert fhir["conclusion"].splitlines() == [
        CONTENT["sections"]["impression"],
        "Addendum 1: Outside CT from 2020 reviewed: lesion is new.",
    ]
    [series] = sr_series(api, study.uid)
    assert series["00201209"]["Value"] == [2]  # original final SR and the addendum's
    html = get(api, f"/{second}.html", "rg1").text
    assert "Outside CT from 2020 reviewed" in html


@pytest.mark.parametrize("who", ["rg2", "ref1", "rad-other"])
def test_others_get_404_like_for_a_missing_report(shared_api: Api, who: str) -> None:
    api = shared_api
    add_user(api, "rad-other", "radiologist", None, ("county2",))
    study = read_study(api)
    report_id, etag = draft(api, study)
    put(api, report_id, "rad1", CONTENT, etag)
    post(api, f"/{report_id}/sign", "rad1")

    for path in (
        f"/{report_id}",
        f"/{report_id}.pdf",
        f"/{report_id}/fhir",
        f"/{report_id}/versions",
    ):
        response = get(api, path, who)
        assert response.status_code == 404
        assert response.json() == get(api, "/987654321", who).json()
    assert post(api, f"/{report_id}/addendum", who).status_code == 404
    assert get(api, f"?study_uid={study.uid}", who).json() == []


def test_bad_bodies_are_refused_precisely(shared_api: Api) -> None:
    api = shared_api
    study = read_study(api)
    report_id, etag = draft(api, study)
    cases = [
        ({"fields": {"haemorrhage": "maybe"}}, 400),
        ({"sections": {"opinion": "x"}}, 400),
        ({"sections": {"findings": "x" * 20_001}}, 400),
        ({"key_images": [{"sop_instance_uid": "1.2.3", "frame": 1}]}, 400),
        ([1, 2], 400),
    ]
    for body, status in cases:
        assert put(api, report_id, "rad1", body, etag).status_code == status
    headers = {**login(api, "rad1"), "If-Match": etag, "Content-Type": "application/json"}
    big = api.client.put(
        f"/api/reports/{report_id}", content=b"{" + b" " * 600_000 + b"}", headers=headers
    )
    assert big.status_code == 413
    broken = api.client.put(f"/api/reports/{report_id}", content=b"{not json", headers=headers)
    assert broken.status_code == 400
    unknown = post(api, "", "rad1", json={"study_uid": study.uid, "template": "mri-knee"})
    assert unknown.status_code == 400
    assert get(api, f"/{report_id}", "rad1").json()["version"] == 1  # nothing changed


def test_key_images_and_reads_are_audited(shared_api: Api) -> None:
    api = shared_api
    study = read_study(api)
    report_id, etag = draft(api, study)
    content = {**CONTENT, "key_images": [{"sop_instance_uid": study.instances[0], "frame": 1}]}
    assert put(api, report_id, "rad1", content, etag).status_code == 200
    post(api, f"/{report_id}/sign", "rad1")

    html = get(api, f"/{report_id}.html", "rg1").text
    assert "data:image/jpeg;base64," in html
    pdf = get(api, f"/{report_id}.pdf", "rg1").content
    assert sum(len(page.images) for page in pypdf.PdfReader(io.BytesIO(pdf)).pages) == 1
    with api.services.sessions() as session:
        reads = session.scalars(
            select(AuditEvent.detail).where(
                AuditEvent.action == "report.read",
                AuditEvent.actor == "rg1",
                AuditEvent.study_uid == study.uid,
            )
        ).all()
    assert sorted(d.split()[-1] for d in reads) == ["format=html", "format=pdf"]
    raw = _sr_bytes(api, study.uid)
    assert any(
        item.get("ValueType") == "CONTAINER"
        and item.ConceptNameCodeSequence[0].CodeValue == "55113-5"
        for item in raw.ContentSequence
    )


def _sr_bytes(api: Api, study_uid: str) -> pydicom.Dataset:
    from telerad.storage import Scope, find_instances

    with api.services.sessions() as session:
        [final] = [
            i
            for i in find_instances(session, Scope(None), study_uid)
            if i.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.33"
        ]
    return pydicom.dcmread(io.BytesIO(api.services.objects.get(final.object_key)))
