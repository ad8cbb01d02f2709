"""Study completeness over HTTP: the gateway's manifest and the study's status (DESIGN.md, step 3).

``PUT /api/studies/{study}/manifest`` (a site's gateway, a radiographer of the site, an admin)
takes the latest manifest of a study, ``application/json`` (gzip or deflate content coding
allowed, RFC 9110 §8.4)::

    {"instances": [{"sop_instance_uid": "1.2.3", "sha256": "<64 lowercase hex>"}, ...]}

and answers 200 with what the centre holds::

    {"study_uid": ..., "received": 3, "expected": 3, "complete": true,
     "missing": [], "mismatched": [], "manifest_at": "...Z", "completed_at": "...Z"}

``GET /api/studies/{study}/status`` gives the same without the lists, with ``missing_count``
and ``mismatched_count``, to whoever may see the study.

===== ================================================================================
400   malformed body, UID or hash, an instance listed twice, more than 100 000 entries
404   unknown study, or one the caller may not see (or, for a manifest, of another site)
413   body larger than :data:`MAX_MANIFEST_BYTES` once decoded
415   a body that is not application/json, or an unsupported content coding
===== ================================================================================
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, cast

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from telerad.storage import (
    MAX_MANIFEST_ENTRIES,
    InvalidManifest,
    StudyCompleteness,
    StudyNotFound,
    record_access,
    study_completeness,
    submit_manifest,
    validate_uid,
)
from telerad.viewer_api.deps import AddressDep, PrincipalDep, ScopeDep, ServicesDep, StorerDep
from telerad.viewer_api.encoding import content_codings, decoded_body
from telerad.viewer_api.multipart import media_type
from telerad.viewer_api.problems import BadRequest, UnsupportedMediaType
from telerad.viewer_api.routes.worklist import take_in_completed
from telerad.viewer_api.services import Services
from telerad.worklist import Principal

logger = logging.getLogger(__name__)
router = APIRouter(tags=["studies"])

#: Largest decoded manifest body: a full 100 000-entry manifest is about 14 MB of JSON.
MAX_MANIFEST_BYTES = 24 * 1024 * 1024


class ManifestInstance(BaseModel):
    """One instance the gateway holds: its SOP Instance UID and the SHA-256 of its file."""

    model_config = ConfigDict(extra="forbid")
    sop_instance_uid: str = Field(max_length=64)
    sha256: str = Field(max_length=64)


class Manifest(BaseModel):
    """Every instance of a study at the edge (replaces the study's previous manifest)."""

    model_config = ConfigDict(extra="forbid")
    instances: list[ManifestInstance] = Field(max_length=MAX_MANIFEST_ENTRIES)

    def entries(self) -> dict[str, str]:
        """SOP Instance UID → SHA-256; :class:`InvalidManifest` if a UID is listed twice."""
        entries = {i.sop_instance_uid: i.sha256 for i in self.instances}
        if len(entries) != len(self.instances):
            raise InvalidManifest("an instance is listed more than once")
        return entries


class StudyStatus(BaseModel):
    """How complete a study is at the centre."""

    study_uid: str
    received: int
    expected: int
    complete: bool
    missing_count: int
    mismatched_count: int
    manifest_at: datetime | None
    completed_at: datetime | None


class ManifestAnswer(BaseModel):
    """The centre's answer to a manifest: what it still lacks, by SOP Instance UID."""

    study_uid: str
    received: int
    expected: int
    complete: bool
    missing: list[str]
    mismatched: list[str]
    manifest_at: datetime | None
    completed_at: datetime | None


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` references inlined (they would not resolve in OpenAPI)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(item) for item in node] if isinstance(node, list) else node

    return cast(dict[str, Any], resolve(schema))


#: The request body for the OpenAPI document (the route reads the body itself, to cap its size).
_MANIFEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inlined(Manifest.model_json_schema())}},
    }
}


@router.put("/{study}/manifest", openapi_extra=_MANIFEST_BODY)
async def store_study_manifest(
    study: str,
    request: Request,
    services: ServicesDep,
    principal: StorerDep,
    address: AddressDep,
) -> ManifestAnswer:
    """Record the latest manifest of ``study`` and answer what is missing or mismatched."""
    validate_uid(study, "Study Instance UID in the URL")
    entries = (await _read_manifest(request)).entries()
    result = await run_in_threadpool(
        submit_manifest, services.engine, study, entries, principal.site_id
    )
    if result.became_complete:
        logger.info("study %s complete: %d instances", study, result.expected)
        await run_in_threadpool(take_in_completed, services, study)
    detail = f"expected={result.expected} received={result.received} complete={result.complete}"
    await run_in_threadpool(
        _audit, services, principal, address, "manifest", request, study, detail
    )
    return ManifestAnswer.model_validate(result, from_attributes=True)


@router.get("/{study}/status")
async def retrieve_study_status(
    study: str,
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    scope: ScopeDep,
    address: AddressDep,
) -> StudyStatus:
    """Completeness of ``study`` without the lists (404 if the caller may not see it)."""
    validate_uid(study, "Study Instance UID in the URL")

    def read() -> StudyCompleteness:
        with services.sessions() as session:
            result = study_completeness(session, study)
        if result is None or not scope.allows(result.site_id, study):
            raise StudyNotFound("no such study")
        return result

    result = await run_in_threadpool(read)
    await run_in_threadpool(_audit, services, principal, address, "study-status", request, study)
    return StudyStatus(
        study_uid=result.study_uid,
        received=result.received,
        expected=result.expected,
        complete=result.complete,
        missing_count=len(result.missing),
        mismatched_count=len(result.mismatched),
        manifest_at=result.manifest_at,
        completed_at=result.completed_at,
    )


async def _read_manifest(request: Request) -> Manifest:
    """The JSON body, decoded and size-limited before it is parsed."""
    if media_type(request.headers.get("content-type", ""))[0] != "application/json":
        raise UnsupportedMediaType("a manifest is application/json")
    codings = content_codings(request.headers.get("content-encoding"))
    body = decoded_body(request.stream(), codings, MAX_MANIFEST_BYTES)
    raw = b"".join([chunk async for chunk in body])
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "body"
        raise BadRequest(f"invalid manifest at {where}: {error['msg']}") from exc


def _audit(
    services: Services,
    principal: Principal,
    address: str,
    action: str,
    request: Request,
    study_uid: str,
    detail: str = "",
) -> None:
    with services.writer.begin() as session:
        record_access(
            session,
            actor=principal.name,
            actor_role=principal.role,
            action=action,
            resource=request.url.path,
            source_address=address,
            study_uids=[study_uid],
            detail=detail,
        )
