"""Dependencies shared by the routers (``Annotated`` aliases, as in FastAPI's docs)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.orm import Session

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


def get_services(request: Request) -> Services:
    """The app's services (built in the lifespan)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    """A database session for one request."""
    with services.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_principal(
    services: ServicesDep, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Principal:
    """The authenticated caller; 401 without a valid bearer token."""
    if not token:
        raise AuthenticationFailed("bearer token required")
    with services.sessions() as session:
        return principal_from_token(session, token, services.token_secret)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_scope(principal: PrincipalDep, services: ServicesDep) -> Scope:
    """The studies the caller may see (a referrer's referrals are read per request)."""
    if principal.role != Role.REFERRER:
        return scope_for(principal)
    with services.sessions() as session:
        return scope_for(principal, referred_study_uids(session, principal))


ScopeDep = Annotated[Scope, Depends(get_scope)]


def require_store(principal: PrincipalDep) -> Principal:
    """Callers allowed to store instances."""
    if not may_store(principal):
        raise PermissionDenied("this role may not store instances")
    return principal


StorerDep = Annotated[Principal, Depends(require_store)]


def client_address(request: Request) -> str:
    """The peer address, for the audit log."""
    return request.client.host if request.client else ""


def dicomweb_base(request: Request, services: ServicesDep) -> str:
    """Absolute base URL of the DICOMweb service, for RetrieveURL and BulkDataURI."""
    public = services.settings.http.public_url
    root = public.rstrip("/") if public else str(request.base_url).rstrip("/")
    return f"{root}/dicomweb"


BaseUrlDep = Annotated[str, Depends(dicomweb_base)]
AddressDep = Annotated[str, Depends(client_address)]
