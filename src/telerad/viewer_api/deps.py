"""Dependencies shared by the routers (``Annotated`` aliases, as in FastAPI's docs).

Dependencies that do not block are ``async def``: FastAPI runs a plain ``def`` dependency in
the thread pool, and a DICOMweb request resolves about ten of them, so a hop each would cost
more than the work. Those that query the database make exactly one hop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import Connection
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from telerad.storage import Scope
from telerad.viewer_api.security import (
    AuthenticationFailed,
    PermissionDenied,
    may_store,
    principal_from_token,
    scope_for,
)
from telerad.viewer_api.services import Services
from telerad.worklist import Principal, Role, referred_study_uids

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/auth/token", auto_error=False)


async def get_services(request: Request) -> Services:
    """The app's services (built in the lifespan)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    """A database session for one request."""
    with services.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def get_principal(
    services: ServicesDep, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Principal:
    """The authenticated caller; 401 without a valid bearer token. The user is read on every
    request (one query), so a deactivated user is refused at once."""
    if not token:
        raise AuthenticationFailed("bearer token required")

    def resolve() -> Principal:
        with services.reader() as connection:
            return principal_from_token(connection, token, services.token_secret)

    return await run_in_threadpool(resolve)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_scope(principal: PrincipalDep, services: ServicesDep) -> Scope:
    """The studies the caller may see (a referrer's referrals are read per request)."""
    if principal.role != Role.REFERRER:
        return scope_for(principal)  # no query, no thread hop

    def read() -> Scope:
        with services.reader() as connection:
            return _scope_of(connection, principal)

    return await run_in_threadpool(read)


ScopeDep = Annotated[Scope, Depends(get_scope)]


def authorize(services: Services, token: str | None) -> tuple[Principal, Scope]:
    """What :func:`get_principal` and :func:`get_scope` resolve, blocking, on one connection
    (for :mod:`telerad.viewer_api.hotpath`, which resolves them in its single thread hop)."""
    if not token:
        raise AuthenticationFailed("bearer token required")
    with services.reader() as connection:
        principal = principal_from_token(connection, token, services.token_secret)
        return principal, _scope_of(connection, principal)


def _scope_of(connection: Connection, principal: Principal) -> Scope:
    """The caller's scope; a referrer's referrals read on ``connection``."""
    if principal.role != Role.REFERRER:
        return scope_for(principal)
    return scope_for(principal, referred_study_uids(connection, principal))


async def require_store(principal: PrincipalDep) -> Principal:
    """Callers allowed to store instances."""
    if not may_store(principal):
        raise PermissionDenied("this role may not store instances")
    return principal


StorerDep = Annotated[Principal, Depends(require_store)]


async def client_address(request: Request) -> str:
    """The peer address, for the audit log."""
    return request.client.host if request.client else ""


async def dicomweb_base(request: Request, services: ServicesDep) -> str:
    """Absolute base URL of the DICOMweb service, for RetrieveURL and BulkDataURI."""
    public = services.settings.http.public_url
    root = public.rstrip("/") if public else str(request.base_url).rstrip("/")
    return f"{root}/dicomweb"


BaseUrlDep = Annotated[str, Depends(dicomweb_base)]
AddressDep = Annotated[str, Depends(client_address)]
