"""Authentication: the OAuth2 password flow, bearer tokens (user JWTs and site tokens) and the
routes that need them, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from sqlalchemy import func, select, update

from telerad.storage import AuditEvent, Site, User
from telerad.viewer_api import security
from telerad.worklist import create_site, create_site_token, create_user, revoke_site_tokens
from tests.conftest import PASSWORD, Api
from tests.factories import ct_instances, multipart_related, new_uid

# --- helpers ---------------------------------------------------------------------------------


def login(api: Api, username: str, password: str):
    return api.client.post("/api/auth/token", data={"username": username, "password": password})


def me(api: Api, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return api.client.get("/api/auth/me", headers=headers)


def site_id(api: Api, name: str) -> int:
    with api.services.sessions() as session:
        return session.scalar(select(Site.id).where(Site.name == name))


def assert_unauthenticated(response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "not authenticated"}  # no reason given away


def audit_rows_after(api: Api, last: int) -> list[AuditEvent]:
    api.services.audit.flush()  # reads are audited by the batched writer
    with api.services.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.id > last)))


def last_audit_id(api: Api) -> int:
    api.services.audit.flush()
    with api.services.sessions() as session:
        return session.scalar(select(func.max(AuditEvent.id))) or 0


def signed(api: Api, key: str = "", algorithm: str = "HS256", **changes: Any) -> str:
    """An access token for rg1, signed with ``key`` (default: the server's; none for the
    ``none`` algorithm), with ``changes`` to its claims (None removes a claim)."""
    now = datetime.now(UTC)
    claims = {"sub": "rg1", "role": "radiographer", "iat": now,
              "exp": now + timedelta(minutes=5), "typ": "access", **changes}  # fmt: skip
    claims = {name: claim for name, claim in claims.items() if claim is not None}
    if algorithm == "none":
        return jwt.encode(claims, None, algorithm="none")
    return jwt.encode(claims, key or api.services.token_secret, algorithm=algorithm)


# --- the token endpoint ----------------------------------------------------------------------


def test_right_password_gives_a_bearer_token(shared_api):
    last = last_audit_id(shared_api)

    response = login(shared_api, "rad1", PASSWORD)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    minutes = shared_api.services.settings.auth.token_minutes
    assert body["expires_in"] == minutes * 60
    claims = jwt.decode(body["access_token"], shared_api.services.token_secret, ["HS256"])
    assert claims["sub"] == "rad1"
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert me(shared_api, body["access_token"]).json()["name"] == "rad1"
    [row] = audit_rows_after(shared_api, last)
    assert (row.action, row.actor, row.outcome) == ("login", "rad1", "success")


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("rg1", "wrong password"),
        ("rg1", PASSWORD.upper()),
        ("RG1", PASSWORD),
        ("nobody", PASSWORD),
    ],
)
def test_wrong_credentials_are_refused_and_audited(shared_api, username, password):
    last = last_audit_id(shared_api)

    response = login(shared_api, username, password)

    assert_unauthenticated(response)
    [row] = audit_rows_after(shared_api, last)
    assert (row.action, row.actor, row.outcome) == ("login", username, "failure")
    assert row.source_address == "testclient"


@pytest.mark.parametrize("form", [{"username": "rg1"}, {"username": "", "password": PASSWORD}])
def test_login_form_without_username_or_password_is_invalid(shared_api, form):
    response = shared_api.client.post("/api/auth/token", data=form)

    assert response.status_code == 422, response.text
    assert "access_token" not in response.text


# --- bearer tokens ---------------------------------------------------------------------------

FORGED_KEY = "an attacker's key, 32 bytes or more"
BAD_TOKENS = {
    "expired": lambda api: signed(api, exp=datetime.now(UTC) - timedelta(seconds=1)),
    "other key": lambda api: signed(api, key=FORGED_KEY),
    "unsigned": lambda api: signed(api, algorithm="none"),
    "HS512": lambda api: signed(api, algorithm="HS512"),
    "no expiry": lambda api: signed(api, exp=None),
    "no subject": lambda api: signed(api, sub=None),
    "not an access token": lambda api: signed(api, typ="refresh"),
    "unknown user": lambda api: signed(api, sub="ghost"),
    "garbage": lambda api: "not.a.token",
    "empty": lambda api: "",
    "unknown site token": lambda api: "trs_" + "x" * 43,
    "site token with a typo": lambda api: api.site_token[:-1],
}


@pytest.mark.parametrize("make", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_bad_token_is_refused(shared_api, make):
    assert_unauthenticated(me(shared_api, make(shared_api)))


def test_a_token_that_expires_after_use_is_refused_from_then_on(shared_api, monkeypatch):
    """Verified tokens are remembered (security._verified_claims); expiry is still checked on
    every request, so a token accepted a moment ago is refused once its time is up."""
    token = signed(shared_api, exp=datetime.now(UTC) + timedelta(seconds=30))
    assert me(shared_api, token).status_code == 200  # verified, and now remembered

    later = datetime.now(UTC).timestamp() + 31
    monkeypatch.setattr(security, "time", SimpleNamespace(time=lambda: later))

    assert_unauthenticated(me(shared_api, token))
    assert (
        me(
            shared_api, signed(shared_api, exp=datetime.now(UTC) + timedelta(seconds=60))
        ).status_code
        == 200
    )


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", "Basic cmcxOmNvcnJlY3QgaG9yc2UgYmF0dGVyeQ==", "Token {token}", "{token}"],
)
def test_token_outside_a_bearer_header_is_refused(shared_api, authorization):
    header = authorization.format(token=shared_api.tokens["rg1"])

    response = shared_api.client.get("/api/auth/me", headers={"Authorization": header})

    assert_unauthenticated(response)


@pytest.mark.parametrize(
    ("who", "role", "site", "reads_for"),
    [
        ("admin", "admin", None, []),
        ("rg1", "radiographer", "county1", []),
        ("rg2", "radiographer", "county2", []),
        ("rad1", "radiologist", None, ["county1"]),
        ("ref1", "referrer", "county1", []),
        ("site", "gateway", "county1", []),
    ],
)
def test_me_tells_the_role_and_site(shared_api, who, role, site, reads_for):
    response = shared_api.client.get("/api/auth/me", headers=shared_api.headers(who))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["role"] == role
    assert body["site_id"] == (site_id(shared_api, site) if site else None)
    assert body["reads_for"] == [site_id(shared_api, s) for s in reads_for]


def test_revoked_site_token_is_refused_at_once(shared_api):
    with shared_api.services.writer.begin() as session:
        create_site(session, "county3", issuer="COUNTY3")
        token = create_site_token(session, "county3")
    assert me(shared_api, token).status_code == 200
    body, content_type = multipart_related(ct_instances(1))

    with shared_api.services.writer.begin() as session:
        assert revoke_site_tokens(session, "county3") == 1

    assert_unauthenticated(me(shared_api, token))
    stored = shared_api.client.post(
        "/dicomweb/studies",
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
    )
    assert_unauthenticated(stored)
    assert me(shared_api, shared_api.site_token).status_code == 200  # county1's still works


def test_deactivated_user_is_refused_at_once(shared_api):
    with shared_api.services.writer.begin() as session:
        create_user(session, "leaver", PASSWORD, "radiographer", site="county1")
    token = login(shared_api, "leaver", PASSWORD).json()["access_token"]
    assert me(shared_api, token).status_code == 200

    with shared_api.services.writer.begin() as session:
        session.execute(update(User).where(User.username == "leaver").values(active=False))

    assert_unauthenticated(me(shared_api, token))
    assert_unauthenticated(login(shared_api, "leaver", PASSWORD))


# --- which routes need a token ---------------------------------------------------------------


def test_health_needs_no_token(shared_api):
    response = shared_api.client.get("/healthz")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"


STUDY, SERIES, INSTANCE = new_uid(), new_uid(), new_uid()
DICOMWEB_ROUTES = [
    ("GET", "/dicomweb/studies"),
    ("GET", "/dicomweb/series"),
    ("GET", "/dicomweb/instances"),
    ("GET", "/dicomweb/studies/{study}/series"),
    ("GET", "/dicomweb/studies/{study}/instances"),
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances"),
    ("POST", "/dicomweb/studies"),
    ("POST", "/dicomweb/studies/{study}"),
    ("GET", "/dicomweb/studies/{study}"),
    ("GET", "/dicomweb/studies/{study}/metadata"),
    ("GET", "/dicomweb/studies/{study}/series/{series}"),
    ("GET", "/dicomweb/studies/{study}/series/{series}/metadata"),
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{instance}"),
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{instance}/metadata"),
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"),
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{instance}/bulk/{path}"),
    *(
        ("GET", f"/dicomweb/studies/{{study}}{level}/{kind}")
        for kind in ("rendered", "thumbnail")
        for level in (
            "",
            "/series/{series}",
            "/series/{series}/instances/{instance}",
            "/series/{series}/instances/{instance}/frames/{frames}",
        )
    ),
    ("GET", "/dicomweb/workitems"),
    ("GET", "/dicomweb/workitems/{workitem}"),
    ("PUT", "/dicomweb/workitems/{workitem}/state"),
]


def test_the_route_table_below_covers_every_dicomweb_route(shared_api):
    paths = shared_api.client.get("/openapi.json").json()["paths"]

    served = {
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/dicomweb")
        for method in operations
    }

    assert served == set(DICOMWEB_ROUTES)


@pytest.mark.parametrize(("method", "route"), DICOMWEB_ROUTES)
@pytest.mark.parametrize("token", [None, "forged"])
def test_every_dicomweb_route_needs_a_token(shared_api, method, route, token):
    body, content_type = multipart_related(ct_instances(1))
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {signed(shared_api, key=FORGED_KEY)}"
    path = route.format(
        study=STUDY,
        series=SERIES,
        instance=INSTANCE,
        frames="1",
        workitem=new_uid(),
        path="7FE00010",
    )

    objects = list(shared_api.services.objects.list(""))

    response = shared_api.client.request(method, path, content=body, headers=headers)

    assert_unauthenticated(response)
    assert list(shared_api.services.objects.list("")) == objects
