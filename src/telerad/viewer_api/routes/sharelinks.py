"""Share links and the report's access log.

Authenticated (``/api/reports``):

- ``POST /{report}/share`` ``{"hours": 24, "note": "Dr. X"}`` (both optional; ``hours`` at most
  ``delivery.share_link_hours``) → 201 ``{"id", "url", "token", "expires_at", …}``: a radiologist
  who may read the report, or an admin; the report must be issued (preliminary or final). The
  token is shown only in this answer;
- ``GET /{report}/shares``: the report's links (never their tokens);
- ``DELETE /{report}/share/{link}``: revoke (idempotent) → 204;
- ``GET /{report}/accesses``: who opened the report, its outputs and its share links, when and
  from where (the signing radiologist, the author of an unsigned version, admins);
- ``GET /{report}/notifications``: delivery and acknowledgement of the report's notifications
  (radiologists who may read it, admins).

Public (no login; the token is the credential): ``GET /share/{token}`` (HTML with embedded key
images) and ``GET /share/{token}.pdf``: the shared report as it stands when opened, i.e. its
latest issued version (a signed addendum is shown, never a draft). Unknown, expired, revoked
and malformed tokens all get the same 404; more than ``delivery.share_failures_per_minute``
failures from one address get 429. Every use is audited under
``/api/reports/{report}/share/{link}`` (never the token).

===== ================================================================================
400   hours out of range, a draft report, a note over 256 characters
403   a role that may not share (radiographer, referrer) or see the access log
404   no such report (or not visible), no such link, a dead token
429   too many failed share-link lookups from this address
===== ================================================================================
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from telerad.storage import Report, ShareLink, record_access
from telerad.viewer_api.deps import AddressDep, PrincipalDep, ServicesDep
from telerad.viewer_api.ratelimit import FailureLimiter
from telerad.viewer_api.report_images import render_key_images
from telerad.viewer_api.routes.notifications import notification_json
from telerad.viewer_api.security import PermissionDenied
from telerad.viewer_api.services import Services
from telerad.worklist import (
    InvalidShareLink,
    Principal,
    ReportBundle,
    Role,
    ShareLinkNotFound,
    chain_versions,
    issue_share_link,
    load_bundle,
    notifications_of_report,
    render_report_html,
    render_report_pdf,
    report_accesses,
    report_chain,
    resolve_share_link,
    revoke_share_link,
    share_links_of,
    share_resource,
    user_id_of,
    visible_report,
)

router = APIRouter(tags=["share links"])
public_router = APIRouter(tags=["share links"])

#: Headers of every share-link answer: not cached, not indexed, the URL (the token) never
#: sent on as a Referer.
SHARE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
}


class ShareRequest(BaseModel):
    """How long the link lives (default and cap: ``delivery.share_link_hours``) and a note."""

    model_config = ConfigDict(extra="forbid")
    hours: float | None = Field(default=None, gt=0)
    note: str = Field(default="", max_length=256)


def require_sharer(principal: PrincipalDep) -> Principal:
    """Radiologists and admins issue and revoke share links."""
    if principal.is_site_token or principal.role not in (Role.RADIOLOGIST, Role.ADMIN):
        raise PermissionDenied("only a radiologist or an admin may share a report")
    return principal


SharerDep = Annotated[Principal, Depends(require_sharer)]


def _link_json(link: ShareLink, url: str | None = None, token: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": link.id,
        "report_id": link.report_id,
        "study_uid": link.study_uid,
        "note": link.note,
        "created_by": link.created_by,
        "created_at": _iso(link.created_at),
        "expires_at": _iso(link.expires_at),
        "revoked_at": _iso(link.revoked_at),
        "revoked_by": link.revoked_by,
    }
    if token is not None:
        body |= {"token": token, "url": url}
    return body


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat() if value.tzinfo else value.isoformat() + "+00:00"


def _share_url(request: Request, services: Services, token: str) -> str:
    public = services.settings.http.public_url
    root = public.rstrip("/") if public else str(request.base_url).rstrip("/")
    return f"{root}/share/{token}"


@router.post("/{report_id}/share", status_code=201)
def create_share_link(
    report_id: int,
    body: ShareRequest,
    request: Request,
    services: ServicesDep,
    principal: SharerDep,
    address: AddressDep,
) -> dict[str, Any]:
    """Issue a link to this report version for a doctor without an account."""
    with services.writer.begin() as session:
        report = visible_report(session, principal, report_id)
        if report.status == "draft":
            raise InvalidShareLink("a draft cannot be shared; issue it first")
        link, token = issue_share_link(
            session,
            report_id=report.id,
            study_uid=report.study_uid,
            created_by=principal.name,
            max_hours=services.settings.delivery.share_link_hours,
            hours=body.hours,
            note=body.note,
        )
        _audit(session, principal, address, "share-create", link, f"expires={link.expires_at}")
        return _link_json(link, _share_url(request, services, token), token)


@router.get("/{report_id}/shares")
def list_share_links(
    report_id: int, services: ServicesDep, principal: SharerDep
) -> list[dict[str, Any]]:
    """The report's links, oldest first (without tokens)."""
    with services.sessions() as session:
        visible_report(session, principal, report_id)
        return [_link_json(link) for link in share_links_of(session, report_id)]


@router.delete("/{report_id}/share/{link_id}", status_code=204)
def delete_share_link(
    report_id: int, link_id: int, services: ServicesDep, principal: SharerDep, address: AddressDep
) -> Response:
    """Revoke a link: from now on it answers 404 like any unknown token."""
    with services.writer.begin() as session:
        visible_report(session, principal, report_id)
        link = revoke_share_link(session, report_id, link_id, principal.name)
        _audit(session, principal, address, "share-revoke", link)
    return Response(status_code=204)


