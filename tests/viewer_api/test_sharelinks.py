"""Share links, the report's access log, referrer visibility and report notifications over
HTTP, on SQLite and PostgreSQL. Reports are written through the worklist's domain services
(the report routes are tested with the reports); everything delivery serves goes over HTTP."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pypdf
import pytest
from sqlalchemy import func, select, update

from telerad.storage import AuditEvent, ReadingTask, Report, ShareLink, User
from telerad.worklist import (
    OrderFields,
    WorklistPolicy,
    actor_for,
    claim_task,
    create_report,
    intake_study,
    may_read_report,
    principal_for_user,
    put_reading_request,
    sign_report,
    submit_preliminary,
)
from tests.conftest import Api
from tests.factories import ct_instances, manifest_of, multipart_related

CHEST = {
    "sections": {
        "clinical_information": "Dyspnoea.",
        "findings": "Filling defect in the right lower lobe artery.",
        "impression": "Pulmonary embolism, right lower lobe.",
    },
    "fields": {"pulmonary_embolism": "present"},
}


def _principal(api: Api, name: str) -> Any:
    with api.services.sessions() as session:
        user = session.scalar(select(User).where(User.username == name))
        return principal_for_user(session, user)


def issued_report(
    api: Api, *, referrer: str | None = "ref1", status: str = "final", content: Any = None
) -> tuple[str, int]:
    """A complete county1 study ordered by rg1 (naming ``referrer``), read by rad1 and
    reported (``final``, ``preliminary`` or ``draft``); returns (Study UID, report id)."""
    instances = ct_instances(2)
    body, content_type = multipart_related(instances)
    headers = {"Content-Type": content_type, **api.headers("site")}
    assert api.client.post("/dicomweb/studies", content=body, headers=headers).status_code == 200
    study_uid, entries = manifest_of(instances)
    manifest = {"instances": [{"sop_instance_uid": u, "sha256": h} for u, h in entries.items()]}
    put = api.client.put(
        f"/api/studies/{study_uid}/manifest", json=manifest, headers=api.headers("site")
    )
    assert put.json()["complete"] is True
    policy = WorklistPolicy.from_settings(api.services.settings.worklist)
    with api.services.writer.begin() as session:
        order = OrderFields(referrer=referrer, clinical_question="PE?")
        rg1 = actor_for(session, _principal(api, "rg1"))
        put_reading_request(session, study_uid, rg1, order, policy)
    intake_study(api.services.engine, study_uid, policy)
    rad1 = _principal(api, "rad1")
    with api.services.writer.begin() as session:
        task = session.scalar(select(ReadingTask).where(ReadingTask.study_uid == study_uid))
        claim_task(session, task.id, rad1, lease=timedelta(minutes=30))
        report = create_report(session, rad1, study_uid, "ct-chest", content or CHEST)
        if status == "final":
            sign_report(session, rad1, report.id)
        elif status == "preliminary":
            submit_preliminary(session, rad1, report.id)
        return study_uid, report.id


def share(api: Api, report_id: int, who: str = "rad1", **body: Any) -> Any:
    return api.client.post(f"/api/reports/{report_id}/share", json=body, headers=api.headers(who))


def accesses(api: Api, report_id: int, who: str = "rad1") -> Any:
    return api.client.get(f"/api/reports/{report_id}/accesses", headers=api.headers(who))


# --- issuing ---------------------------------------------------------------------------------


def test_a_share_link_opens_the_report_without_login_and_is_audited(shared_api: Api) -> None:
    study_uid, report_id = issued_report(shared_api)

    created = share(shared_api, report_id, hours=2, note="Dr. Outside")
    assert created.status_code == 201, created.text
    link = created.json()
    path = link["url"].removeprefix("http://testserver")
    html = shared_api.client.get(path, headers={"X-Forwarded-For": "ignored"})
    pdf = shared_api.client.get(path + ".pdf")

    assert link["token"].startswith("trl_") and link["url"].endswith("/share/" + link["token"])
    expires = datetime.fromisoformat(link["expires_at"])
    assert timedelta(hours=1.9) < expires - datetime.now(UTC) <= timedelta(hours=2)
    assert html.status_code == 200, html.text
    assert html.headers["content-type"].startswith("text/html")
    assert "Pulmonary embolism, right lower lobe." in html.text and study_uid in html.text
    assert html.headers["cache-control"] == "no-store"
    assert html.headers["referrer-policy"] == "no-referrer"
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    text = "".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Pulmonary embolism" in text
    log = accesses(shared_api, report_id).json()
    opened = [e for e in log if e["action"].startswith("share-open")]
    assert [(e["action"], e["share_link_id"], e["actor"]) for e in opened] == [
        ("share-open-html", link["id"], f"share-link:{link['id']}"),
        ("share-open-pdf", link["id"], f"share-link:{link['id']}"),
    ]
    assert all(e["source_address"] == "testclient" for e in opened)
    with shared_api.services.sessions() as session:
        stored = session.get(ShareLink, link["id"])
        assert stored is not None and link["token"] not in stored.token_sha256
        resources = session.scalars(select(AuditEvent.resource)).all()
    assert not [r for r in resources if link["token"] in r]  # the token is never logged


@pytest.mark.parametrize(
    ("who", "body", "status"),
    [
        ("rg1", {}, 403),  # a radiographer sees the report but may not share it
        ("ref1", {}, 403),
        ("rad1", {"hours": 0}, 422),
        ("rad1", {"hours": 73}, 400),  # over delivery.share_link_hours (72)
        ("rad1", {"note": "x" * 257}, 422),
        ("rad1", {"unknown": 1}, 422),
    ],
)
def test_refused_share_requests_create_nothing(
    shared_api: Api, who: str, body: dict[str, Any], status: int
) -> None:
    _, report_id = issued_report(shared_api)

    response = share(shared_api, report_id, who, **body)

    assert response.status_code == status, response.text
    with shared_api.services.sessions() as session:
        count = session.scalar(
            select(func.count()).select_from(ShareLink).where(ShareLink.report_id == report_id)
        )
    assert count == 0


def test_a_draft_or_an_invisible_report_cannot_be_shared(shared_api: Api) -> None:
    _, draft = issued_report(shared_api, status="draft")

    refused = share(shared_api, draft)
    missing = share(shared_api, 10**9)
    shares_of_missing = shared_api.client.get(
        "/api/reports/999999999/shares", headers=shared_api.headers("admin")
    )

    assert refused.status_code == 400 and "draft" in refused.json()["detail"]
    assert missing.status_code == 404 and shares_of_missing.status_code == 404


def test_the_referrer_reads_issued_versions_of_his_referrals_only(shared_api: Api) -> None:
    _, final = issued_report(shared_api)
    _, draft = issued_report(shared_api, status="draft")
    _, unreferred = issued_report(shared_api, referrer=None)

    with shared_api.services.sessions() as session:
        reports = {rid: session.get(Report, rid) for rid in (final, draft, unreferred)}
        seen = {
            (who, rid): may_read_report(_principal(shared_api, who), report, session)
            for who in ("ref1", "ref2", "rg1", "rg2")
            for rid, report in reports.items()
        }

    assert {key for key, allowed in seen.items() if allowed} == {
        ("ref1", final), ("rg1", final), ("rg1", unreferred),
    }  # fmt: skip


# --- dead links ------------------------------------------------------------------------------


def test_revoked_expired_tampered_and_unknown_links_all_get_the_same_404(shared_api: Api) -> None:
    _, report_id = issued_report(shared_api)
    links = [share(shared_api, report_id).json() for _ in range(3)]
    revoked, expired, live = links
    with shared_api.services.writer.begin() as session:
        session.execute(
            update(ShareLink)
            .where(ShareLink.id == expired["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    gone = shared_api.client.delete(
        f"/api/reports/{report_id}/share/{revoked['id']}", headers=shared_api.headers("rad1")
    )
    again = shared_api.client.delete(
        f"/api/reports/{report_id}/share/{revoked['id']}", headers=shared_api.headers("rad1")
    )
    token = live["token"]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")

    answers = {
        "revoked": shared_api.client.get(f"/share/{revoked['token']}"),
        "revoked-pdf": shared_api.client.get(f"/share/{revoked['token']}.pdf"),
        "expired": shared_api.client.get(f"/share/{expired['token']}"),
        "tampered": shared_api.client.get(f"/share/{tampered}"),
        "truncated": shared_api.client.get(f"/share/{token[:-2]}"),
        "garbage": shared_api.client.get("/share/%00%ff..%2f"),
        "user-token": shared_api.client.get(f"/share/{shared_api.tokens['rad1']}"),
    }

    assert (gone.status_code, again.status_code) == (204, 204)
    for name, response in answers.items():
        assert response.status_code == 404, name
        assert response.json() == {"detail": "not found"}, name
    assert shared_api.client.get(f"/share/{token}").status_code == 200
    listed = shared_api.client.get(
        f"/api/reports/{report_id}/shares", headers=shared_api.headers("rad1")
    ).json()
    assert [(item["id"], item["revoked_by"]) for item in listed] == [
        (revoked["id"], "rad1"),
        (expired["id"], None),
        (live["id"], None),
    ]
    assert all("token" not in item for item in listed)


def test_revoking_a_link_of_another_report_is_404(shared_api: Api) -> None:
    _, first = issued_report(shared_api)
    _, second = issued_report(shared_api)
    link = share(shared_api, first).json()

    response = shared_api.client.delete(
        f"/api/reports/{second}/share/{link['id']}", headers=shared_api.headers("rad1")
    )

    assert response.status_code == 404
    assert shared_api.client.get(f"/share/{link['token']}").status_code == 200


def test_repeated_failures_from_one_address_are_limited(
    api_with_small_limit: Api,
) -> None:
    api = api_with_small_limit
    for _ in range(3):
        assert api.client.get("/share/trl_" + "x" * 43).status_code == 404

    blocked = api.client.get("/share/trl_" + "y" * 43)

    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1


@pytest.fixture
def api_with_small_limit(database_url: str, tmp_path: Any) -> Any:
    from tests.conftest import running_api

    with running_api(
        database_url, tmp_path, delivery={"share_failures_per_minute": 3, "background": False}
    ) as api:
        yield api


# --- the access log --------------------------------------------------------------------------


def test_only_the_signer_and_admins_see_the_access_log(shared_api: Api) -> None:
    _, report_id = issued_report(shared_api)

    answers = {who: accesses(shared_api, report_id, who).status_code for who in shared_api.tokens}

    assert answers == {
        "admin": 200, "rad1": 200, "rg1": 403, "ref1": 403, "rg2": 404, "ref2": 404,
    }  # fmt: skip


# --- referrers and notifications -------------------------------------------------------------


def test_report_events_reach_the_site_and_the_referrer_and_critical_needs_ack(
    shared_api: Api,
) -> None:
    study_uid, report_id = issued_report(shared_api)

    def mine(who: str) -> list[dict[str, Any]]:
        response = shared_api.client.get("/api/notifications", headers=shared_api.headers(who))
        return [n for n in response.json() if n["report_id"] == report_id]

    ref1, rg1 = mine("ref1"), mine("rg1")
    assert {n["event"] for n in ref1} == {"report-final", "critical-finding"}
    assert {n["event"] for n in rg1} == {"report-final", "critical-finding"}
    assert mine("ref2") == [] and mine("rg2") == []
    [critical] = [n for n in ref1 if n["event"] == "critical-finding"]
    assert critical["requires_ack"] is True and critical["payload"]["study_uid"] == study_uid

    ack = shared_api.client.post(
        f"/api/notifications/{critical['id']}/ack", headers=shared_api.headers("ref1")
    )
    status = shared_api.client.get(
        f"/api/reports/{report_id}/notifications", headers=shared_api.headers("rad1")
    )

    assert ack.status_code == 200, ack.text
    rows = {(n["event"], n["recipient_user_id"] is not None): n for n in status.json()}
    assert rows[("critical-finding", True)]["acknowledged_by"] == "ref1"
    assert rows[("critical-finding", False)]["acknowledged_at"] is None  # the site has not yet
    forbidden = shared_api.client.get(
        f"/api/reports/{report_id}/notifications", headers=shared_api.headers("rg1")
    )
    assert forbidden.status_code == 403


def test_a_preliminary_report_notifies_once_without_critical(shared_api: Api) -> None:
    calm = {**CHEST, "fields": {"pulmonary_embolism": "absent"}}
    _, report_id = issued_report(shared_api, status="preliminary", content=calm)

    inbox = shared_api.client.get("/api/notifications", headers=shared_api.headers("ref1"))
    events = [n["event"] for n in inbox.json() if n["report_id"] == report_id]

    assert events == ["report-preliminary"]
    assert share(shared_api, report_id).status_code == 201  # a preliminary report may be shared
