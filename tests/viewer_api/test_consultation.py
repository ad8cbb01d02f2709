"""The consultation thread, the inbox, site webhook administration and the referrer's study
scope over HTTP with real roles, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from telerad.storage import ConsultationMessage, ReadingRequest, Site, User
from tests.conftest import Api
from tests.factories import ct_instances, manifest_of, multipart_related, new_uid


def _stow(api: Api, instances: list[bytes]) -> None:
    body, content_type = multipart_related(instances)
    response = api.client.post(
        "/dicomweb/studies",
        content=body,
        headers={"Content-Type": content_type, **api.headers("site")},
    )
    assert response.status_code == 200, response.text


def referred_study(api: Api, referrer: str | None = "ref1") -> str:
    """A county1 study stored by its gateway, with an order naming ``referrer``."""
    instances = ct_instances(2)
    _stow(api, instances)
    study_uid, _ = manifest_of(instances)
    with api.services.writer.begin() as session:
        site_id = session.scalar(select(Site.id).where(Site.name == "county1"))
        referrer_id = session.scalar(select(User.id).where(User.username == referrer))
        session.add(
            ReadingRequest(study_uid=study_uid, site_id=site_id, referrer_user_id=referrer_id)
        )
    return study_uid


def thread(api: Api, study_uid: str, who: str) -> Any:
    return api.client.get(f"/api/studies/{study_uid}/thread", headers=api.headers(who))


def post(api: Api, study_uid: str, who: str, kind: str, body: str = "text") -> Any:
    return api.client.post(
        f"/api/studies/{study_uid}/thread",
        json={"kind": kind, "body": body},
        headers=api.headers(who),
    )


def inbox(api: Api, who: str, **params: Any) -> list[dict[str, Any]]:
    response = api.client.get("/api/notifications", params=params, headers=api.headers(who))
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result


def messages_count(api: Api, study_uid: str) -> int:
    with api.services.sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(ConsultationMessage)
                .where(ConsultationMessage.study_uid == study_uid)
            )
        )


# --- the thread ------------------------------------------------------------------------------


def test_both_sides_read_and_post_and_others_get_404(shared_api: Api) -> None:
    study_uid = referred_study(shared_api)

    asked = post(shared_api, study_uid, "rg1", "clinical-question", "Pulmonary embolism?")
    history = post(shared_api, study_uid, "ref1", "history", "Dyspnoea since two days.")
    back = post(shared_api, study_uid, "rad1", "request-more-images", "Please add a CTA phase.")
    answer = post(shared_api, study_uid, "rg1", "answer", "Sent.")

    for response in (asked, history, back, answer):
        assert response.status_code == 201, response.text
    views = {who: thread(shared_api, study_uid, who) for who in ("rg1", "ref1", "rad1", "admin")}
    for who, response in views.items():
        assert response.status_code == 200, (who, response.text)
        body = response.json()
        assert [(m["author"], m["kind"], m["side"]) for m in body["messages"]] == [
            ("rg1", "clinical-question", "county"),
            ("ref1", "history", "county"),
            ("rad1", "request-more-images", "reading"),
            ("rg1", "answer", "county"),
        ]
    assert views["ref1"].json()["side"] == "county" and views["rad1"].json()["side"] == "reading"
    assert views["rad1"].json()["order"] == {
        "priority": "ROUTINE", "clinical_question": "", "history": ""
    }  # fmt: skip
    missing = thread(shared_api, new_uid(), "admin")
    for who in ("rg2", "ref2", "site"):
        denied = thread(shared_api, study_uid, who)
        assert (denied.status_code, denied.json()) == (404, missing.json()), who
        assert post(shared_api, study_uid, who, "comment").status_code == 404


@pytest.mark.parametrize(
    ("who", "kind", "body", "status"),
    [
        ("rg1", "question", "x", 400),  # a reading-side kind
        ("rad1", "clinical-question", "x", 400),  # a county-side kind
        ("rg1", "gossip", "x", 400),
        ("rg1", "comment", "   ", 400),
        ("rg1", "comment", "x" * 10_001, 422),
    ],
)
def test_bad_messages_are_refused_and_nothing_is_stored(
    shared_api: Api, who: str, kind: str, body: str, status: int
) -> None:
    study_uid = referred_study(shared_api)

    response = post(shared_api, study_uid, who, kind, body)

    assert response.status_code == status, response.text
    assert messages_count(shared_api, study_uid) == 0


def test_malformed_bodies_are_refused(shared_api: Api) -> None:
    study_uid = referred_study(shared_api)
    url = f"/api/studies/{study_uid}/thread"
    headers = shared_api.headers("rg1")

    extra = shared_api.client.post(
        url, json={"kind": "comment", "body": "x", "x": 1}, headers=headers
    )
    not_json = shared_api.client.post(
        url, content=b"{", headers={**headers, "Content-Type": "application/json"}
    )
    bad_uid = shared_api.client.get("/api/studies/not-a-uid/thread", headers=headers)

    assert (extra.status_code, not_json.status_code, bad_uid.status_code) == (422, 422, 400)
    assert messages_count(shared_api, study_uid) == 0


# --- notifications ---------------------------------------------------------------------------


def test_a_post_notifies_the_other_side_only(shared_api: Api) -> None:
    study_uid = referred_study(shared_api)
    before = {who: len(inbox(shared_api, who)) for who in ("rg1", "rg2", "rad1", "ref1", "ref2")}

    assert post(shared_api, study_uid, "rg1", "clinical-question", "?").status_code == 201
    to_reading = {who: inbox(shared_api, who) for who in before}
    assert post(shared_api, study_uid, "rad1", "question", "Contrast?").status_code == 201
    to_county = {who: inbox(shared_api, who) for who in before}

    grew = {who: len(to_reading[who]) - before[who] for who in before}
    assert grew == {"rg1": 0, "rg2": 0, "rad1": 1, "ref1": 0, "ref2": 0}
    grew = {who: len(to_county[who]) - len(to_reading[who]) for who in before}
    assert grew == {"rg1": 1, "rg2": 0, "rad1": 0, "ref1": 1, "ref2": 0}
    newest = to_county["ref1"][0]
    assert (newest["event"], newest["study_uid"], newest["payload"]["kind"]) == (
        "consultation-message",
        study_uid,
        "question",
    )
    assert "Contrast?" not in str(newest["payload"])  # the text stays behind the login


def test_acknowledgement_is_recorded_once_and_limited_to_the_inbox_owner(shared_api: Api) -> None:
    study_uid = referred_study(shared_api)
    post(shared_api, study_uid, "rad1", "question", "?")
    [site_row] = [n for n in inbox(shared_api, "rg1") if n["study_uid"] == study_uid]

    foreign = shared_api.client.post(
        f"/api/notifications/{site_row['id']}/ack", headers=shared_api.headers("rg2")
    )
    first = shared_api.client.post(
        f"/api/notifications/{site_row['id']}/ack", headers=shared_api.headers("rg1")
    )
    again = shared_api.client.post(
        f"/api/notifications/{site_row['id']}/ack", headers=shared_api.headers("admin")
    )

    assert (foreign.status_code, again.status_code) == (404, 404)
    assert first.status_code == 200, first.text
    [acked] = [n for n in first.json() if n["id"] == site_row["id"]]
    assert acked["acknowledged_by"] == "rg1" and acked["acknowledged_at"] is not None


# --- site webhooks (admin) -------------------------------------------------------------------


def test_site_webhook_administration(shared_api: Api) -> None:
    url = "/api/sites/county2/webhook"
    admin = shared_api.headers("admin")

    refused = shared_api.client.put(
        url, json={"url": "https://x.test/h"}, headers=shared_api.headers("rg2")
    )
    bad = shared_api.client.put(url, json={"url": "file:///etc/passwd"}, headers=admin)
    short = shared_api.client.put(
        url, json={"url": "https://x.test/h", "secret": "short"}, headers=admin
    )
    unknown = shared_api.client.put(
        "/api/sites/nowhere/webhook", json={"url": "https://x.test/h"}, headers=admin
    )
    created = shared_api.client.put(url, json={"url": "https://x.test/h"}, headers=admin)
    shown = shared_api.client.get(url, headers=admin)
    removed = shared_api.client.delete(url, headers=admin)
    gone = shared_api.client.get(url, headers=admin)

    assert (refused.status_code, bad.status_code, short.status_code) == (403, 400, 400)
    assert unknown.status_code == 404
    assert created.status_code == 200, created.text
    assert len(created.json()["secret"]) >= 32
    assert shown.json()["url"] == "https://x.test/h" and "secret" not in shown.json()
    assert (removed.status_code, gone.status_code) == (204, 404)


# --- the referrer's scope --------------------------------------------------------------------


def test_a_referrer_sees_exactly_his_referred_studies(shared_api: Api) -> None:
    mine, other = referred_study(shared_api, "ref1"), referred_study(shared_api, "ref2")
    unreferred = referred_study(shared_api, None)

    def qido(who: str) -> set[str]:
        response = shared_api.client.get("/dicomweb/studies", headers=shared_api.headers(who))
        assert response.status_code == 200, response.text
        return {study["0020000D"]["Value"][0] for study in response.json()}

    def status(who: str, study_uid: str) -> int:
        response = shared_api.client.get(
            f"/api/studies/{study_uid}/status", headers=shared_api.headers(who)
        )
        return response.status_code

    assert mine in qido("ref1") and not {other, unreferred} & qido("ref1")
    assert other in qido("ref2") and not {mine, unreferred} & qido("ref2")
    assert {mine, other, unreferred} <= qido("rg1")
    assert (status("ref1", mine), status("ref1", other), status("ref1", unreferred)) == (
        200,
        404,
        404,
    )
    series = shared_api.client.get(
        f"/dicomweb/studies/{other}/series", headers=shared_api.headers("ref1")
    )
    assert series.status_code == 200 and series.content in (b"", b"[]")
