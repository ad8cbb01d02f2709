"""STOW-RS: Store Instances (PS3.18 §10.5).

``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}`` take a multipart/related
body of ``application/dicom`` parts, optionally with a ``Content-Encoding`` of ``gzip`` or
``deflate`` (PS3.18 §8.4.2, Table 8.4.2-1; RFC 9110 §8.4), decoded as a stream.
Each part goes through the single ingest path as soon as it has arrived. The response
(PS3.18 §10.5.3, Table 10.5.3-1) is:

===== ================================================================================
200   every instance stored (or already stored with the same content)
202   some stored; the others are in the Failed SOP Sequence with their reasons
400   the body is malformed (multipart or content coding), or has no part at all;
      nothing from a bad part is kept
409   none stored: every part failed (reasons in the Failed SOP Sequence)
413   the *decoded* body exceeds ``http.max_request_bytes`` (RFC 9110 §15.5.14); the parts
      completed before the limit stay stored, the one being received is dropped
415   not multipart/related, a ``type`` other than application/dicom, or a content coding
      other than gzip, deflate and identity (RFC 9110 §15.5.16, with ``Accept-Encoding``)
503   the catalog or the object store is unavailable
===== ================================================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from telerad.storage import (
    IngestError,
    IngestResult,
    IngestSource,
    InstanceConflict,
    InvalidInstance,
    Site,
    StorageUnavailable,
    StudyMismatch,
    dicom_json_element,
    record_access,
    validate_uid,
)
from telerad.viewer_api.deps import AddressDep, BaseUrlDep, ServicesDep, StorerDep
from telerad.viewer_api.encoding import (
    ContentTooLarge,
    CorruptContent,
    content_codings,
    decoded_body,
)
from telerad.viewer_api.multipart import MultipartError, Part, iter_parts, media_type
from telerad.viewer_api.problems import BadRequest, UnsupportedMediaType
from telerad.viewer_api.routes.worklist import take_in_completed
from telerad.viewer_api.services import Services
from telerad.worklist import Principal

logger = logging.getLogger(__name__)
router = APIRouter(tags=["STOW-RS"])

DICOM_JSON = "application/dicom+json"
#: Failure Reason (0008,1197) per exception, PS3.18 Table 10.5.3-2 and PS3.4 Annex B.2.3.
FAILURE_REASONS: dict[type[Exception], int] = {
    InvalidInstance: 0xA900,  # data set does not match SOP class / cannot be understood
    StudyMismatch: 0xA900,
    InstanceConflict: 0x0111,  # duplicate SOP instance with different content
    StorageUnavailable: 0xA700,  # out of resources
}
PROCESSING_FAILURE = 0x0110
NOT_DICOM_PART = 0xC000  # cannot understand


@router.post("/studies")
async def store_instances(
    request: Request,
    services: ServicesDep,
    principal: StorerDep,
    base: BaseUrlDep,
    address: AddressDep,
) -> JSONResponse:
    """Store the instances of the body in whichever studies they belong to."""
    return await _store(request, services, principal, base, address, None)


@router.post("/studies/{study}")
async def store_study_instances(
    study: str,
    request: Request,
    services: ServicesDep,
    principal: StorerDep,
    base: BaseUrlDep,
    address: AddressDep,
) -> JSONResponse:
    """Store instances that must all belong to ``study`` (others fail with 0xA900)."""
    validate_uid(study, "Study Instance UID in the URL")
    return await _store(request, services, principal, base, address, study)


async def _store(
    request: Request,
    services: Services,
    principal: Principal,
    base: str,
    address: str,
    study_uid: str | None,
) -> JSONResponse:
    boundary = _boundary(request.headers.get("content-type", ""))
    codings = content_codings(request.headers.get("content-encoding"))
    source = await run_in_threadpool(_source_for, services, principal)
    stored: list[IngestResult] = []
    failed: list[Failure] = []
    body = decoded_body(request.stream(), codings, services.settings.http.max_request_bytes)
    try:
        async for part in iter_parts(body, boundary):
            await _store_part(part, services, source, study_uid, stored, failed)
    except (MultipartError, CorruptContent) as exc:
        if not stored and not failed:
            raise BadRequest(str(exc)) from exc
        failed.append(Failure("", "", PROCESSING_FAILURE, str(exc)))
    except ContentTooLarge as exc:
        failed.append(Failure("", "", PROCESSING_FAILURE, str(exc)))
        await run_in_threadpool(_audit, services, principal, address, stored, failed)
        raise ContentTooLarge(f"{exc}; {len(stored)} instance(s) stored before it") from exc
    except ClientDisconnect:
        # the sender went away mid-body (a gateway killed or cut off): what arrived whole is
        # stored and audited; nobody is left to answer
        failed.append(Failure("", "", PROCESSING_FAILURE, "client disconnected"))
        logger.warning("STOW body cut off by the client after %d stored", len(stored))
        await run_in_threadpool(_audit, services, principal, address, stored, failed)
        return JSONResponse({}, status_code=400)
    if not stored and not failed:
        raise BadRequest("the request has no body part")
    await run_in_threadpool(_audit, services, principal, address, stored, failed)
    return _response(stored, failed, base, study_uid)


async def _store_part(
    part: Part,
    services: Services,
    source: IngestSource,
    study_uid: str | None,
    stored: list[IngestResult],
    failed: list[Failure],
) -> None:
    if part.content_type not in ("application/dicom", "application/octet-stream"):
        failed.append(Failure("", "", NOT_DICOM_PART, f"part of type {part.content_type!r}"))
        return
    try:
        result = await run_in_threadpool(
            services.archive.ingest_instance, bytes(part.data), source, study_uid=study_uid
        )
    except (IngestError, StorageUnavailable) as exc:
        code = FAILURE_REASONS.get(type(exc), PROCESSING_FAILURE)
        sop_class = getattr(exc, "sop_class_uid", "")
        sop_instance = getattr(exc, "sop_instance_uid", "")
        failed.append(Failure(sop_class, sop_instance, code, str(exc)))
        logger.info("STOW failure %s for %s: %s", hex(code), sop_instance or "-", exc)
    else:
        stored.append(result)
        if result.completed_study:
            logger.info("study %s complete", result.study_uid)
            await run_in_threadpool(take_in_completed, services, result.study_uid)


def _boundary(content_type: str) -> str:
    kind, params = media_type(content_type)
    if kind != "multipart/related":
        raise UnsupportedMediaType("STOW-RS needs Content-Type multipart/related")
    if params.get("type", "application/dicom").lower() != "application/dicom":
        raise UnsupportedMediaType(
            f"multipart/related type {params['type']!r} is not supported; use application/dicom"
        )
    if not params.get("boundary"):
        raise BadRequest("multipart/related without a boundary")
    return params["boundary"]


def _source_for(services: Services, principal: Principal) -> IngestSource:
    """Instances belong to the caller's site; an admin's uploads belong to no site."""
    if principal.site_id is None:
        return IngestSource(site_id=None, issuer="telerad", label=f"stow:{principal.name}")
    with services.sessions() as session:
        site = session.get(Site, principal.site_id)
        issuer = site.issuer_of_patient_id if site else "telerad"
    return IngestSource(site_id=principal.site_id, issuer=issuer, label=f"stow:{principal.name}")


@dataclass(frozen=True, slots=True)
class Failure:
    """One Failed SOP Sequence item and a human-readable cause (sent as a Warning header)."""

    sop_class_uid: str
    sop_instance_uid: str
    reason: int
    comment: str

    def to_json(self) -> dict[str, Any]:
        return {
            "00081150": dicom_json_element("UI", self.sop_class_uid),
            "00081155": dicom_json_element("UI", self.sop_instance_uid),
            "00081197": dicom_json_element("US", self.reason),
        }


def _response(
    stored: list[IngestResult], failed: list[Failure], base: str, study_uid: str | None
) -> JSONResponse:
    body: dict[str, Any] = {}
    studies = {r.study_uid for r in stored} or ({study_uid} if study_uid else set())
    if len(studies) == 1:
        body["00081190"] = dicom_json_element("UR", f"{base}/studies/{next(iter(studies))}")
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [f.to_json() for f in failed]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_reference(r, base) for r in stored]}
    status = 200 if not failed else (202 if stored else _all_failed_status(failed))
    headers = {"Warning": ", ".join(_warning(f) for f in failed[:20])} if failed else None
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON, headers=headers)


def _warning(failure: Failure) -> str:
    """An RFC 7234 warning value; the text is ASCII-only and free of quotes."""
    text = failure.comment.encode("ascii", "replace").decode().replace('"', "'")[:200]
    return f'299 telerad "{failure.reason:#06x} {failure.sop_instance_uid or "-"}: {text}"'


def _all_failed_status(failed: list[Failure]) -> int:
    return 503 if {f.reason for f in failed} == {0xA700} else 409


def _reference(result: IngestResult, base: str) -> dict[str, Any]:
    series = f"{base}/studies/{result.study_uid}/series/{result.series_uid}"
    url = f"{series}/instances/{result.sop_instance_uid}"
    return {
        "00081150": dicom_json_element("UI", result.sop_class_uid),
        "00081155": dicom_json_element("UI", result.sop_instance_uid),
        "00081190": dicom_json_element("UR", url),
    }


def _audit(
    services: Services,
    principal: Principal,
    address: str,
    stored: list[IngestResult],
    failed: list[Failure],
) -> None:
    with services.writer.begin() as session:
        record_access(
            session,
            actor=principal.name,
            actor_role=principal.role,
            action="stow",
            resource="/dicomweb/studies",
            source_address=address,
            study_uids=[r.study_uid for r in stored],
            outcome="success" if not failed else ("partial" if stored else "failure"),
            detail=f"stored={len(stored)} failed={len(failed)}",
        )
