"""The consultation end to end over HTTP with real roles, on SQLite and PostgreSQL (issue 5,
"Done when"): the county orders a reading naming its referring doctor → the study arrives
(STOW-RS + manifest) and completes → the task is on the worklist of the radiologist who reads
for the site, not on another's → the two sides talk in the thread → he claims, writes and signs
→ the site (signed webhook + inbox) and the referrer (inbox) are told and fetch the report as
HTML, PDF and FHIR; the SR is in the study (QIDO; pydicom and highdicom re-read it); a
critical finding is acknowledged and the radiologist sees it; an addendum keeps the chain
intact; another referrer and another site get 404; a share link works without login, is
audited and, revoked, answers 404; the radiologist sees who opened his report.

The webhook receiver is a real HTTP server on a free localhost port; its first answer is a 500,
so the delivery has to be retried.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pypdf
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from sqlalchemy import select

from telerad.storage import Scope, find_instances
from telerad.worklist import create_user
from tests.conftest import PASSWORD, Api, running_api
from tests.factories import ct_datasets, manifest_of, multipart_related, part10
from tests.webhook_receiver import Received, Receiver, webhook_receiver

SECRET = "county1-receiver-hmac-key-0123456789"
PATIENT_NAME, PATIENT_ID = "Consult^Patient^E2E", "E2E-PID-31337"
CONTENT = {
    "sections": {
        "clinical_information": "Dyspnoea, D-dimer raised.",
        "technique": "CT pulmonary angiography.",
        "findings": "Filling defects in both lower lobe arteries.",
        "impression": "Bilateral pulmonary embolism.",
        "recommendation": "Anticoagulation; clinical review today.",
    },
    "fields": {"pulmonary_embolism": "present"},
}
ADDENDUM = "Right ventricle not dilated on review."
FAST_DELIVERY = {
    "sender_interval_seconds": 0.1,
    "retry_base_seconds": 0.2,
    "retry_max_seconds": 1.0,
}


@pytest.fixture
def e2e(database_url: str, tmp_path: Path) -> Iterator[tuple[Api, Receiver]]:
    """The API (fast notification retries) with rad2 (reads county2 only) and a webhook
    receiver that fails its first request."""
    with (
        webhook_receiver(statuses=[500]) as receiver,
        running_api(database_url, tmp_path, delivery=FAST_DELIVERY) as api,
    ):
        with api.services.writer.begin() as session:
            create_user(session, "rad2", PASSWORD, "radiologist", reads_for=("county2",))
        login = api.client.post("/api/auth/token", data={"username": "rad2", "password": PASSWORD})
        api.tokens["rad2"] = login.json()["access_token"]
        yield api, receiver


def call(api: Api, method: str, path: str, who: str | None, **kwargs: Any) -> Any:
    headers = {**(api.headers(who) if who else {}), **kwargs.pop("headers", {})}
    return api.client.request(method, path, headers=headers, **kwargs)


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.text)
    return response


def wait_until(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def events_of(receiver: Receiver) -> list[tuple[str, Received]]:
    with receiver.lock:
        return [(r.headers["x-telerad-event"], r) for r in receiver.received]


def walk(items: Any) -> Iterator[Any]:
    """Every content item of an SR content tree, depth first."""
    for item in items:
        yield item
        yield from walk(item.get("ContentSequence", []))


def inbox(api: Api, who: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = ok(call(api, "GET", "/api/notifications", who)).json()
    return result


def test_study_to_report_to_the_county_and_the_referrer(e2e: tuple[Api, Receiver]) -> None:
    api, receiver = e2e
    admin_webhook = {"url": receiver.url, "secret": SECRET}
    ok(call(api, "PUT", "/api/sites/county1/webhook", "admin", json=admin_webhook))

    # --- the county orders the reading, naming its referring doctor, and sends the study ----
    datasets = ct_datasets(3, patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
    instances = [part10(ds) for ds in datasets]
    study_uid, entries = manifest_of(instances)
    order = {"priority": "URGENT", "clinical_question": "PE?", "referrer": "ref1"}
    ok(call(api, "PUT", f"/api/studies/{study_uid}/request", "rg1", json=order), 201)
    question = {"kind": "clinical-question", "body": "Known DVT left leg since Monday."}
    ok(call(api, "POST", f"/api/studies/{study_uid}/thread", "rg1", json=question), 201)
    body, content_type = multipart_related(instances)
    ok(call(api, "POST", "/dicomweb/studies", "site", content=body,
            headers={"Content-Type": content_type}))  # fmt: skip
    manifest = {"instances": [{"sop_instance_uid": u, "sha256": h} for u, h in entries.items()]}
    done = ok(call(api, "PUT", f"/api/studies/{study_uid}/manifest", "site", json=manifest))
    assert done.json()["complete"] is True

    # --- the task is on rad1's worklist, not on rad2's ---------------------------------------
    [task] = ok(call(api, "GET", "/api/worklist", "rad1", params={"study": study_uid})).json()
    assert ok(call(api, "GET", "/api/worklist", "rad2", params={"study": study_uid})).json() == []
    assert (task["priority"], task["clinical_question"]) == ("URGENT", "PE?")
    assert call(api, "POST", f"/api/worklist/{task['id']}/claim", "rad2").status_code == 404

    # --- the thread: the radiologist asks back, the county answers ---------------------------
    ask = {"kind": "request-more-images", "body": "Please send the venous phase."}
    ok(call(api, "POST", f"/api/studies/{study_uid}/thread", "rad1", json=ask), 201)
    answer = {"kind": "answer", "body": "None was acquired."}
    ok(call(api, "POST", f"/api/studies/{study_uid}/thread", "ref1", json=answer), 201)
    thread = ok(call(api, "GET", f"/api/studies/{study_uid}/thread", "rad1")).json()
    assert [m["author"] for m in thread["messages"]] == ["rg1", "rad1", "ref1"]
    assert thread["order"]["clinical_question"] == "PE?"
    rad1_inbox = [n for n in inbox(api, "rad1") if n["study_uid"] == study_uid]
    assert {n["payload"]["author"] for n in rad1_inbox} == {"rg1", "ref1"}

    # --- rad1 claims, writes and signs (a critical finding) ----------------------------------
    ok(call(api, "POST", f"/api/worklist/{task['id']}/claim", "rad1"))
    created = ok(call(api, "POST", "/api/reports", "rad1",
                      json={"study_uid": study_uid, "template": "ct-chest"}), 201)  # fmt: skip
    report_id = created.json()["id"]
    key_image = {"sop_instance_uid": sorted(entries)[0], "frame": 1}
    content = {**CONTENT, "key_images": [key_image]}
    saved = ok(call(api, "PUT", f"/api/reports/{report_id}", "rad1", json=content,
                    headers={"If-Match": created.headers["ETag"]}))  # fmt: skip
    assert saved.json()["critical_findings"] == ["Pulmonary embolism"]
    ok(call(api, "POST", f"/api/reports/{report_id}/sign", "rad1"))

    # --- the site's webhook: signed, retried after the 500, no patient name or ID ------------
    wanted = {"consultation-message", "report-final", "critical-finding"}

    def retried_deliveries() -> list:
        received = events_of(receiver)
        first = received[0][1].headers["x-telerad-delivery"] if received else None
        return [r for _, r in received[1:] if r.headers["x-telerad-delivery"] == first]

    wait_until(lambda: wanted <= {e for e, _ in events_of(receiver)}, "webhook events")
    # the first delivery was answered 500: it comes again after its backoff
    wait_until(lambda: bool(retried_deliveries()), "the retry of the delivery answered 500")
    received = events_of(receiver)
    for event, request in received:
        assert request.signature_valid(SECRET), event
        assert PATIENT_ID.encode() not in request.body and b"Consult^" not in request.body
    [final_hook] = [r.json() for e, r in received if e == "report-final"]
    assert (final_hook["study_uid"], final_hook["report_id"]) == (study_uid, report_id)
    assert final_hook["links"]["pdf"] == f"/api/reports/{report_id}.pdf"

    # --- rg1 and ref1 are told and fetch HTML, PDF and FHIR ----------------------------------
    for who in ("rg1", "ref1"):
        told = {n["event"] for n in inbox(api, who) if n["report_id"] == report_id}
        assert told == {"report-final", "critical-finding"}, who
        html = ok(call(api, "GET", f"/api/reports/{report_id}.html", who))
        assert "Bilateral pulmonary embolism." in html.text
        pdf = ok(call(api, "GET", f"/api/reports/{report_id}.pdf", who)).content
        text = "".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf)).pages)
        assert "Bilateral pulmonary embolism." in text
        fhir = ok(call(api, "GET", f"/api/reports/{report_id}/fhir", who)).json()
        assert DiagnosticReport.model_validate(fhir).status == "final"
        assert fhir["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{study_uid}"

    # --- the SR is in the study: QIDO shows it, pydicom and highdicom re-read it -------------
    [sr_series] = ok(call(api, "GET", f"/dicomweb/studies/{study_uid}/series", "rg1",
                          params={"Modality": "SR"})).json()  # fmt: skip
    assert sr_series["00080060"]["Value"] == ["SR"]
    with api.services.sessions() as session:
        stored = find_instances(session, Scope(None), study_uid, sr_series["0020000E"]["Value"][0])
        raw = [api.services.objects.get(i.object_key) for i in stored]
    final = [b for b in raw if pydicom.dcmread(io.BytesIO(b)).CompletionFlag == "COMPLETE"]
    assert len(final) == 1
    assert pydicom.dcmread(io.BytesIO(final[0])).VerificationFlag == "VERIFIED"
    document = hd.sr.srread(io.BytesIO(final[0]))
    [root] = document.content
    texts = [n.value for n in walk(root.ContentSequence) if isinstance(n, hd.sr.TextContentItem)]
    assert "Bilateral pulmonary embolism." in texts

    # --- the critical finding: ref1 acknowledges, rad1 sees it -------------------------------
    [critical] = [n for n in inbox(api, "ref1") if n["event"] == "critical-finding"]
    assert critical["requires_ack"] is True
    ok(call(api, "POST", f"/api/notifications/{critical['id']}/ack", "ref1"))
    status = ok(call(api, "GET", f"/api/reports/{report_id}/notifications", "rad1")).json()
    acked = [n for n in status if n["event"] == "critical-finding" and n["acknowledged_by"]]
    assert [n["acknowledged_by"] for n in acked] == ["ref1"]

    # --- an addendum: a new version, the chain intact, the county told ------------------------
    started = ok(call(api, "POST", f"/api/reports/{report_id}/addendum", "rad1"), 201)
    addendum_id = started.json()["id"]
    amended = {**content, "addendum": ADDENDUM}
    ok(call(api, "PUT", f"/api/reports/{addendum_id}", "rad1", json=amended,
            headers={"If-Match": started.headers["ETag"]}))  # fmt: skip
    ok(call(api, "POST", f"/api/reports/{addendum_id}/sign", "rad1"))
    versions = ok(call(api, "GET", f"/api/reports/{addendum_id}/versions", "ref1")).json()
    assert versions["chain_intact"] is True
    assert [(v["id"], v["status"]) for v in versions["versions"]] == [
        (report_id, "final"),
        (addendum_id, "final"),
    ]
    assert ADDENDUM in ok(call(api, "GET", f"/api/reports/{addendum_id}.html", "ref1")).text
    assert ok(call(api, "GET", f"/api/reports/{report_id}.html", "ref1")).status_code == 200
    wait_until(lambda: "report-addendum" in {e for e, _ in events_of(receiver)}, "addendum hook")
    assert "report-addendum" in {n["event"] for n in inbox(api, "ref1")}

    # --- another referrer and another site: 404, exactly like a missing report ---------------
    missing = call(api, "GET", "/api/reports/999999999.html", "admin")
    for who in ("ref2", "rg2", "rad2"):
        for path in (f"/api/reports/{report_id}.html", f"/api/reports/{addendum_id}/fhir",
                     f"/api/reports/{report_id}.pdf", f"/api/studies/{study_uid}/thread",
                     f"/api/studies/{study_uid}/status"):  # fmt: skip
            denied = call(api, "GET", path, who)
            assert denied.status_code == 404, (who, path)
            assert denied.json() == missing.json(), (who, path)
        assert not [n for n in inbox(api, who) if n["study_uid"] == study_uid], who
    assert ok(call(api, "GET", "/dicomweb/studies", "ref2",
                   params={"StudyInstanceUID": study_uid})).json() == []  # fmt: skip
    # the referrer's own study: its images too (QIDO, metadata); not the other referrer's
    assert len(ok(call(api, "GET", f"/dicomweb/studies/{study_uid}/metadata", "ref1")).json()) > 1
    denied = call(api, "GET", f"/dicomweb/studies/{study_uid}/metadata", "ref2")
    assert denied.status_code == 404

    # --- a share link: no login, audited, then revoked ---------------------------------------
    link = ok(call(api, "POST", f"/api/reports/{report_id}/share", "rad1",
                   json={"hours": 24, "note": "GP"}), 201).json()  # fmt: skip
    shared = ok(call(api, "GET", f"/share/{link['token']}", None))
    assert "Bilateral pulmonary embolism." in shared.text and ADDENDUM in shared.text
    assert shared.text.count('src="data:image/jpeg;base64,') == 1  # the key image, embedded
    assert ok(call(api, "GET", f"/share/{link['token']}.pdf", None)).content.startswith(b"%PDF")
    ok(call(api, "DELETE", f"/api/reports/{report_id}/share/{link['id']}", "rad1"), 204)
    assert call(api, "GET", f"/share/{link['token']}", None).status_code == 404
    assert call(api, "GET", f"/share/{link['token']}.pdf", None).status_code == 404

    # --- who opened rad1's report ------------------------------------------------------------
    log = ok(call(api, "GET", f"/api/reports/{report_id}/accesses", "rad1")).json()
    readers = {e["actor"] for e in log if e["action"] == "report.read"}
    assert {"rg1", "ref1"} <= readers and not readers & {"ref2", "rg2"}
    opened = [(e["action"], e["share_link_id"]) for e in log if e["actor"].startswith("share-")]
    assert opened == [
        ("share-open-html", link["id"]),
        ("share-open-pdf", link["id"]),
    ]
    assert call(api, "GET", f"/api/reports/{report_id}/accesses", "ref1").status_code == 403
    with api.services.sessions() as session:
        from telerad.storage import AuditEvent

        logged = session.scalars(select(AuditEvent.resource)).all()
    assert not [r for r in logged if link["token"] in r]
