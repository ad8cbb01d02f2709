"""Structured reports over HTTP (prefix ``/api/reports``).

============================================ ================================================
``GET    /templates``                         the report templates (sections, coded fields)
``POST   /``                                  start the report of a study's task (201, draft)
``GET    /?study_uid=…``                      the study's report versions the caller may read
``GET    /{id}``                              one version: JSON, HTML, PDF or FHIR by Accept
``GET    /{id}.html`` ``/{id}.pdf`` ``/{id}/fhir``  the same outputs by path
``PUT    /{id}``                              autosave the content (``If-Match`` required)
``POST   /{id}/preliminary``                  issue as preliminary (SR PARTIAL/UNVERIFIED)
``POST   /{id}/sign``                         sign final (SR COMPLETE/VERIFIED; task COMPLETED)
``POST   /{id}/addendum``                     start an addendum to a final version (201)
``GET    /{id}/versions``                     the version chain and whether its hashes verify
============================================ ================================================

Every response carries the version's ``ETag`` (``"<id>.<version>"``); ``PUT`` needs it in
``If-Match`` (428 without, 412 when stale) and ``preliminary``/``sign`` honour it when given.
Every read of a report is audited (``report.read``, detail ``format=…``), every change too
(``report.create``, ``report.save``, ``report.preliminary``, ``report.sign``,
``report.addendum``). Errors: 400 bad content, 403 not the writer, 404 unknown or invisible
(alike), 409 invalid transition or existing report, 412 stale ETag, 413 body too large, 428
``If-Match`` missing.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.orm import Session

from telerad.storage import Report, record_access
from telerad.viewer_api.deps import AddressDep, PrincipalDep, ServicesDep
from telerad.viewer_api.encoding import ContentTooLarge
from telerad.viewer_api.problems import BadRequest, HttpProblem
from telerad.viewer_api.report_images import render_key_images
from telerad.viewer_api.services import Services
from telerad.worklist import (
    TEMPLATES,
    Principal,
    ReportBundle,
    ReportVersion,
    ReportVersionMismatch,
    add_addendum,
    build_diagnostic_report,
    chain_versions,
    create_report,
    load_bundle,
    publish_documents,
    render_report_html,
    render_report_pdf,
    report_chain,
    save_report,
    sign_report,
    study_reports,
    submit_preliminary,
    template_summary,
    verify_report_chain,
    visible_chain,
    visible_report,
)

logger = logging.getLogger(__name__)
router = APIRouter(tags=["reports"])
#: Largest report request body (JSON); the texts themselves are limited by the templates.
MAX_BODY_BYTES = 512 * 1024
FHIR_JSON = "application/fhir+json"


class PreconditionRequired(HttpProblem):
    """428: a write needs ``If-Match`` with the version's ETag (RFC 6585 §3)."""

    status = 428


