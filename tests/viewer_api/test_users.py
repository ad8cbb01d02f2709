"""User administration over HTTP with real roles, on SQLite and PostgreSQL: listing, creating,
deactivating (at once, work handed back), reactivating, password resets, reading sites, and
refusals that change nothing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from telerad.storage import AuditEvent
from tests.conftest import PASSWORD, USERS, Api
from tests.viewer_api.worklist_support import complete_study, post, task_of, worklist

NEW_PASSWORD = "another-long-secret"


def users(api: Api, who: str = "admin") -> dict[str, dict[str, Any]]:
    response = api.client.get("/api/users", headers=api.headers(who))
    assert response.status_code == 200, response.text
    return {user["username"]: user for user in response.json()}


def patch(api: Api, username: str, body: dict[str, Any], who: str = "admin") -> Any:
    return api.client.patch(f"/api/users/{username}", json=body, headers=api.headers(who))


def login(api: Api, username: str, password: str = PASSWORD) -> int:
    form = {"username": username, "password": password}
    return int(api.client.post("/api/auth/token", data=form).status_code)


def audit_details(api: Api, action: str) -> list[str]:
    with api.services.sessions() as session:
        query = select(AuditEvent.detail).where(AuditEvent.action == action)
        return list(session.scalars(query.order_by(AuditEvent.id)))


def test_admin_lists_and_reads_users_and_nobody_else_may(api: Api) -> None:
    listed = users(api)
    assert set(listed) == set(USERS)
    assert listed["rad1"]["role"] == "radiologist" and listed["rad1"]["reads_for"] == ["county1"]
    assert listed["rg2"]["site"] == "county2" and listed["admin"]["site"] is None
    assert all(user["active"] for user in listed.values())
    assert not any("password" in key for user in listed.values() for key in user)
    one = api.client.get("/api/users/ref1", headers=api.headers("admin"))
    assert one.status_code == 200 and one.json() == listed["ref1"]
    assert api.client.get("/api/users/nobody", headers=api.headers("admin")).status_code == 404
    for who in ("rad1", "rg1", "ref1", "site"):
        assert api.client.get("/api/users", headers=api.headers(who)).status_code == 403
        assert patch(api, "rad1", {"active": False}, who=who).status_code == 403
    assert api.client.get("/api/users").status_code == 401
    assert users(api)["rad1"]["active"]


def test_a_deactivated_user_is_refused_at_once_and_reactivation_restores_him(api: Api) -> None:
    assert api.client.get("/api/worklist", headers=api.headers("rad1")).status_code == 200
    answer = patch(api, "rad1", {"active": False})
    assert answer.status_code == 200, answer.text
    assert answer.json()["active"] is False and answer.json()["returned_tasks"] == []
    # The token he holds was issued before: it stops working with his next request.
    assert api.client.get("/api/worklist", headers=api.headers("rad1")).status_code == 401
    assert api.client.get("/dicomweb/studies", headers=api.headers("rad1")).status_code == 401
    assert login(api, "rad1") == 401
    assert patch(api, "rad1", {"active": True}).json()["active"] is True
    assert api.client.get("/api/worklist", headers=api.headers("rad1")).status_code == 200
    assert login(api, "rad1") == 200
    assert audit_details(api, "user-change") == ["rad1: active=false", "rad1: active=true"]


def test_deactivating_a_reader_hands_his_claimed_and_assigned_tasks_back(api: Api) -> None:
    assigned = task_of(api, complete_study(api))
    claimed = task_of(api, complete_study(api))
    assert post(api, "admin", f"{assigned['id']}/assign", {"user": "rad1"}).status_code == 200
    assert post(api, "rad1", f"{claimed['id']}/claim").status_code == 200

    answer = patch(api, "rad1", {"active": False})
    assert answer.status_code == 200, answer.text
    assert sorted(answer.json()["returned_tasks"]) == sorted([assigned["id"], claimed["id"]])
    for task_id in (assigned["id"], claimed["id"]):
        detail = api.client.get(f"/api/worklist/{task_id}", headers=api.headers("admin")).json()
        assert detail["state"] == "SCHEDULED"
        assert detail["assigned_to"] is None and detail["claimed_by"] is None
        assert "rad1: active=false" in detail["events"][-1]["detail"]
    [detail] = audit_details(api, "user-change")
    assert "tasks handed back" in detail
    # Reactivation gives back the account, not the tasks: they stay with the pool.
    patch(api, "rad1", {"active": True})
    detail = api.client.get(f"/api/worklist/{claimed['id']}", headers=api.headers("rad1")).json()
    assert detail["state"] == "SCHEDULED" and detail["claimed_by"] is None


def test_reading_sites_change_what_a_radiologist_sees_and_hand_back_lost_work(api: Api) -> None:
    study = complete_study(api)
    task = task_of(api, study)
    assert post(api, "rad1", f"{task['id']}/claim").status_code == 200
    assert [t["id"] for t in worklist(api, "rad1", study=study)] == [task["id"]]

    answer = patch(api, "rad1", {"reads_for": ["county2"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["reads_for"] == ["county2"]
    assert answer.json()["returned_tasks"] == [task["id"]]
    assert worklist(api, "rad1", study=study) == []
    found = api.client.get(
        "/dicomweb/studies", params={"StudyInstanceUID": study}, headers=api.headers("rad1")
    )
    assert found.status_code in (200, 204) and (found.status_code == 204 or found.json() == [])
    detail = api.client.get(f"/api/worklist/{task['id']}", headers=api.headers("admin")).json()
    assert detail["state"] == "SCHEDULED" and detail["claimed_by"] is None

    back = patch(api, "rad1", {"reads_for": ["county1", "county2"]})
    assert (
        back.json()["reads_for"] == ["county1", "county2"] and back.json()["returned_tasks"] == []
    )
    assert [t["id"] for t in worklist(api, "rad1", study=study)] == [task["id"]]


def test_password_reset_replaces_the_old_password_and_is_audited_without_it(api: Api) -> None:
    answer = patch(api, "ref1", {"password": NEW_PASSWORD, "full_name": "Dr Ref One"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["full_name"] == "Dr Ref One"
    assert login(api, "ref1") == 401
    assert login(api, "ref1", NEW_PASSWORD) == 200
    [detail] = audit_details(api, "user-change")
    assert "password reset" in detail and NEW_PASSWORD not in detail
    assert patch(api, "ref1", {"password": "short"}).status_code == 422
    assert login(api, "ref1", NEW_PASSWORD) == 200


def test_the_last_active_administrator_cannot_be_deactivated(api: Api) -> None:
    refused = patch(api, "admin", {"active": False})
    assert refused.status_code == 409, refused.text
    assert "last active administrator" in refused.json()["detail"]
    assert users(api)["admin"]["active"] and login(api, "admin") == 200
    body = {"username": "admin2", "role": "admin", "password": PASSWORD}
    assert api.client.post("/api/users", json=body, headers=api.headers("admin")).status_code == 201
    assert patch(api, "admin", {"active": False}).status_code == 200
    assert api.client.get("/api/users", headers=api.headers("admin")).status_code == 401
    form = {"username": "admin2", "password": PASSWORD}
    token = api.client.post("/api/auth/token", data=form).json()["access_token"]
    admin2 = {"Authorization": f"Bearer {token}"}
    assert api.client.get("/api/users", headers=admin2).status_code == 200
    last = api.client.patch("/api/users/admin2", json={"active": False}, headers=admin2)
    assert last.status_code == 409


def test_create_users_over_http_and_refusals_create_nothing(api: Api) -> None:
    body = {"username": "rad9", "role": "radiologist", "password": PASSWORD,
            "full_name": "Dr Nine", "reads_for": ["county2"]}  # fmt: skip
    created = api.client.post("/api/users", json=body, headers=api.headers("admin"))
    assert created.status_code == 201, created.text
    assert created.json()["reads_for"] == ["county2"] and created.json()["active"] is True
    assert login(api, "rad9") == 200
    before = users(api)
    refusals = [
        (body, 409),  # taken
        ({"username": "rg9", "role": "radiographer", "password": PASSWORD}, 400),  # no site
        ({"username": "rg9", "role": "radiographer", "password": PASSWORD, "site": "x"}, 400),
        ({"username": "bad name", "role": "referrer", "password": PASSWORD, "site": "county1"},
         400),
        ({"username": "rg9", "role": "janitor", "password": PASSWORD}, 422),
        ({"username": "rg9", "role": "referrer", "password": "short", "site": "county1"}, 422),
        ({**body, "username": "rad8", "admin": True}, 422),  # unknown field
    ]  # fmt: skip
    for refused, status in refusals:
        answer = api.client.post("/api/users", json=refused, headers=api.headers("admin"))
        assert answer.status_code == status, (refused, answer.text)
    assert users(api) == before
    assert audit_details(api, "user-add") == ["rad9 (radiologist)"]


def test_invalid_changes_are_refused_and_change_nothing(api: Api) -> None:
    before = users(api)
    refusals = [
        ("rg1", {"reads_for": ["county2"]}, 400),  # only radiologists read for sites
        ("rad1", {"site": "county1"}, 400),  # a radiologist has no site of his own
        ("rg1", {"site": "nowhere"}, 400),
        ("rad1", {"reads_for": ["county1", "nowhere"]}, 400),
        ("rad1", {"active": False, "reads_for": ["nowhere"]}, 400),  # all or nothing
        ("rad1", {"role": "admin"}, 422),  # the role is fixed
        ("rad1", {"full_name": "x" * 129}, 422),
        ("rad1", {"active": "perhaps"}, 422),
        ("nobody", {"active": False}, 404),
    ]
    for username, body, status in refusals:
        answer = patch(api, username, body)
        assert answer.status_code == status, (username, body, answer.text)
    assert users(api) == before
    assert audit_details(api, "user-change") == []
    moved = patch(api, "rg1", {"site": "county2"})
    assert moved.status_code == 200 and moved.json()["site"] == "county2"
