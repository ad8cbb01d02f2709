"""The reading worklist over HTTP with real roles, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from telerad.storage import AuditEvent, ReadingTask, StudyManifest
from telerad.worklist import WorklistLoop, WorklistPolicy
from tests.conftest import Api
from tests.factories import ct_datasets, manifest_of, multipart_related, new_uid, part10
from tests.viewer_api.worklist_support import add_readers, complete_study, post, task_of, worklist

CLAIMERS = 50


@pytest.fixture
def api(shared_api: Api) -> Iterator[Api]:
    add_readers(shared_api)
    yield shared_api


def audit_actions(api: Api, study_uid: str) -> list[str]:
    with api.services.sessions() as session:
        query = select(AuditEvent.action).where(AuditEvent.study_uid == study_uid)
        return list(session.scalars(query.order_by(AuditEvent.id)))


def test_end_to_end_order_completion_worklist_claim_complete(api: Api) -> None:
    study = new_uid()
    order = {"priority": "STAT", "clinical_question": "haemorrhage?", "referrer": "ref1"}
    put = api.client.put(f"/api/studies/{study}/request", json=order, headers=api.headers("rg1"))
    assert put.status_code == 201, put.text
    assert put.json()["referrer"] == "ref1" and put.json()["site"] == "county1"
    order_url = f"/api/studies/{study}/request"
    assert api.client.get(order_url, headers=api.headers("ref1")).json()["priority"] == "STAT"

    study = _complete_with_uid(api, study)

    [task] = worklist(api, "rad1", study=study)
    assert (task["state"], task["priority"], task["site"]) == ("SCHEDULED", "STAT", "county1")
    assert task["clinical_question"] == "haemorrhage?" and task["assigned_to"] == "rad1"
    assert task["num_instances"] == 2 and task["patient_name"]
    due = datetime.fromisoformat(task["due_at"]) - datetime.fromisoformat(task["created_at"])
    assert timedelta(minutes=59) < due <= timedelta(minutes=60)
    assert worklist(api, "radx", study=study) == []  # reads county2 only
    assert (
        api.client.get(f"/api/worklist/{task['id']}", headers=api.headers("radx")).status_code
        == 404
    )
    assert worklist(api, "rg1", study=study)[0]["id"] == task["id"]  # his site, read-only
    assert worklist(api, "rg2", study=study) == [] and worklist(api, "ref1", study=study) == []
    assert post(api, "rg1", f"{task['id']}/claim").status_code == 403

    claimed = post(api, "rad1", f"{task['id']}/claim")
    assert claimed.status_code == 200, claimed.text
    uid = claimed.json()["transaction_uid"]
    assert claimed.json()["state"] == "IN PROGRESS" and claimed.json()["claimed_by"] == "rad1"
    again = post(api, "rad1", f"{task['id']}/claim")
    assert again.status_code == 409 and "already IN PROGRESS" in again.json()["detail"]
    wrong = post(api, "rad1", f"{task['id']}/complete", {"transaction_uid": "1.2.3"})
    assert wrong.status_code == 400 and "incorrect" in wrong.json()["detail"]

    done = post(api, "rad1", f"{task['id']}/complete", {"transaction_uid": uid})

    assert done.status_code == 200 and done.json()["state"] == "COMPLETED"
    late = post(api, "rad1", f"{task['id']}/claim")
    assert late.status_code == 409 and "COMPLETED" in late.json()["detail"]
    detail = api.client.get(f"/api/worklist/{task['id']}", headers=api.headers("rad1")).json()
    assert [e["action"] for e in detail["events"]] == ["created", "routed", "claim", "complete"]
    assert {"task-claim", "task-complete", "worklist"} <= set(audit_actions(api, study))


def _complete_with_uid(api: Api, study_uid: str) -> str:
    """Complete a study whose UID was chosen before (the order came first)."""
    datasets = ct_datasets(2)
    for ds in datasets:
        ds.StudyInstanceUID = study_uid
    instances = [part10(ds) for ds in datasets]
    body, content_type = multipart_related(instances)
    headers = {"Content-Type": content_type, **api.headers("site")}
    assert api.client.post("/dicomweb/studies", content=body, headers=headers).status_code == 200
    _, entries = manifest_of(instances)
    document = {"instances": [{"sop_instance_uid": u, "sha256": h} for u, h in entries.items()]}
    response = api.client.put(
        f"/api/studies/{study_uid}/manifest", json=document, headers=api.headers("site")
    )
    assert response.json()["complete"]
    return study_uid


def test_fifty_concurrent_http_claims_one_wins_no_server_error(api: Api) -> None:
    task = task_of(api, complete_study(api))
    barrier = threading.Barrier(CLAIMERS)
    statuses: list[int] = []

    def attempt() -> None:
        barrier.wait()
        statuses.append(post(api, "rad1", f"{task['id']}/claim").status_code)

    threads = [threading.Thread(target=attempt) for _ in range(CLAIMERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert Counter(statuses) == Counter({200: 1, 409: CLAIMERS - 1})


def test_filters_and_order(api: Api) -> None:
    studies = [complete_study(api) for _ in range(3)]
    stat = studies[1]
    put = api.client.put(
        f"/api/studies/{stat}/request", json={"priority": "STAT"}, headers=api.headers("rg1")
    )
    assert put.status_code == 201
    mine = {t["study_uid"]: t for t in worklist(api, "rad1", mine=True, limit=1000)}
    assert set(studies) <= set(mine)
    assert mine[stat]["priority"] == "STAT"  # the order came after the task: it was updated

    listed = [
        t["study_uid"] for t in worklist(api, "rad1", limit=1000) if t["study_uid"] in studies
    ]
    assert listed[0] == stat  # due first (1 h SLA against 24 h)
    only_stat = worklist(api, "rad1", priority="STAT", limit=1000)
    assert stat in {t["study_uid"] for t in only_stat} and {t["priority"] for t in only_stat} == {
        "STAT"
    }

    with api.services.writer.begin() as session:
        session.execute(
            update(ReadingTask)
            .where(ReadingTask.study_uid == studies[2])
            .values(due_at=datetime.now(UTC) - timedelta(minutes=5))
        )
    overdue = worklist(api, "rad1", overdue=True, limit=1000)
    assert studies[2] in {t["study_uid"] for t in overdue} and all(t["overdue"] for t in overdue)
    in_progress = worklist(api, "rad1", state="IN PROGRESS", study=studies[0])
    assert in_progress == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"state": "DONE"}, "state must be one of"),
        ({"priority": "ASAP"}, "priority must be"),
        ({"site": "nowhere"}, "no site"),
        ({"pool": "nopool"}, "no pool"),
    ],
)
def test_bad_filters_are_400(api: Api, params: dict[str, str], message: str) -> None:
    response = api.client.get("/api/worklist", params=params, headers=api.headers("rad1"))
    assert response.status_code == 400 and message in response.json()["detail"]


def test_only_admins_assign_cancel_and_break_locks(api: Api) -> None:
    task = task_of(api, complete_study(api))
    for path in ("assign", "break-lock"):
        assert post(api, "rad1", f"{task['id']}/{path}").status_code == 403
    canceled = post(api, "rad1", f"{task['id']}/cancel", {"reason": "x"})
    assert canceled.status_code == 409  # a reader cancels only his own claim, with its UID

    refused = post(api, "admin", f"{task['id']}/assign", {"user": "radx"})
    assert refused.status_code == 409 and "does not read" in refused.json()["detail"]
    assert post(api, "admin", f"{task['id']}/assign", {"user": None}).json()["assigned_to"] is None

    claim = post(api, "rad1", f"{task['id']}/claim")
    assert post(api, "admin", f"{task['id']}/assign", {"user": "rad1"}).status_code == 409
    broken = post(api, "admin", f"{task['id']}/break-lock", {"reason": "ill"})
    assert broken.status_code == 200 and broken.json()["state"] == "SCHEDULED"
    stale = post(
        api, "rad1", f"{task['id']}/complete", {"transaction_uid": claim.json()["transaction_uid"]}
    )
    assert stale.status_code == 409 and "SCHEDULED" in stale.json()["detail"]
    gone = post(api, "admin", f"{task['id']}/cancel", {"reason": "duplicate"})
    assert gone.status_code == 200 and gone.json()["canceled_reason"] == "duplicate"
    assert {"task-assign", "task-break-lock", "task-cancel"} <= set(
        audit_actions(api, task["study_uid"])
    )


def test_release_and_renew_by_the_holder(api: Api) -> None:
    task = task_of(api, complete_study(api))
    uid = post(api, "rad1", f"{task['id']}/claim").json()["transaction_uid"]
    renewed = post(api, "rad1", f"{task['id']}/renew", {"transaction_uid": uid})
    assert renewed.status_code == 200 and renewed.json()["lease_expires_at"]
    assert post(api, "rad1", f"{task['id']}/renew", {}).status_code == 400

    released = post(api, "rad1", f"{task['id']}/release", {"transaction_uid": uid})

    assert released.status_code == 200 and released.json()["state"] == "SCHEDULED"
    assert post(api, "rad1", f"{task['id']}/release").status_code == 409
    assert post(api, "rad1", f"{task['id']}/claim", {"x": 1}).status_code == 200


def test_malformed_bodies_are_rejected(api: Api) -> None:
    task = task_of(api, complete_study(api))
    assert (
        post(api, "rad1", f"{task['id']}/complete", {"transaction_uid": "1" * 65}).status_code
        == 422
    )
    assert post(api, "admin", f"{task['id']}/assign", {"who": "rad1"}).status_code == 422
    assert post(api, "rad1", "999999999/claim").status_code == 404


def test_admin_routing_rules_pools_and_profiles(api: Api) -> None:
    admin = api.headers("admin")
    pool = api.client.put("/api/worklist/pools/neuro-t", json={"members": ["rad1"]}, headers=admin)
    assert pool.status_code == 200 and pool.json()["members"] == ["rad1"]
    rule = {
        "position": 5,
        "site": "county1",
        "modality": "CT",
        "body_part": "head",
        "pool": "neuro-t",
    }
    created = api.client.post("/api/worklist/rules", json=rule, headers=admin)
    assert created.status_code == 201 and created.json()["body_part"] == "HEAD"
    rule_id = created.json()["id"]
    assert rule_id in [r["id"] for r in api.client.get("/api/worklist/rules", headers=admin).json()]
    hours = {
        "timezone": "Europe/Berlin",
        "working_hours": {"mon": [["08:00", "16:00"]]},
        "max_open_tasks": 50,
    }
    profile = api.client.put("/api/worklist/readers/radx", json=hours, headers=admin)
    assert profile.status_code == 200 and profile.json()["max_open_tasks"] == 50

    for path, body, message in [
        ("/api/worklist/rules", {**rule, "priority": "SOON"}, "priority must be"),
        ("/api/worklist/rules", {**rule, "site": "atlantis"}, "no site"),
        ("/api/worklist/rules", {**rule, "assignee": "rg1"}, "not a radiologist"),
    ]:
        response = api.client.post(path, json=body, headers=admin)
        assert response.status_code == 400 and message in response.json()["detail"]
    bad_hours = api.client.put(
        "/api/worklist/readers/radx", json={"working_hours": {"mon": [["8", "x"]]}}, headers=admin
    )
    assert bad_hours.status_code == 400 and "invalid time" in bad_hours.json()["detail"]
    assert api.client.get("/api/worklist/readers/rg1", headers=admin).status_code == 404
    assert api.client.get("/api/worklist/rules", headers=api.headers("rad1")).status_code == 403

    assert api.client.delete(f"/api/worklist/rules/{rule_id}", headers=admin).status_code == 204
    assert api.client.delete(f"/api/worklist/rules/{rule_id}", headers=admin).status_code == 404
    assert api.client.delete("/api/worklist/pools/neuro-t", headers=admin).status_code == 204


def test_orders_belong_to_the_site(api: Api) -> None:
    study = complete_study(api)
    url = f"/api/studies/{study}/request"
    assert api.client.put(url, json={}, headers=api.headers("rg2")).status_code == 404
    assert api.client.put(url, json={}, headers=api.headers("rad1")).status_code == 403
    created = api.client.put(url, json={"priority": "urgent"}, headers=api.headers("rg1"))
    assert created.status_code == 201 and created.json()["priority"] == "URGENT"
    again = api.client.put(url, json={"priority": "ROUTINE"}, headers=api.headers("rg1"))
    assert again.status_code == 200
    for body, message in [
        ({"priority": "x"}, "priority must be"),
        ({"referrer": "rad1"}, "not an active referrer"),
    ]:
        response = api.client.put(url, json=body, headers=api.headers("rg1"))
        assert response.status_code == 400 and message in response.json()["detail"]
    assert (
        api.client.put(url, json={"history": "h" * 8001}, headers=api.headers("rg1")).status_code
        == 422
    )
    assert api.client.get(url, headers=api.headers("rad1")).json()["priority"] == "ROUTINE"
    assert api.client.get(url, headers=api.headers("rg2")).status_code == 404
    assert (
        api.client.put(
            "/api/studies/not-a-uid/request", json={}, headers=api.headers("rg1")
        ).status_code
        == 400
    )


def test_a_crash_between_completion_and_intake_is_swept_up(api: Api) -> None:
    study = complete_study(api)
    with api.services.writer.begin() as session:  # as if intake had never run
        session.execute(
            update(ReadingTask).where(ReadingTask.study_uid == study).values(study_uid=new_uid())
        )
        assert session.scalar(
            select(StudyManifest.complete).where(StudyManifest.study_uid == study)
        )

    policy = WorklistPolicy.from_settings(api.services.settings.worklist)
    WorklistLoop(api.services.engine, policy).run_once()

    assert worklist(api, "rad1", study=study)[0]["state"] == "SCHEDULED"


def test_every_worklist_route_needs_a_token(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    routes = [
        (method.upper(), path.replace("{task_id}", "1").replace("{rule_id}", "1"))
        for path, operations in paths.items()
        if path.startswith("/api/worklist") or path.endswith("/request")
        for method in operations
    ]
    assert len(routes) >= 19
    for method, path in routes:
        path = path.format(name="x", username="rad1", study=new_uid())
        response = api.client.request(method, path, json={})
        assert response.status_code == 401, (method, path, response.text)
