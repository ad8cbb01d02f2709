"""The hot path (``telerad.viewer_api.hotpath``) answers exactly as the routes do.

Two apps over the same services, one with the hot path and one without, get the same requests
(frames, rendered images and thumbnails; good and bad input; every role; conditional
requests). Their answers must be the same: status, body (the random multipart boundary
aside) and the headers a client or cache acts on, and each request must leave exactly one
audit event on both (an error answered by the hot path is not audited twice by a fall-through
to the routes). The hot app must really have answered them itself.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from telerad.storage import AuditEvent
from telerad.viewer_api import create_app, hotpath
from tests.conftest import Api
from tests.factories import corrupt_rle_instance, encapsulated_pdf, multiframe_ct, multipart_related

OCTET_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
COMPARED_HEADERS = (
    "content-type", "etag", "cache-control", "vary", "cross-origin-resource-policy",
    "www-authenticate", "content-length", "content-encoding",
)  # fmt: skip


@pytest.fixture(scope="module")
def routed(shared_api: Api) -> Iterator[TestClient]:
    """The same services behind an app without the hot path."""
    app = create_app(shared_api.services.settings, shared_api.services, hot_path=False)
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def stored(shared_api: Api) -> dict[str, tuple[str, str, str]]:
    """A 3-frame CT, a PDF and an instance with a corrupt RLE frame, stored for county1."""
    instances = {
        "ct": multiframe_ct(frames=3, size=16, PatientID="HOT1"),
        # over GZip's 1 KiB threshold, so a difference in compression would show
        "pdf": encapsulated_pdf(b"%PDF-1.4\n" + b"% filler\n" * 400 + b"%%EOF\n", PatientID="HOT2"),
        "corrupt": corrupt_rle_instance(),
    }
    body, content_type = multipart_related(list(instances.values()))
    response = shared_api.client.post(
        "/dicomweb/studies",
        content=body,
        headers={"Content-Type": content_type, **shared_api.headers("site")},
    )
    assert response.status_code == 200, response.text
    uids = {}
    for name, raw in instances.items():
        ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
        uids[name] = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    return uids


def test_the_hot_path_matches_what_the_router_matches_behind_a_path_prefix() -> None:
    """Behind a proxy's prefix (``root_path``, which uvicorn puts in front of ``path``) the
    hot path sees the same route path as Starlette's router, and a path that is only the
    prefix's lookalike is not stripped."""
    tail = "/dicomweb/studies/1.2/series/1.3/instances/1.4/frames/1"
    assert hotpath.route_path({"path": "/pacs" + tail, "root_path": "/pacs"}) == tail
    assert hotpath.route_path({"path": tail, "root_path": ""}) == tail
    assert hotpath.route_path({"path": "/pacsx" + tail, "root_path": "/pacs"}) == "/pacsx" + tail
    assert hotpath._PATH.fullmatch(
        hotpath.route_path({"path": "/pacs" + tail, "root_path": "/pacs"})
    )


def _path(uids: tuple[str, str, str], tail: str) -> str:
    study, series, instance = uids
    return f"/dicomweb/studies/{study}/series/{series}/instances/{instance}/{tail}"


