"""Helpers for the worklist API tests: extra readers, and studies that complete over HTTP."""

from __future__ import annotations

from typing import Any

from telerad.worklist import create_user
from tests.conftest import PASSWORD, Api
from tests.factories import ct_instances, manifest_of, multipart_related

#: Readers the worklist tests add: radx reads only county2 (never sees county1's tasks).
EXTRA_READERS = {"radx": ("county2",)}


def add_readers(api: Api) -> None:
    """Create :data:`EXTRA_READERS` (once per API) and log them in."""
    with api.services.writer.begin() as session:
        for name, sites in EXTRA_READERS.items():
            if name not in api.tokens:
                create_user(session, name, PASSWORD, "radiologist", reads_for=sites)
    for name in EXTRA_READERS:
        if name not in api.tokens:
            form = {"username": name, "password": PASSWORD}
            response = api.client.post("/api/auth/token", data=form)
            assert response.status_code == 200, response.text
            api.tokens[name] = response.json()["access_token"]


def complete_study(api: Api, slices: int = 2, who: str = "site") -> str:
    """STOW a small CT study as ``who`` (county1's gateway) and PUT its manifest: the study
    becomes complete and intake runs. Returns the Study Instance UID."""
    instances = ct_instances(slices)
    body, content_type = multipart_related(instances)
    headers = {"Content-Type": content_type, **api.headers(who)}
    assert api.client.post("/dicomweb/studies", content=body, headers=headers).status_code == 200
    study_uid, entries = manifest_of(instances)
    document = {"instances": [{"sop_instance_uid": u, "sha256": h} for u, h in entries.items()]}
    answer = api.client.put(
        f"/api/studies/{study_uid}/manifest", json=document, headers=api.headers(who)
    )
    assert answer.status_code == 200 and answer.json()["complete"], answer.text
    return study_uid


def worklist(api: Api, who: str, **params: Any) -> list[dict[str, Any]]:
    """The worklist of ``who`` (asserting 200)."""
    response = api.client.get("/api/worklist", params=params, headers=api.headers(who))
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result


def task_of(api: Api, study_uid: str, who: str = "admin") -> dict[str, Any]:
    """The one task of ``study_uid`` as ``who`` sees it."""
    [task] = worklist(api, who, study=study_uid)
    return task


def post(api: Api, who: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """POST ``body`` to ``/api/worklist/{path}`` as ``who``."""
    return api.client.post(f"/api/worklist/{path}", json=body or {}, headers=api.headers(who))