@router.get("/{report_id}/accesses")
def list_report_accesses(
    report_id: int, services: ServicesDep, principal: PrincipalDep
) -> list[dict[str, Any]]:
    """Who opened this report (users and share links), when and from where, oldest first."""
    with services.sessions() as session:
        report = visible_report(session, principal, report_id)
        _check_owner(session, principal, report)
        return [
            {
                "at": _iso(event.at),
                "actor": event.actor,
                "actor_role": event.actor_role,
                "action": event.action,
                "resource": event.resource,
                "source_address": event.source_address,
                "outcome": event.outcome,
                "share_link_id": _link_id(event.resource, report_id),
            }
            for event in report_accesses(session, report_id)
        ]


@router.get("/{report_id}/notifications")
def list_report_notifications(
    report_id: int, services: ServicesDep, principal: SharerDep
) -> list[dict[str, Any]]:
    """Delivery and acknowledgement status of the report's notifications."""
    with services.sessions() as session:
        visible_report(session, principal, report_id)
        return [notification_json(row) for row in notifications_of_report(session, report_id)]


def _check_owner(session: Session, principal: Principal, report: Report) -> None:
    """Admins, the signer, or (unsigned) the author see a report's access log."""
    if principal.role == Role.ADMIN and not principal.is_site_token:
        return
    me = user_id_of(session, principal.name)
    owner = report.signed_by_user_id or report.author_user_id
    if principal.role != Role.RADIOLOGIST or me is None or me != owner:
        raise PermissionDenied("only the signing radiologist or an admin sees who opened it")


def _link_id(resource: str, report_id: int) -> int | None:
    prefix = f"/api/reports/{report_id}/share/"
    tail = resource.removeprefix(prefix)
    return int(tail) if resource.startswith(prefix) and tail.isdigit() else None


def _audit(
    session: Session,
    principal: Principal,
    address: str,
    action: str,
    link: ShareLink,
    detail: str = "",
) -> None:
    record_access(
        session,
        actor=principal.name,
        actor_role=principal.role,
        action=action,
        resource=share_resource(link.report_id, link.id),
        source_address=address,
        study_uids=[link.study_uid],
        detail=detail,
    )


# --- the public side -------------------------------------------------------------------------


def _limiter(request: Request, services: Services) -> FailureLimiter:
    limiter: FailureLimiter | None = getattr(request.app.state, "share_limiter", None)
    if limiter is None:
        limiter = FailureLimiter(services.settings.delivery.share_failures_per_minute)
        request.app.state.share_limiter = limiter
    return limiter


def _open_link(services: Services, token: str, address: str, output: str) -> int:
    """The report id behind a live token, the use audited; :class:`ShareLinkNotFound` else."""
    with services.writer.begin() as session:
        link = resolve_share_link(session, token)
        report = session.get(Report, link.report_id)
        if report is None or report.status == "draft":
            raise ShareLinkNotFound("no such share link")
        record_access(
            session,
            actor=f"share-link:{link.id}",
            actor_role="share-link",
            action=f"share-open-{output}",
            resource=share_resource(link.report_id, link.id),
            source_address=address,
            study_uids=[link.study_uid],
            detail=f"share_link={link.id} created_by={link.created_by}",
        )
        return link.report_id


def _audit_failure(services: Services, address: str) -> None:
    with services.writer.begin() as session:
        record_access(
            session,
            actor="share-link",
            actor_role="share-link",
            action="share-denied",
            resource="/share",
            source_address=address,
            outcome="failure",
        )


def _shared(
    request: Request, services: Services, token: str, address: str, output: str
) -> Response:
    """The shared report rendered as ``output`` (html or pdf), or the uniform 404 / 429."""
    limiter = _limiter(request, services)
    wait = limiter.retry_after(address)
    if wait:
        return JSONResponse(
            {"detail": "too many failed share-link lookups; retry later"},
            status_code=429,
            headers={"Retry-After": str(wait), **SHARE_HEADERS},
        )
    try:
        report_id = _open_link(services, token, address, output)
    except ShareLinkNotFound:
        limiter.failed(address)
        _audit_failure(services, address)
        return JSONResponse({"detail": "not found"}, status_code=404, headers=SHARE_HEADERS)
    with services.sessions() as session:
        report = session.get(Report, report_id)
        assert report is not None
        bundle = _issued_bundle(services, session, report)
    if output == "pdf":
        return Response(
            render_report_pdf(bundle), media_type="application/pdf", headers=SHARE_HEADERS
        )
    return HTMLResponse(render_report_html(bundle), headers=SHARE_HEADERS)


def _issued_bundle(services: Services, session: Session, report: Report) -> ReportBundle:
    """The report as it stands now: the latest issued version of the shared report's chain
    (so that a later addendum is never hidden from the doctor), with the issued versions
    before it (never a draft) and its key images."""
    chain = [row for row in report_chain(session, report) if row.status != "draft"]
    current = chain[-1] if chain else report
    version = next(v for v in chain_versions(session, chain) if v.id == current.id)
    images = render_key_images(
        session, services.objects, current.study_uid, version.content.key_images
    )
    institution = services.settings.reports.institution_name
    return load_bundle(session, current, institution, images, chain=chain)


@public_router.get("/share/{token}.pdf", response_class=Response)
def open_shared_report_pdf(
    token: str, request: Request, services: ServicesDep, address: AddressDep
) -> Response:
    """The shared report as PDF (no login: the token is the credential)."""
    return _shared(request, services, token, address, "pdf")


@public_router.get("/share/{token}", response_class=HTMLResponse)
def open_shared_report(
    token: str, request: Request, services: ServicesDep, address: AddressDep
) -> Response:
    """The shared report as a self-contained HTML page, key images embedded."""
    return _shared(request, services, token, address, "html")
