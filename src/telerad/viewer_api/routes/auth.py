"""``POST /api/auth/token``: the OAuth2 password flow (RFC 6749 §4.3)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.security import OAuth2PasswordRequestForm
from starlette.concurrency import run_in_threadpool

from telerad.storage import record_access
from telerad.viewer_api.deps import AddressDep, PrincipalDep, ServicesDep
from telerad.viewer_api.security import AuthenticationFailed, issue_access_token
from telerad.worklist import authenticate_user

router = APIRouter(tags=["auth"])


@router.post("/token")
async def login_for_access_token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    services: ServicesDep,
    address: AddressDep,
) -> dict[str, Any]:
    """Exchange a username and password for a short-lived bearer token."""

    def check() -> Any:
        with services.writer.begin() as session:
            principal = authenticate_user(session, form.username, form.password)
            record_access(
                session,
                actor=form.username[:128],
                actor_role=principal.role if principal else "",
                action="login",
                resource="/api/auth/token",
                source_address=address,
                outcome="success" if principal else "failure",
            )
            return principal

    principal = await run_in_threadpool(check)
    if principal is None:
        raise AuthenticationFailed("incorrect username or password")
    minutes = services.settings.auth.token_minutes
    token, expires_in = issue_access_token(principal, services.token_secret, minutes)
    return {"access_token": token, "token_type": "bearer", "expires_in": expires_in}


@router.get("/me")
async def who_am_i(principal: PrincipalDep) -> dict[str, Any]:
    """The caller as the server sees him."""
    return {
        "name": principal.name,
        "role": principal.role,
        "site_id": principal.site_id,
        "reads_for": sorted(principal.reading_site_ids),
    }
