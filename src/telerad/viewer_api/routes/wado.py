"""WADO-RS: Retrieve studies, series, instances, metadata, frames and bulk data (PS3.18 §10.4).

=========================================================== ==================================
``GET /studies/{s}[/series/{se}[/instances/{i}]]``            multipart/related;
                                                              type="application/dicom"
``GET …/metadata``                                            application/dicom+json
``GET /studies/{s}/series/{se}/instances/{i}/frames/{n,…}``   multipart/related;
                                                              type="application/octet-stream"
                                                              or the stored compressed type
``GET /studies/{s}/series/{se}/instances/{i}/bulk/{tag…}``    multipart/related;
                                                              type="application/octet-stream"
=========================================================== ==================================

Representations are chosen by :mod:`telerad.viewer_api.negotiation` (PS3.18 §8.7: Accept header,
or the ``accept`` query parameter which then replaces it). A resource outside the caller's scope
is a 404 identical to a missing one. Every retrieval is audited with its study.

Statuses: 400 malformed frame list or bulk data path (or a hostile UID); 404 unknown or hidden
resource, frame number beyond the instance, instance without pixel data; 406 no acceptable
representation; 422 a stored frame whose bitstream cannot be decoded (the detail names it).
Instances, frames and bulk data carry a strong ``ETag`` derived from the stored object's SHA-256
and the representation (``If-None-Match`` gives 304), ``Cache-Control: private`` (stored
instances never change: a different object under the same SOP Instance UID is refused at
ingest) and ``Cross-Origin-Resource-Policy: cross-origin`` so that cross-origin isolated viewers
(OHIF with COEP) may load them.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from telerad.storage import (
    BASE_URI_MARKER,
    StoredInstance,
    find_instances,
    find_metadata,
)
from telerad.storage import (
    NotFound as ResourceNotFound,
)
from telerad.viewer_api.deps import AddressDep, BaseUrlDep, PrincipalDep, ScopeDep, ServicesDep
from telerad.viewer_api.negotiation import (
    OCTET_STREAM,
    NotAcceptable,
    plan_frames,
    plan_instances,
    wants_json,
)
from telerad.viewer_api.retrieval import (
    PIXEL_DATA,
    bulk_value,
    frame_count,
    frames_payload,
    instance_part,
    instance_stream,
    multipart,
    new_boundary,
    parse_bulk_path,
    parse_frame_list,
)

router = APIRouter(tags=["WADO-RS"])
DICOM_JSON = "application/dicom+json"
#: Stored objects are immutable; a day in the browser's own cache is safe.
CACHE_CONTROL = "private, max-age=86400"
#: A UID path segment; storage checks it (PS3.5 §9.1) and answers a malformed one like an
#: unknown one (404), so a hostile value learns nothing.
UidPath = str


class Caller:
    """Who asks, from where, within what scope (the route's shared dependencies)."""

    def __init__(
        self, services: ServicesDep, principal: PrincipalDep, scope: ScopeDep, address: AddressDep
    ) -> None:
        self.services, self.principal, self.scope, self.address = (
            services, principal, scope, address
        )  # fmt: skip

    async def instances(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[StoredInstance]:
        """The visible instances of the resource (404 otherwise)."""
        return await run_in_threadpool(self.find, study, series, instance)

    def find(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[StoredInstance]:
        """:meth:`instances`, blocking."""
        with self.services.reader() as connection:
            return find_instances(connection, self.scope, study, series, instance)

    async def audit(self, action: str, request: Request, study: str, detail: str = "") -> None:
        """:meth:`record` from the event loop."""
        self.record(action, request, study, detail)

    def record(self, action: str, request: Request, study: str, detail: str = "") -> None:
        """Append the access to the audit log (through the app's batched
        :class:`~telerad.storage.auditing.AuditWriter`: no commit on the request's path)."""
        self.services.audit.record(
            actor=self.principal.name,
            actor_role=self.principal.role,
            action=action,
            resource=request.url.path[:1000],
            source_address=self.address,
            study_uids=[study],
            detail=detail[:2000],
        )


async def get_caller(
    services: ServicesDep, principal: PrincipalDep, scope: ScopeDep, address: AddressDep
) -> Caller:
    """The route's :class:`Caller` (a coroutine: a class dependency would cost a thread hop)."""
    return Caller(services, principal, scope, address)


CallerDep = Annotated[Caller, Depends(get_caller)]


def _accept(request: Request) -> str | None:
    """The ``accept`` query parameter replaces the header (PS3.18 §8.3.3.1)."""
    return request.query_params.get("accept") or request.headers.get("accept")


# --- instances -------------------------------------------------------------------------------


@router.get("/studies/{study}")
async def retrieve_study(study: UidPath, request: Request, caller: CallerDep) -> Response:
    """All instances of a study."""
    return await _retrieve(request, caller, "wado-study", study)


@router.get("/studies/{study}/series/{series}")
async def retrieve_series(
    study: UidPath, series: UidPath, request: Request, caller: CallerDep
) -> Response:
    """All instances of a series."""
    return await _retrieve(request, caller, "wado-series", study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}")
async def retrieve_instance(
    study: UidPath, series: UidPath, instance: UidPath, request: Request, caller: CallerDep
) -> Response:
    """One instance (multipart, or single part ``application/dicom``)."""
    return await _retrieve(request, caller, "wado-instance", study, series, instance)


async def _retrieve(
    request: Request, caller: Caller, action: str, study: str, series: str | None = None,
    instance: str | None = None,
) -> Response:  # fmt: skip
    found = await caller.instances(study, series, instance)
    stored = {i.transfer_syntax_uid for i in found}
    plan = plan_instances(_accept(request), stored, single=instance is not None)
    objects = caller.services.objects
    etag = None
    if instance is not None:
        etag = _etag(found[0].sha256, plan.target(found[0].transfer_syntax_uid), plan.multipart)
        if _not_modified(request, etag):
            await caller.audit(action, request, study, "not modified")
            return _cached(Response(status_code=304), etag)
    first = await run_in_threadpool(instance_part, objects, found[0], plan, True)
    await caller.audit(action, request, study, f"{len(found)} instances")
    if not plan.multipart:
        single = StreamingResponse(first.body(), media_type=first.content_type)
        return _cached(single, etag)
    boundary = new_boundary()
    body = instance_stream(objects, found, plan, first, boundary)
    media_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = StreamingResponse(body, media_type=media_type)
    return _cached(response, etag) if etag else _cross_origin(response)


# --- metadata --------------------------------------------------------------------------------


@router.get("/studies/{study}/metadata")
async def retrieve_study_metadata(
    study: UidPath, request: Request, caller: CallerDep, base: BaseUrlDep
) -> Response:
    """DICOM JSON of every instance of a study."""
    return await _metadata(request, caller, base, study)


@router.get("/studies/{study}/series/{series}/metadata")
async def retrieve_series_metadata(
    study: UidPath, series: UidPath, request: Request, caller: CallerDep, base: BaseUrlDep
) -> Response:
    """DICOM JSON of every instance of a series."""
    return await _metadata(request, caller, base, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
async def retrieve_instance_metadata(
    study: UidPath, series: UidPath, instance: UidPath, request: Request, caller: CallerDep,
    base: BaseUrlDep,
) -> Response:  # fmt: skip
    """DICOM JSON of one instance (an array of one, PS3.18 §10.4.3)."""
    return await _metadata(request, caller, base, study, series, instance)


async def _metadata(
    request: Request, caller: Caller, base: str, study: str, series: str | None = None,
    instance: str | None = None,
) -> Response:  # fmt: skip
    """The stored texts joined into one JSON array: no per-instance parsing (PS3.18 §10.4.1.1.2)."""
    if not wants_json(_accept(request)):
        raise NotAcceptable("metadata is available as application/dicom+json")

    def read() -> str:
        with caller.services.reader() as connection:
            texts = find_metadata(connection, caller.scope, study, series, instance)
        return ("[" + ",".join(texts) + "]").replace(BASE_URI_MARKER, base)

    body = await run_in_threadpool(read)
    await caller.audit("wado-metadata", request, study)
    return Response(body, media_type=DICOM_JSON, headers={"Vary": "Accept"})


# --- frames and bulk data --------------------------------------------------------------------


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
async def retrieve_frames(
    study: UidPath, series: UidPath, instance: UidPath, frames: str, request: Request,
    caller: CallerDep,
) -> Response:  # fmt: skip
    """Frames of an instance, 1-based, in the order listed (PS3.18 §10.4.1.1.5)."""
    return await run_in_threadpool(frames_answer, request, caller, study, series, instance, frames)


def frames_answer(
    request: Request, caller: Caller, study: str, series: str, instance: str, frames: str
) -> Response:
    """The frames route's work, blocking (the route runs it in the thread pool, the
    :mod:`hot path <telerad.viewer_api.hotpath>` in its own single hop)."""
    numbers = parse_frame_list(frames)
    [found] = caller.find(study, series, instance)
    return _frames_answer(request, caller, found, numbers, "wado-frames", f"frames {frames[:200]}")


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulk/{path:path}")
async def retrieve_bulk_data(
    study: UidPath, series: UidPath, instance: UidPath, path: str, request: Request,
    caller: CallerDep,
) -> Response:  # fmt: skip
    """The value of a BulkDataURI of the instance's metadata (PS3.18 §10.4.1.1.3); Pixel
    Data gives all frames, one part each."""
    segments = parse_bulk_path(path)
    [found] = await caller.instances(study, series, instance)
    normal = "/".join(str(s) for s in segments)
    if segments != [PIXEL_DATA] and f'/bulk/{normal}"' not in found.metadata_json:
        # Only what the metadata points at (Pixel Data: also for instances stored before
        # BulkDataURIs were addressed by path).
        raise ResourceNotFound("no such bulk data")
    if segments == [PIXEL_DATA]:
        numbers = list(range(1, frame_count(found) + 1))
        return await _frames(request, caller, found, numbers, "wado-bulk", path)
    plan = plan_frames(_accept(request), "1.2.840.10008.1.2.1", 1)
    etag = _etag(found.sha256, path, plan.multipart)
    if _not_modified(request, etag):
        return _cached(Response(status_code=304), etag)
    value = await run_in_threadpool(bulk_value, caller.services.objects, found, segments)
    await caller.audit("wado-bulk", request, study_of(found), path)
    return _payload([value], OCTET_STREAM, plan.multipart, etag)


async def _frames(
    request: Request, caller: Caller, found: StoredInstance, numbers: list[int], action: str,
    detail: str,
) -> Response:  # fmt: skip
    return await run_in_threadpool(_frames_answer, request, caller, found, numbers, action, detail)


def _frames_answer(
    request: Request, caller: Caller, found: StoredInstance, numbers: list[int], action: str,
    detail: str,
) -> Response:  # fmt: skip
    count = frame_count(found)
    plan = plan_frames(_accept(request), found.transfer_syntax_uid, len(numbers))
    etag = _etag(found.sha256, f"{plan.content_type}|{','.join(map(str, numbers))}", plan.multipart)
    if _not_modified(request, etag):
        return _cached(Response(status_code=304), etag)
    caller.record(action, request, study_of(found), f"{detail} of {count}")
    parts, content_type = frames_payload(caller.services.objects, found, numbers, plan)
    return _payload(parts, content_type, plan.multipart, etag)


def study_of(instance: StoredInstance) -> str:
    """The study UID to audit an instance-level access under."""
    return instance.study_uid


def _payload(parts: list[bytes], content_type: str, is_multipart: bool, etag: str) -> Response:
    if not is_multipart:
        return _cached(Response(parts[0], media_type=content_type), etag)
    boundary = new_boundary()
    inner = content_type.split(";", 1)[0]
    media_type = f'multipart/related; type="{inner}"; boundary={boundary}'
    return _cached(Response(multipart(boundary, content_type, parts), media_type=media_type), etag)


# --- caching ---------------------------------------------------------------------------------


def _etag(sha256: str, representation: str, is_multipart: bool) -> str:
    """A strong validator: the stored object's hash and the representation chosen."""
    digest = hashlib.sha256(f"{sha256}|{representation}|{is_multipart}".encode()).hexdigest()
    return f'"{digest[:40]}"'


def _not_modified(request: Request, etag: str) -> bool:
    """RFC 9110 §13.1.2 If-None-Match (weak comparison)."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in tags or etag in tags


def _cached(response: Response, etag: str | None) -> Response:
    if etag:
        response.headers["ETag"] = etag
        response.headers["Cache-Control"] = CACHE_CONTROL
    response.headers["Vary"] = "Accept"
    return _cross_origin(response)


def _cross_origin(response: Response) -> Response:
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response
