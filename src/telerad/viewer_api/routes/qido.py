"""QIDO-RS: Search for studies, series and instances (PS3.18 §10.6).

Query keys are attribute keywords or tags (``PatientName`` or ``00100010``) with the matching
of PS3.4 §C.2.2.2; ``limit``, ``offset``, ``includefield`` (repeated or comma-separated, or
``all``) and ``fuzzymatching`` per PS3.18 §8.3.4. Starlette percent-decodes the values.
Results are ``application/dicom+json``; studies outside the caller's scope are never returned,
so a search for one looks the same as a search for a study that does not exist. Matching keys
that the catalog cannot match on are ignored with a ``Warning`` header (PS3.18 §8.3.4.1).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from telerad.storage import (
    BASE_URI_MARKER,
    Level,
    Scope,
    parse_query,
    search,
    validate_uid,
)
from telerad.viewer_api.deps import AddressDep, BaseUrlDep, PrincipalDep, ScopeDep, ServicesDep
from telerad.viewer_api.services import Services
from telerad.worklist import Principal

router = APIRouter(tags=["QIDO-RS"])
DICOM_JSON = "application/dicom+json"


@router.get("/studies")
async def search_for_studies(
    request: Request, services: ServicesDep, principal: PrincipalDep, scope: ScopeDep,
    base: BaseUrlDep, address: AddressDep,
) -> Response:  # fmt: skip
    """Search all studies the caller may see."""
    return await _search(request, services, principal, scope, base, address, Level.STUDY)


@router.get("/series")
async def search_for_all_series(
    request: Request, services: ServicesDep, principal: PrincipalDep, scope: ScopeDep,
    base: BaseUrlDep, address: AddressDep,
) -> Response:  # fmt: skip
    """Search series across studies."""
    return await _search(request, services, principal, scope, base, address, Level.SERIES)


@router.get("/instances")
async def search_for_all_instances(
    request: Request, services: ServicesDep, principal: PrincipalDep, scope: ScopeDep,
    base: BaseUrlDep, address: AddressDep,
) -> Response:  # fmt: skip
    """Search instances across studies."""
    return await _search(request, services, principal, scope, base, address, Level.INSTANCE)


@router.get("/studies/{study}/series")
async def search_for_series(
    study: str, request: Request, services: ServicesDep, principal: PrincipalDep,
    scope: ScopeDep, base: BaseUrlDep, address: AddressDep,
) -> Response:  # fmt: skip
    """Search the series of one study."""
    return await _search(request, services, principal, scope, base, address, Level.SERIES, study)


@router.get("/studies/{study}/instances")
async def search_for_study_instances(
    study: str, request: Request, services: ServicesDep, principal: PrincipalDep,
    scope: ScopeDep, base: BaseUrlDep, address: AddressDep,
) -> Response:  # fmt: skip
    """Search the instances of one study."""
    return await _search(request, services, principal, scope, base, address, Level.INSTANCE, study)


@router.get("/studies/{study}/series/{series}/instances")
async def search_for_instances(
    study: str, series: str, request: Request, services: ServicesDep, principal: PrincipalDep,
    scope: ScopeDep, base: BaseUrlDep, address: AddressDep,
) -> Response:  # fmt: skip
    """Search the instances of one series."""
    return await _search(
        request, services, principal, scope, base, address, Level.INSTANCE, study, series
    )


async def _search(
    request: Request,
    services: Services,
    principal: Principal,
    scope: Scope,
    base: str,
    address: str,
    level: Level,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Response:
    for uid in (study_uid, series_uid):
        if uid is not None:
            validate_uid(uid, "UID in the URL")
    query = parse_query(list(request.query_params.multi_items()))

    def run() -> tuple[str, list[str]]:
        with services.sessions() as session:
            result = search(
                session, level, query, scope, study_uid=study_uid, series_uid=series_uid
            )
        services.audit.record(  # batched, committed off the request's path
            actor=principal.name,
            actor_role=principal.role,
            action=f"qido-{level.name.lower()}",
            resource=request.url.path,
            source_address=address,
            study_uids=result.study_uids,
            detail=str(request.url.query)[:2000],
        )
        text = json.dumps(result.matches, separators=(",", ":"), ensure_ascii=False)
        return text.replace(BASE_URI_MARKER, base), result.ignored

    body, ignored = await run_in_threadpool(run)
    headers = (
        {"Warning": f'299 telerad "ignored matching keys: {",".join(ignored)}"'}
        if ignored
        else None
    )
    return Response(body, media_type=DICOM_JSON, headers=headers)