async def json_body(request: Request) -> Any:
    """The request's JSON body, at most :data:`MAX_BODY_BYTES`; 413 / 400 otherwise."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ContentTooLarge(f"a report body is at most {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ContentTooLarge(f"a report body is at most {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None


BodyDep = Annotated[Any, Depends(json_body)]
IfMatch = Annotated[str | None, Header(alias="If-Match")]


def etag(report: Report) -> str:
    """The ETag of a report version."""
    return f'"{report.id}.{report.version}"'


def expected_version(report_id: int, header: str | None) -> int | None:
    """The version an ``If-Match`` header names (None for ``*`` or no header)."""
    if header is None or header.strip() == "*":
        return None
    tag = header.strip().removeprefix("W/").strip('"')
    prefix, _, version = tag.partition(".")
    if prefix != str(report_id) or not version.isdigit():
        raise ReportVersionMismatch(
            f"If-Match {header[:80]!r} is not an ETag of report {report_id}"
        )
    return int(version)


def version_json(version: ReportVersion) -> dict[str, Any]:
    """A report version as the JSON API returns it."""
    signature = version.signature
    return {
        "id": version.id,
        "study_uid": version.study_uid,
        "sequence": version.sequence,
        "kind": version.kind.value,
        "status": version.status.value,
        "fhir_status": version.fhir_status,
        "template": version.template.key,
        "version": version.version,
        "content": version.content.as_dict(),
        "critical": version.critical,
        "critical_findings": version.critical_findings,
        "author": version.author_username,
        "created_at": version.created_at.isoformat(),
        "updated_at": version.updated_at.isoformat(),
        "preliminary_at": version.preliminary_at.isoformat() if version.preliminary_at else None,
        "predecessor_id": version.predecessor_id,
        "signature": None
        if signature is None
        else {
            "signer": signature.signer,
            "username": signature.signer_username,
            "signed_at": signature.signed_at.isoformat(),
            "content_sha256": signature.content_sha256,
            "record_sha256": signature.record_sha256,
        },
        "documents": [
            {"sop_instance_uid": d.sop_instance_uid, "series_uid": d.series_uid,
             "status": d.status, "stored": d.stored}
            for d in version.documents
        ],
    }  # fmt: skip


def _report_response(session: Session, report: Report, status: int = 200) -> JSONResponse:
    chain = report_chain(session, report)
    version = next(v for v in chain_versions(session, chain) if v.id == report.id)
    body = version_json(version)
    body["task_id"] = report.task_id
    headers = {"ETag": etag(report), "Location": f"/api/reports/{report.id}"}
    return JSONResponse(body, status_code=status, headers=headers)


def _audit(
    session: Session, principal: Principal, action: str, report: Report, address: str, detail: str
) -> None:
    record_access(
        session,
        actor=principal.name,
        actor_role=principal.role,
        action=action,
        resource=f"/api/reports/{report.id}",
        source_address=address,
        study_uids=[report.study_uid],
        detail=f"report_id={report.id} {detail}".strip(),
    )


@router.get("/templates")
def list_templates(principal: PrincipalDep) -> list[dict[str, Any]]:
    """Every report template with its sections and coded fields (codes included)."""
    return [template_summary(t) for t in TEMPLATES.values()]


@router.post("", status_code=201)
def start_report(
    body: BodyDep, principal: PrincipalDep, services: ServicesDep, address: AddressDep
) -> JSONResponse:
    """Create the draft report of a study's task: ``{"study_uid", "template", "task_id"?,
    "content"?}``."""
    if not isinstance(body, dict) or not isinstance(body.get("study_uid"), str):
        raise BadRequest('the body must be {"study_uid": …, "template": …}')
    task_id = body.get("task_id")
    if task_id is not None and (isinstance(task_id, bool) or not isinstance(task_id, int)):
        raise BadRequest("task_id must be an integer")
    with services.writer.begin() as session:
        report = create_report(
            session, principal, body["study_uid"], str(body.get("template", "")),
            body.get("content"), task_id=task_id,
        )  # fmt: skip
        _audit(session, principal, "report.create", report, address, "")
        return _report_response(session, report, 201)


@router.get("")
def list_study_reports(
    principal: PrincipalDep, services: ServicesDep, study_uid: Annotated[str, Query(max_length=64)]
) -> list[dict[str, Any]]:
    """The report versions of a study the caller may read (an empty list for others')."""
    with services.sessions() as session:
        reports = study_reports(session, principal, study_uid)
        by_task: dict[int, list[Report]] = {}
        for report in reports:
            by_task.setdefault(report.task_id, []).append(report)
        return [version_json(v) for rows in by_task.values() for v in chain_versions(session, rows)]


def _bundle(
    services: Services, session: Session, principal: Principal, report: Report
) -> ReportBundle:
    chain = visible_chain(session, principal, report)
    version = next(v for v in chain_versions(session, chain) if v.id == report.id)
    images = render_key_images(
        session, services.objects, report.study_uid, version.content.key_images
    )
    return load_bundle(
        session, report, services.settings.reports.institution_name, images, chain=chain
    )


def _read(
    services: Services,
    principal: Principal,
    report_id: int,
    address: str,
    output: str,
    request: Request,
) -> Response:
    with services.writer.begin() as session:
        report = visible_report(session, principal, report_id)
        _audit(session, principal, "report.read", report, address, f"format={output}")
        if output == "json":
            return _report_response(session, report)
        bundle = _bundle(services, session, principal, report)
        headers = {"ETag": etag(report), "Cache-Control": "no-store"}
    if output == "html":
        return HTMLResponse(render_report_html(bundle), headers=headers)
    if output == "pdf":
        return Response(render_report_pdf(bundle), media_type="application/pdf", headers=headers)
    pdf_url = str(request.url_for("report_pdf", report_id=report_id))
    resource = build_diagnostic_report(
        bundle, pdf_url=pdf_url, sr_sop_instance_uid=_final_sr(bundle)
    )
    return Response(json.dumps(resource), media_type=FHIR_JSON, headers=headers)


def _final_sr(bundle: ReportBundle) -> str | None:
    documents = [d for d in bundle.version.documents if d.stored]
    return documents[-1].sop_instance_uid if documents else None


def _negotiated(accept: str | None) -> str:
    """The output an ``Accept`` header asks for (JSON when it names none of ours)."""
    for part in (accept or "").split(","):
        media = part.split(";")[0].strip().lower()
        if media == "text/html":
            return "html"
        if media == "application/pdf":
            return "pdf"
        if media == FHIR_JSON:
            return "fhir"
        if media in ("application/json", "*/*"):
            return "json"
    return "json"


@router.get("/{report_id}.html", name="report_html")
def report_html(
    report_id: int,
    principal: PrincipalDep,
    services: ServicesDep,
    address: AddressDep,
    request: Request,
) -> Response:
    """The version as an HTML page."""
    return _read(services, principal, report_id, address, "html", request)


@router.get("/{report_id}.pdf", name="report_pdf")
def report_pdf(
    report_id: int,
    principal: PrincipalDep,
    services: ServicesDep,
    address: AddressDep,
    request: Request,
) -> Response:
    """The version as PDF."""
    return _read(services, principal, report_id, address, "pdf", request)


@router.get("/{report_id}/fhir")
def report_fhir(
    report_id: int,
    principal: PrincipalDep,
    services: ServicesDep,
    address: AddressDep,
    request: Request,
) -> Response:
    """The version as a FHIR R4 DiagnosticReport."""
    return _read(services, principal, report_id, address, "fhir", request)


@router.get("/{report_id}/versions")
def report_versions(
    report_id: int, principal: PrincipalDep, services: ServicesDep, address: AddressDep
) -> dict[str, Any]:
    """The chain of the version (those the caller may read) and whether its hashes verify."""
    with services.writer.begin() as session:
        report = visible_report(session, principal, report_id)
        _audit(session, principal, "report.read", report, address, "format=versions")
        intact, problems = verify_report_chain(session, report)
        chain = visible_chain(session, principal, report)
        return {
            "versions": [version_json(v) for v in chain_versions(session, chain)],
            "chain_intact": intact,
            "problems": list(problems),
        }


@router.get("/{report_id}")
def get_report(
    report_id: int,
    principal: PrincipalDep,
    services: ServicesDep,
    address: AddressDep,
    request: Request,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """The version as JSON, or HTML / PDF / FHIR JSON as ``Accept`` asks."""
    return _read(services, principal, report_id, address, _negotiated(accept), request)


@router.put("/{report_id}")
def autosave(
    report_id: int,
    body: BodyDep,
    principal: PrincipalDep,
    services: ServicesDep,
    address: AddressDep,
    if_match: IfMatch = None,
) -> JSONResponse:
    """Replace the content of a draft (``If-Match: "<id>.<version>"`` required)."""
    if if_match is None:
        raise PreconditionRequired("If-Match with the report's ETag is required")
    version = expected_version(report_id, if_match)
    with services.writer.begin() as session:
        if version is None:
            version = visible_report(session, principal, report_id).version
        report = save_report(session, principal, report_id, body, version)
        _audit(session, principal, "report.save", report, address, f"version={report.version}")
        return _report_response(session, report)


@router.post("/{report_id}/preliminary")
def preliminary(
    report_id: int, principal: PrincipalDep, services: ServicesDep, address: AddressDep,
    if_match: IfMatch = None,
) -> JSONResponse:  # fmt: skip
    """Issue the version as preliminary and store its preliminary SR into the study."""
    with services.writer.begin() as session:
        report = submit_preliminary(
            session, principal, report_id, expected_version(report_id, if_match)
        )
        _audit(session, principal, "report.preliminary", report, address, "")
    return _published(services, report_id)


@router.post("/{report_id}/sign")
def sign(
    report_id: int, principal: PrincipalDep, services: ServicesDep, address: AddressDep,
    if_match: IfMatch = None,
) -> JSONResponse:  # fmt: skip
    """Sign the version final, complete the task, store the final SR into the study."""
    with services.writer.begin() as session:
        report = sign_report(session, principal, report_id, expected_version(report_id, if_match))
        _audit(
            session, principal, "report.sign", report, address, f"sha256={report.content_sha256}"
        )
    return _published(services, report_id)


@router.post("/{report_id}/addendum", status_code=201)
def addendum(
    report_id: int, principal: PrincipalDep, services: ServicesDep, address: AddressDep
) -> JSONResponse:
    """Start an addendum (a new draft version) to a final version."""
    with services.writer.begin() as session:
        report = add_addendum(session, principal, report_id)
        _audit(session, principal, "report.addendum", report, address, f"of={report_id}")
        return _report_response(session, report, 201)


def _published(services: Services, report_id: int) -> JSONResponse:
    """Store the pending SR documents (after the commit), then answer with the version."""
    institution = services.settings.reports.institution_name
    result = publish_documents(services.archive, report_id, institution)
    if result.failed:
        logger.warning("report %d: %d SR document(s) to retry", report_id, len(result.failed))
    with services.sessions() as session:
        report = session.get(Report, report_id)
        assert report is not None
        return _report_response(session, report)