def _cases(stored: dict[str, tuple[str, str, str]]) -> list[tuple[str, str, dict[str, str]]]:
    """(who, path, extra headers): good requests, then each kind of bad one."""
    ct, pdf, corrupt = stored["ct"], stored["pdf"], stored["corrupt"]
    study, series, _ = ct
    octet = {"Accept": OCTET_ANY}
    return [
        ("rad1", _path(ct, "frames/1"), octet),
        ("rad1", _path(ct, "frames/3,1"), octet),
        ("rad1", _path(ct, "frames/2"), {"Accept": "application/octet-stream"}),
        ("admin", _path(ct, "frames/1"), {}),
        ("rad1", _path(ct, "rendered"), {}),
        ("rad1", _path(ct, "rendered?window=40,400,sigmoid&quality=50"), {}),
        ("rad1", _path(ct, "frames/2/rendered?viewport=8,8"), {"Accept": "image/png"}),
        ("rad1", _path(ct, "rendered"), {"Accept": "image/gif"}),
        ("rad1", _path(ct, "thumbnail"), {}),
        ("rad1", _path(ct, "frames/3/thumbnail?preset=lung"), {}),
        ("rad1", _path(pdf, "rendered"), {"Accept": "application/pdf"}),
        ("rg1", _path(ct, "rendered?accept=image/png"), {}),
        # conditional: a wildcard If-None-Match matches any current representation
        ("rad1", _path(ct, "frames/1"), {**octet, "If-None-Match": "*"}),
        ("rad1", _path(ct, "rendered"), {"If-None-Match": "*"}),
        # bad input
        ("rad1", _path(ct, "frames/x"), octet),
        ("rad1", _path(ct, "frames/0"), octet),
        ("rad1", _path(ct, "frames/99999999999"), octet),
        ("rad1", _path(ct, "frames/4"), octet),
        ("rad1", _path(ct, "frames/1"), {"Accept": "text/html"}),
        ("rad1", _path(ct, "frames/1,2/rendered"), {}),
        ("rad1", _path(ct, "frames/9/rendered"), {}),
        ("rad1", _path(ct, "rendered?window=wide"), {}),
        ("rad1", _path(ct, "rendered?quality=0"), {}),
        ("rad1", _path(ct, "rendered?viewport=-1,2"), {}),
        ("rad1", _path(ct, "rendered"), {"Accept": "text/html"}),
        ("rad1", _path(pdf, "rendered"), {"Accept": "image/jpeg"}),
        ("rad1", _path(corrupt, "frames/1/rendered"), {}),
        ("rad1", _path((study, series, "1.2.3.999"), "frames/1"), octet),
        ("rad1", _path((study, series, "1.2.3.999"), "rendered"), {}),
        ("rad1", _path((study, series, "1.2.<script>"), "rendered"), {}),
        ("rad1", _path((study, "1.2.3.998", ct[2]), "frames/1"), octet),
        # who may see it
        ("rg2", _path(ct, "frames/1"), octet),
        ("rg2", _path(ct, "rendered"), {}),
        ("ref1", _path(ct, "thumbnail"), {}),
        ("site", _path(ct, "frames/1"), octet),
        ("nobody", _path(ct, "frames/1"), octet),
        ("forged", _path(ct, "rendered"), {}),
    ]


def _headers(api: Api, who: str) -> dict[str, str]:
    if who == "nobody":
        return {}
    if who == "forged":
        return {"Authorization": "Bearer not.a.token"}
    return api.headers(who)


def _normalised(response: Any) -> tuple[int, bytes, dict[str, str]]:
    headers = {k: response.headers[k] for k in COMPARED_HEADERS if k in response.headers}
    body = response.content
    boundary = re.search(r"boundary=([^;\s]+)", headers.get("content-type", ""))
    if boundary:
        token = boundary.group(1).strip('"')
        body = body.replace(token.encode(), b"BOUNDARY")
        headers["content-type"] = headers["content-type"].replace(token, "BOUNDARY")
    return response.status_code, body, headers


def _audit_count(api: Api) -> int:
    api.services.audit.flush()
    with api.services.sessions() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent)) or 0


def test_the_hot_path_answers_as_the_routes_do(
    shared_api: Api,
    routed: TestClient,
    stored: dict[str, tuple[str, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answered = []
    answer = hotpath._answer
    monkeypatch.setattr(hotpath, "_answer", lambda *a: (answered.append(1), answer(*a))[1])
    statuses = set()
    for who, path, extra in _cases(stored):
        headers = {**_headers(shared_api, who), **extra}
        results = []
        for client in (shared_api.client, routed):
            before = _audit_count(shared_api)
            results.append((_normalised(client.get(path, headers=headers)), before))
            results[-1] = (results[-1][0], _audit_count(shared_api) - before)
        (hot, hot_audits), (slow, slow_audits) = results
        assert hot == slow, (who, path, extra)
        assert hot_audits == slow_audits <= 1, (who, path, extra)
        statuses.add(hot[0])
    assert statuses >= {200, 304, 400, 401, 404, 406, 422}  # every kind of answer was compared
    assert len(answered) == len(_cases(stored))  # the hot app answered each one itself


def test_other_methods_and_paths_pass_through(
    shared_api: Api, stored: dict[str, tuple[str, str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    answered = []
    monkeypatch.setattr(hotpath, "_answer", lambda *a: answered.append(1))
    ct = stored["ct"]
    headers = shared_api.headers("rad1")
    assert shared_api.client.post(_path(ct, "frames/1"), headers=headers).status_code == 405
    slash = shared_api.client.get(_path(ct, "frames/1/"), headers=headers, follow_redirects=False)
    assert slash.status_code == 307  # the router's own redirect to the path without the slash
    series = f"/dicomweb/studies/{ct[0]}/series/{ct[1]}/rendered"
    assert shared_api.client.get(series, headers=headers).status_code == 200
    assert answered == []
