"""WADO-RS rendered resources and thumbnails (PS3.18 §10.4.1.1.3, §10.4.1.1.4; Supplement 203).

``GET …/rendered`` and ``GET …/thumbnail`` at study, series, instance and frame level. Query
parameters (PS3.18 §8.3.5.1): ``window=center,width[,function]`` (``linear``, ``linear-exact``,
``sigmoid``; or a telerad preset name: ``lung``, ``mediastinum``, ``bone``, ``brain``,
``abdomen``, ``liver`` — also accepted as ``preset=lung``), ``viewport=vw,vh[,sx,sy,sw,sh]``,
``quality=1..100`` (JPEG), and ``accept=`` (PS3.18 §8.3.3.1, overrides the Accept header, for
``<img>`` links). ``annotation`` and ``iccprofile`` are accepted and ignored.

Media types: ``image/jpeg`` (default), ``image/png``, ``image/gif`` by ``Accept``; an
Encapsulated PDF instance is ``application/pdf``. What is rendered:

- frame level: that frame (one frame per request; a list is a 400);
- instance level: the first frame, or with ``image/gif`` every frame of a multi-frame instance
  as an animated GIF;
- series and study level: a representative image, the middle instance (its middle frame) of
  the series — for a study, of its series with the most images;
- thumbnails: the same choices, but always one frame (an instance's middle frame), scaled to fit
  ``thumbnail_size`` pixels when no viewport is given.

Without ``window`` the file's first Window Center/Width (with its VOI LUT Function) applies, else
the frame's full range. Responses carry a strong ``ETag`` (instance content hash and every
parameter; ``If-None-Match`` gives 304), ``Cache-Control: private, max-age=…``, ``Vary: Accept``
and ``Cross-Origin-Resource-Policy: cross-origin``. Each answer (200 or 304) is audited through
the app's :class:`~telerad.storage.auditing.AuditWriter` (batched, so a scroll through a
series does not cost one database commit per slice).

===== ===========================================================================
400   malformed window, preset, viewport, quality, frame list or UID
404   unknown study/series/instance/frame, or one the caller may not see; an instance (or a
      study or series) with nothing to render (no pixel data)
406   no acceptable media type
422   the stored pixel data of that frame cannot be decoded
===== ===========================================================================
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response

from telerad.settings import RenderingSettings
from telerad.storage import (
    FrameNotFound,
    Scope,
    StoredInstance,
    find_instances,
    validate_uid,
)
from telerad.viewer_api.deps import AddressDep, PrincipalDep, ScopeDep, ServicesDep
from telerad.viewer_api.negotiation import NotAcceptable
from telerad.viewer_api.pixels import NotAnImage
from telerad.viewer_api.problems import BadRequest
from telerad.viewer_api.rendering import images, windowing
from telerad.viewer_api.rendering.pipeline import (
    ENCAPSULATED_PDF,
    Renderer,
    RenderRequest,
    neighbours,
)
from telerad.viewer_api.services import Services
from telerad.worklist import Principal

logger = logging.getLogger(__name__)
router = APIRouter(tags=["WADO-RS rendered"])

IMAGE_TYPES = (images.JPEG, images.PNG, images.GIF)
#: How long a series listing is reused to pick prefetch neighbours (seconds).
LISTING_TTL = 30.0


@dataclass(frozen=True, slots=True)
class Target:
    """The resource a request names: a study, series, instance or frame, rendered or thumbnail."""

    study: str
    series: str | None = None
    instance: str | None = None
    frame: int | None = None
    thumbnail: bool = False

    @property
    def level(self) -> str:
        """study, series, instance or frame."""
        if self.frame is not None:
            return "frame"
        return "instance" if self.instance else "series" if self.series else "study"


# --- routes -------------------------------------------------------------------------------


@router.get("/studies/{study}/rendered")
def retrieve_rendered_study(
    study: str, request: Request, services: ServicesDep, principal: PrincipalDep,
    scope: ScopeDep, address: AddressDep,
) -> Response:  # fmt: skip
    """A representative image of the study (its largest series' middle instance)."""
    return rendered_answer(Target(study), request, services, principal, scope, address)


@router.get("/studies/{study}/series/{series}/rendered")
def retrieve_rendered_series(
    study: str, series: str, request: Request, services: ServicesDep, principal: PrincipalDep,
    scope: ScopeDep, address: AddressDep,
) -> Response:  # fmt: skip
    """A representative image of the series (its middle instance)."""
    return rendered_answer(Target(study, series), request, services, principal, scope, address)


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered")
def retrieve_rendered_instance(
    study: str, series: str, instance: str, request: Request, services: ServicesDep,
    principal: PrincipalDep, scope: ScopeDep, address: AddressDep,
) -> Response:  # fmt: skip
    """The instance rendered (first frame; all frames as GIF), or its PDF."""
    target = Target(study, series, instance)
    return rendered_answer(target, request, services, principal, scope, address)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered")
def retrieve_rendered_frames(
    study: str, series: str, instance: str, frames: str, request: Request,
    services: ServicesDep, principal: PrincipalDep, scope: ScopeDep, address: AddressDep,
) -> Response:  # fmt: skip
    """One frame rendered."""
    target = Target(study, series, instance, frame_number(frames))
    return rendered_answer(target, request, services, principal, scope, address)


@router.get("/studies/{study}/thumbnail")
def retrieve_study_thumbnail(
    study: str, request: Request, services: ServicesDep, principal: PrincipalDep,
    scope: ScopeDep, address: AddressDep,
) -> Response:  # fmt: skip
    """A thumbnail of the study's representative image."""
    target = Target(study, thumbnail=True)
    return rendered_answer(target, request, services, principal, scope, address)


@router.get("/studies/{study}/series/{series}/thumbnail")
def retrieve_series_thumbnail(
    study: str, series: str, request: Request, services: ServicesDep, principal: PrincipalDep,
    scope: ScopeDep, address: AddressDep,
) -> Response:  # fmt: skip
    """A thumbnail of the series' middle instance."""
    target = Target(study, series, thumbnail=True)
    return rendered_answer(target, request, services, principal, scope, address)


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail")
def retrieve_instance_thumbnail(
    study: str, series: str, instance: str, request: Request, services: ServicesDep,
    principal: PrincipalDep, scope: ScopeDep, address: AddressDep,
) -> Response:  # fmt: skip
    """A thumbnail of the instance (its middle frame)."""
    target = Target(study, series, instance, thumbnail=True)
    return rendered_answer(target, request, services, principal, scope, address)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail")
def retrieve_frame_thumbnail(
    study: str, series: str, instance: str, frames: str, request: Request,
    services: ServicesDep, principal: PrincipalDep, scope: ScopeDep, address: AddressDep,
) -> Response:  # fmt: skip
    """A thumbnail of one frame."""
    target = Target(study, series, instance, frame_number(frames), thumbnail=True)
    return rendered_answer(target, request, services, principal, scope, address)


# --- the shared path ----------------------------------------------------------------------


def rendered_answer(
    target: Target,
    request: Request,
    services: Services,
    principal: Principal,
    scope: Scope,
    address: str,
) -> Response:
    """Locate, authorize, negotiate, render (or 304), audit and prefetch; blocking (the routes
    are plain ``def``, run in the thread pool; the :mod:`hot path <telerad.viewer_api.hotpath>`
    calls it in its own single hop)."""
    for uid in (target.study, target.series, target.instance):
        if uid is not None:
            validate_uid(uid, "UID in the URL")
    settings = services.settings.rendering
    parameters = _parameters(request, settings, target.thumbnail)
    with services.reader() as connection:
        found = find_instances(connection, scope, target.study, target.series, target.instance)
    renderer = services.renderer
    instance, frame = _choose(renderer, found, target)
    accept = request.query_params.get("accept", request.headers.get("accept"))

    def audit() -> None:
        _audit(services, principal, address, request, target, instance)

    if instance.sop_class_uid == ENCAPSULATED_PDF and not target.thumbnail and frame is None:
        return _document(renderer, instance, accept, request, settings, audit)
    media_type = images.negotiate(accept, IMAGE_TYPES)
    if media_type is None:
        raise NotAcceptable("rendered images are image/jpeg, image/png or image/gif")
    render = RenderRequest(media_type, *parameters)
    headers = _headers(render.etag(instance.sha256, frame or "all"), settings)
    if _matches(request.headers.get("if-none-match"), headers["ETag"]):
        audit()
        return Response(status_code=304, headers=headers)
    if frame is None:
        body = renderer.render_instance(instance, render)
    else:
        body = renderer.render(instance, frame, render)
    if not target.thumbnail and target.level in ("instance", "frame"):
        _prefetch(services, scope, renderer, instance, frame, render)
    audit()
    return Response(body, media_type=media_type, headers=headers)


def _document(
    renderer: Renderer,
    instance: StoredInstance,
    accept: str | None,
    request: Request,
    settings: RenderingSettings,
    audit: Callable[[], None],
) -> Response:
    """An Encapsulated PDF instance's document, as application/pdf (PS3.18 §10.4.1.1.3)."""
    if images.negotiate(accept, (images.PDF,)) is None:
        raise NotAcceptable("this instance is an Encapsulated PDF: application/pdf")
    headers = _headers(RenderRequest(images.PDF, None, None, 0).etag(instance.sha256, 0), settings)
    if _matches(request.headers.get("if-none-match"), headers["ETag"]):
        audit()
        return Response(status_code=304, headers=headers)
    body = renderer.document(instance)
    audit()
    return Response(body, media_type=images.PDF, headers=headers)


def _parameters(
    request: Request, settings: RenderingSettings, thumbnail: bool
) -> tuple[windowing.Window | None, images.Viewport | None, int]:
    """(window, viewport, quality) from the query (PS3.18 §8.3.5.1); 400 when malformed."""
    query = request.query_params
    try:
        window = _window(query.get("window"), query.get("preset"))
        viewport_text = query.get("viewport")
        viewport = images.parse_viewport(viewport_text) if viewport_text is not None else None
        quality_text = query.get("quality")
        quality = (
            images.parse_quality(quality_text)
            if quality_text is not None
            else settings.jpeg_quality
        )
    except ValueError as exc:  # WindowError, RenderParameterError
        raise BadRequest(str(exc)) from exc
    if viewport is None and thumbnail:
        viewport = images.Viewport(settings.thumbnail_size, settings.thumbnail_size)
    return window, viewport, quality


def _window(window: str | None, preset: str | None) -> windowing.Window | None:
    if window is not None and preset is not None:
        raise windowing.WindowError("give window or preset, not both")
    if preset is not None:
        found = windowing.PRESETS.get(preset.strip().lower())
        if found is None:
            raise windowing.WindowError(f"preset must be one of {', '.join(windowing.PRESETS)}")
        return found
    return windowing.parse_window(window) if window is not None else None


def frame_number(frames: str) -> int:
    """The one frame number of a ``frames/{n}`` path; 400 for a list or malformed text,
    404 (FrameNotFound) for 0 or an absurd number."""
    text = frames.strip()
    if "," in text:
        raise BadRequest("a rendered or thumbnail request names one frame")
    if not text.isdigit() or not text.isascii():
        raise BadRequest("a frame number is a positive integer")
    if len(text) > 9 or int(text) < 1:
        raise FrameNotFound(f"frame {text[:12]} is not in this instance")
    return int(text)


def _choose(
    renderer: Renderer, found: Sequence[StoredInstance], target: Target
) -> tuple[StoredInstance, int | None]:
    """The instance and frame to render (None: the whole instance, see the module docstring)."""
    if target.instance is not None:
        [instance] = found
        if target.frame is not None:
            return instance, target.frame
        if target.thumbnail:
            return instance, _middle_frame(renderer, instance)
        return instance, None
    pictures = [i for i in found if _is_image(renderer, i)]
    if target.series is None:
        pictures = _largest_series(pictures)
    if not pictures:
        documents = [i for i in found if i.sop_class_uid == ENCAPSULATED_PDF]
        if documents and not target.thumbnail:
            return documents[0], None
        raise NotAnImage("nothing in this resource can be rendered")
    chosen = pictures[len(pictures) // 2]
    return chosen, _middle_frame(renderer, chosen)


def _is_image(renderer: Renderer, instance: StoredInstance) -> bool:
    try:
        renderer.description(instance)
    except NotAnImage:
        return False
    return True


def _largest_series(pictures: list[StoredInstance]) -> list[StoredInstance]:
    groups: dict[str, list[StoredInstance]] = {}
    for instance in pictures:
        groups.setdefault(instance.series_uid, []).append(instance)
    return max(groups.values(), key=len, default=[])


def _middle_frame(renderer: Renderer, instance: StoredInstance) -> int:
    try:
        return renderer.frame_count(instance) // 2 + 1
    except NotAnImage:
        return 1


def _headers(etag: str, settings: RenderingSettings) -> dict[str, str]:
    return {
        "ETag": etag,
        "Cache-Control": f"private, max-age={settings.max_age}",
        "Vary": "Accept",
        "Cross-Origin-Resource-Policy": "cross-origin",
    }


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2: weak comparison against each listed tag, or ``*``."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _audit(
    services: Services,
    principal: Principal,
    address: str,
    request: Request,
    target: Target,
    instance: StoredInstance,
) -> None:
    action = f"{'thumbnail' if target.thumbnail else 'rendered'}-{target.level}"
    services.audit.record(
        actor=principal.name,
        actor_role=principal.role,
        action=action,
        resource=request.url.path,
        source_address=address,
        study_uids=[instance.study_uid],
        detail=f"sop={instance.sop_instance_uid} {str(request.url.query)[:1500]}",
    )


def _prefetch(
    services: Services,
    scope: Scope,
    renderer: Renderer,
    instance: StoredInstance,
    frame: int | None,
    render: RenderRequest,
) -> None:
    """Queue the rendering of the neighbours of what was just served (same parameters):
    frames of a multi-frame instance, else the instances of its series in reading order."""
    reach = services.settings.rendering.prefetch_neighbours
    if reach == 0:
        return
    count = renderer.frame_count(instance)
    if count > 1:
        current = (frame or 1) - 1
        targets = [(instance, i + 1) for i in neighbours(count, current, reach)]
        renderer.prefetch(targets, render)
        return
    listing = _cached_listing(renderer, scope, instance)
    if listing is not None:  # the usual case while scrolling: a few lookups, no thread hop
        _prefetch_neighbours(renderer, listing, instance, reach, render)
        return
    key = ("series-neighbours", instance.sop_instance_uid, render)
    renderer.prefetcher.submit(
        key, lambda: _prefetch_series(services, scope, renderer, instance, reach, render)
    )


@dataclass(frozen=True, slots=True)
class _Listing:
    """A series in reading order, with each instance's place in it."""

    fetched: float  # time.monotonic()
    instances: list[StoredInstance]
    index: dict[str, int]


def _prefetch_series(
    services: Services,
    scope: Scope,
    renderer: Renderer,
    instance: StoredInstance,
    reach: int,
    render: RenderRequest,
) -> None:
    """The prefetch job when the series listing must be read first."""
    listing = _series_listing(services, scope, renderer, instance)
    _prefetch_neighbours(renderer, listing, instance, reach, render)


def _prefetch_neighbours(
    renderer: Renderer, listing: _Listing, instance: StoredInstance, reach: int,
    render: RenderRequest,
) -> None:  # fmt: skip
    index = listing.index.get(instance.sop_instance_uid)
    if index is None:
        return
    chosen = neighbours(len(listing.instances), index, reach)
    renderer.prefetch([(listing.instances[i], 1) for i in chosen], render)


def _cached_listing(renderer: Renderer, scope: Scope, instance: StoredInstance) -> _Listing | None:
    """The series listing if one younger than :data:`LISTING_TTL` is cached."""
    cached = renderer.cache.get(("listing", instance.study_uid, instance.series_uid, scope))
    if cached is not None and time.monotonic() - cached.fetched < LISTING_TTL:
        return cached  # type: ignore[no-any-return]
    return None


def _series_listing(
    services: Services, scope: Scope, renderer: Renderer, instance: StoredInstance
) -> _Listing:
    """The series in reading order, reused for :data:`LISTING_TTL` seconds (prefetch only:
    responses are always authorized against the catalog)."""
    listing = _cached_listing(renderer, scope, instance)
    if listing is not None:
        return listing
    with services.reader() as connection:
        found = find_instances(connection, scope, instance.study_uid, instance.series_uid)
    index = {item.sop_instance_uid: place for place, item in enumerate(found)}
    listing = _Listing(time.monotonic(), found, index)
    size = sum(len(i.metadata_json) + 512 for i in found)
    renderer.cache.put(("listing", instance.study_uid, instance.series_uid, scope), listing, size)
    return listing
