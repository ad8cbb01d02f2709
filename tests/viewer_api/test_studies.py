"""Study completeness over HTTP: PUT …/manifest and GET …/status, on SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import json
import logging
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from telerad.storage import AuditEvent
from tests.conftest import Api
from tests.factories import ct_instances, manifest_of, multipart_related, new_uid

ANSWER_KEYS = {
    "study_uid", "received", "expected", "complete", "missing", "mismatched", "manifest_at",
    "completed_at",
}  # fmt: skip
STATUS_KEYS = ANSWER_KEYS - {"missing", "mismatched"} | {"missing_count", "mismatched_count"}
HASH = "ab" * 32


def document(entries: dict[str, str]) -> dict[str, Any]:
    return {"instances": [{"sop_instance_uid": u, "sha256": h} for u, h in entries.items()]}


def put_manifest(
    api: Api, study_uid: str, entries: dict[str, str], who: str | None = "site"
) -> Any:
    headers = api.headers(who) if who else {}
    return api.client.put(
        f"/api/studies/{study_uid}/manifest", json=document(entries), headers=headers
    )


def put_raw(api: Api, study_uid: str, body: bytes, **headers: str) -> Any:
    headers = {"Content-Type": "application/json", **api.headers("site"), **headers}
    return api.client.put(f"/api/studies/{study_uid}/manifest", content=body, headers=headers)


def get_status(api: Api, study_uid: str, who: str | None = "site") -> Any:
    headers = api.headers(who) if who else {}
    return api.client.get(f"/api/studies/{study_uid}/status", headers=headers)


def stow(api: Api, instances: list[bytes], who: str = "site") -> None:
    body, content_type = multipart_related(instances)
    response = api.client.post(
        "/dicomweb/studies",
        content=body,
        headers={"Content-Type": content_type, **api.headers(who)},
    )
    assert response.status_code == 200, response.text


def stored_study(api: Api, count: int = 3, who: str = "site") -> tuple[str, dict[str, str]]:
    """A study of ``count`` instances stored by ``who``, and its manifest."""
    instances = ct_instances(count)
    stow(api, instances, who)
    return manifest_of(instances)


def not_found_body(api: Api) -> Any:
    response = get_status(api, new_uid(), "admin")
    assert response.status_code == 404
    return response.json()


# --- the manifest ----------------------------------------------------------------------------


def test_manifest_of_a_stored_study_makes_it_complete(shared_api: Api) -> None:
    study_uid, entries = stored_study(shared_api)

    response = put_manifest(shared_api, study_uid, entries)

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == ANSWER_KEYS
    assert (body["study_uid"], body["received"], body["expected"]) == (study_uid, 3, 3)
    assert (body["complete"], body["missing"], body["mismatched"]) == (True, [], [])
    manifest_at = datetime.fromisoformat(body["manifest_at"])
    completed_at = datetime.fromisoformat(body["completed_at"])
    assert manifest_at.utcoffset() is not None and completed_at >= manifest_at


def test_manifest_answers_what_is_missing_and_mismatched(shared_api: Api) -> None:
    study_uid, entries = stored_study(shared_api, 2)
    [first, second] = sorted(entries)
    absent = new_uid()

    response = put_manifest(
        shared_api, study_uid, {first: entries[first], second: HASH, absent: HASH}
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["complete"], body["received"], body["expected"]) == (False, 2, 3)
    assert (body["missing"], body["mismatched"], body["completed_at"]) == ([absent], [second], None)


def test_manifest_before_the_instances_then_stow_completes(
    shared_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    instances = ct_instances(3)
    study_uid, entries = manifest_of(instances)

    before = put_manifest(shared_api, study_uid, entries)
    with caplog.at_level(logging.INFO, logger="telerad.viewer_api.routes.stow"):
        stow(shared_api, instances)

    assert before.status_code == 200, before.text
    assert before.json()["missing"] == sorted(entries)
    after = get_status(shared_api, study_uid)
    assert after.status_code == 200, after.text
    assert (after.json()["complete"], after.json()["received"]) == (True, 3)
    assert [r.getMessage() for r in caplog.records if "complete" in r.getMessage()] == [
        f"study {study_uid} complete"
    ]


def test_gzip_coded_manifest_is_accepted(shared_api: Api) -> None:
    study_uid, entries = stored_study(shared_api, 2)
    body = gzip.compress(json.dumps(document(entries)).encode())

    response = put_raw(shared_api, study_uid, body, **{"Content-Encoding": "gzip"})

    assert response.status_code == 200, response.text
    assert response.json()["complete"] is True


# --- who may post ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "status"),
    [(None, 401), ("ref1", 403), ("rad1", 403), ("rg2", 404), ("rg1", 200), ("site", 200),
     ("admin", 200)],
)  # fmt: skip
def test_who_may_post_a_manifest_for_a_county1_study(
    shared_api: Api, who: str, status: int
) -> None:
    study_uid, entries = stored_study(shared_api, 2)

    response = put_manifest(shared_api, study_uid, entries, who)

    assert response.status_code == status, response.text
    manifest_at = get_status(shared_api, study_uid, "admin").json()["manifest_at"]
    assert (manifest_at is not None) == (status == 200)


def test_another_sites_study_looks_unknown_and_keeps_its_manifest(shared_api: Api) -> None:
    study_uid, entries = stored_study(shared_api, 2)
    assert put_manifest(shared_api, study_uid, entries).status_code == 200

    response = put_manifest(shared_api, study_uid, {new_uid(): HASH}, "rg2")

    assert response.status_code == 404
    assert response.json() == not_found_body(shared_api)
    status = get_status(shared_api, study_uid).json()
    assert (status["expected"], status["complete"]) == (2, True)


def test_a_manifest_before_any_instance_claims_the_study_for_its_site(shared_api: Api) -> None:
    study_uid = new_uid()
    assert put_manifest(shared_api, study_uid, {new_uid(): HASH}, "rg1").status_code == 200

    assert put_manifest(shared_api, study_uid, {new_uid(): HASH}, "rg2").status_code == 404
    assert get_status(shared_api, study_uid, "rg2").status_code == 404
    assert get_status(shared_api, study_uid, "site").json()["received"] == 0


# --- bad requests ----------------------------------------------------------------------------

UID = "1.2.826.0.1.3680043.2.1"
BAD_BODIES = {
    "not-json": b"instances: 1.2.3",
    "json-array": b"[]",
    "no-instances": b"{}",
    "instances-not-a-list": b'{"instances": {"1.2.3": "x"}}',
    "extra-field": json.dumps({**document({UID: HASH}), "study": "x"}).encode(),
    "entry-without-hash": json.dumps({"instances": [{"sop_instance_uid": UID}]}).encode(),
    "entry-extra-field": json.dumps(
        {"instances": [{"sop_instance_uid": UID, "sha256": HASH, "size": 1}]}
    ).encode(),
    "hash-number": json.dumps({"instances": [{"sop_instance_uid": UID, "sha256": 7}]}).encode(),
    "uid-letters": json.dumps(document({"1.2.abc": HASH})).encode(),
    "uid-traversal": json.dumps(document({"../../x": HASH})).encode(),
    "uid-65-characters": json.dumps(document({"1." * 32 + "1": HASH})).encode(),
    "hash-upper-case": json.dumps(document({UID: HASH.upper()})).encode(),
    "hash-short": json.dumps(document({UID: HASH[:-1]})).encode(),
    "hash-not-hex": json.dumps(document({UID: "z" * 64})).encode(),
    "duplicate-uid": json.dumps(
        {"instances": [{"sop_instance_uid": UID, "sha256": HASH}] * 2}
    ).encode(),
    "empty": json.dumps({"instances": []}).encode(),
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_malformed_manifest_is_a_bad_request_and_records_nothing(
    shared_api: Api, body: bytes
) -> None:
    study_uid = new_uid()

    response = put_raw(shared_api, study_uid, body)

    assert response.status_code == 400, response.text
    assert response.json()["detail"]
    assert get_status(shared_api, study_uid, "admin").status_code == 404


def test_too_many_entries_is_a_bad_request(shared_api: Api) -> None:
    entries = {f"1.2.826.0.1.{n}": HASH for n in range(100_001)}

    response = put_manifest(shared_api, new_uid(), entries)

    assert response.status_code == 400, response.text


@pytest.mark.parametrize("study_uid", ["1.2.abc", "1." * 32 + "1", "1.2.3%00", "%20"])
def test_malformed_study_uid_in_the_url(shared_api: Api, study_uid: str) -> None:
    assert put_manifest(shared_api, study_uid, {UID: HASH}).status_code == 400
    assert get_status(shared_api, study_uid).status_code == 400


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/dicom+json"}, 415),
        ({"Content-Encoding": "br"}, 415),
        ({"Content-Encoding": "gzip"}, 400),  # declared gzip, sent plain
    ],
)
def test_body_type_and_coding(shared_api: Api, headers: dict[str, str], status: int) -> None:
    body = json.dumps(document({UID: HASH})).encode()

    response = put_raw(shared_api, new_uid(), body, **headers)

    assert response.status_code == status, response.text


def test_a_body_inflating_past_the_limit_is_too_large(shared_api: Api) -> None:
    body = gzip.compress(b'{"instances": [' + b" " * (32 * 1024 * 1024) + b"]}")
    assert len(body) < 100_000

    response = put_raw(shared_api, new_uid(), body, **{"Content-Encoding": "gzip"})

    assert response.status_code == 413, response.text


# --- status ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "status"),
    [(None, 401), ("admin", 200), ("rg1", 200), ("site", 200), ("rad1", 200), ("rg2", 404),
     ("ref1", 404)],
)  # fmt: skip
def test_status_is_visible_to_whoever_may_see_the_study(
    shared_api: Api, who: str | None, status: int
) -> None:
    study_uid, entries = stored_study(shared_api, 2)
    assert put_manifest(shared_api, study_uid, {**entries, new_uid(): HASH}).status_code == 200

    response = get_status(shared_api, study_uid, who)

    assert response.status_code == status, response.text
    if status == 200:
        body = response.json()
        assert set(body) == STATUS_KEYS
        assert (body["received"], body["expected"], body["complete"]) == (2, 3, False)
        assert (body["missing_count"], body["mismatched_count"]) == (1, 0)
    if status == 404:
        assert response.json() == not_found_body(shared_api)


def test_status_of_a_study_without_manifest(shared_api: Api) -> None:
    study_uid, _ = stored_study(shared_api, 2)

    response = get_status(shared_api, study_uid)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["received"], body["expected"], body["complete"]) == (2, 0, False)
    assert (body["manifest_at"], body["completed_at"]) == (None, None)


def test_manifest_and_status_are_audited(shared_api: Api) -> None:
    study_uid, entries = stored_study(shared_api, 2)

    assert put_manifest(shared_api, study_uid, entries, "rg1").status_code == 200
    assert get_status(shared_api, study_uid, "rad1").status_code == 200

    with shared_api.services.sessions() as session:
        rows = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.study_uid == study_uid, AuditEvent.action != "stow")
            .order_by(AuditEvent.id)
        ).all()
    assert [(r.action, r.actor, r.outcome) for r in rows] == [
        ("manifest", "rg1", "success"),
        ("study-status", "rad1", "success"),
    ]
    assert rows[0].resource == f"/api/studies/{study_uid}/manifest"
    assert "complete=True" in rows[0].detail
    assert all(r.patient_pk is not None for r in rows)


def test_openapi_documents_the_manifest_body_without_dangling_references(shared_api: Api) -> None:
    document = shared_api.client.get("/openapi.json").json()

    body = document["paths"]["/api/studies/{study}/manifest"]["put"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    entry = schema["properties"]["instances"]["items"]
    assert set(entry["required"]) == {"sop_instance_uid", "sha256"}
    assert "$defs" not in json.dumps(document)
