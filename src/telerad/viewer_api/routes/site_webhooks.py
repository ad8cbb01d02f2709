"""A site's notification webhook (admin): ``GET``, ``PUT`` and ``DELETE
/api/sites/{name}/webhook``.

``PUT`` takes ``{"url": "https://…", "secret": "…"}`` (``secret`` optional: one is generated)
and answers with the URL and the secret, which the site's receiver needs to verify the
``X-Telerad-Signature`` header (see :mod:`telerad.viewer_api.webhooks`). ``GET`` never shows
the secret.

===== ================================================================================
400   a URL that is not absolute http(s) or carries credentials; a secret under 16 characters
403   the caller is not an admin
404   no such site (or, for ``GET``/``DELETE``, no webhook)
===== ================================================================================
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from telerad.storage import record_access
from telerad.viewer_api.deps import AddressDep, PrincipalDep, ServicesDep
from telerad.viewer_api.problems import NotFound
from telerad.viewer_api.security import PermissionDenied
from telerad.worklist import (
    Principal,
    Role,
    UnknownSite,
    remove_site_webhook,
    set_site_webhook,
    site_webhook,
)

router = APIRouter(tags=["sites"])


def require_admin(principal: PrincipalDep) -> Principal:
    """Only admins configure sites."""
    if principal.role != Role.ADMIN or principal.is_site_token:
        raise PermissionDenied("only an admin may configure site webhooks")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


class WebhookSettings(BaseModel):
    """Where to POST a site's notifications and the HMAC key (generated if absent)."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=2048)
    secret: str | None = Field(default=None, max_length=256)


@router.get("/{name}/webhook")
def retrieve_site_webhook(name: str, services: ServicesDep, _admin: AdminDep) -> dict[str, Any]:
    """The site's webhook URL (not its secret)."""
    with services.sessions() as session:
        hook = _known(session, name)
        return {"site": name, "url": hook.url, "updated_at": _iso(hook.updated_at)}


@router.put("/{name}/webhook")
def store_site_webhook(
    name: str,
    settings: WebhookSettings,
    request: Request,
    services: ServicesDep,
    admin: AdminDep,
    address: AddressDep,
) -> dict[str, Any]:
    """Set or replace the site's webhook; answers the secret once."""
    with services.writer.begin() as session:
        try:
            hook, secret = set_site_webhook(session, name, settings.url, settings.secret)
        except UnknownSite as exc:
            raise NotFound("no such site") from exc
        _audit(session, admin, address, "webhook-set", request, hook.url)
        return {"site": name, "url": hook.url, "secret": secret}


@router.delete("/{name}/webhook", status_code=204)
def delete_site_webhook(
    name: str, request: Request, services: ServicesDep, admin: AdminDep, address: AddressDep
) -> Response:
    """Remove the site's webhook (its pending webhook notifications then fail)."""
    with services.writer.begin() as session:
        try:
            removed = remove_site_webhook(session, name)
        except UnknownSite as exc:
            raise NotFound("no such site") from exc
        if not removed:
            raise NotFound("the site has no webhook")
        _audit(session, admin, address, "webhook-remove", request)
    return Response(status_code=204)


def _known(session: Session, name: str) -> Any:
    try:
        hook = site_webhook(session, name)
    except UnknownSite as exc:
        raise NotFound("no such site") from exc
    if hook is None:
        raise NotFound("the site has no webhook")
    return hook


def _audit(
    session: Session,
    admin: Principal,
    address: str,
    action: str,
    request: Request,
    detail: str = "",
) -> None:
    record_access(
        session,
        actor=admin.name,
        actor_role=admin.role,
        action=action,
        resource=request.url.path,
        source_address=address,
        detail=detail,
    )


def _iso(value: datetime) -> str:
    return value.isoformat() if value.tzinfo else value.isoformat() + "+00:00"
