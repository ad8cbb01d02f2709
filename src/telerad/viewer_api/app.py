"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from sqlalchemy import text
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES

from telerad import __version__
from telerad.settings import Settings
from telerad.viewer_api.delivery_runtime import start_delivery
from telerad.viewer_api.hotpath import HotPath
from telerad.viewer_api.problems import register_problem_handlers
from telerad.viewer_api.proxy import ForwardedHeadersMiddleware
from telerad.viewer_api.routes import (
    auth,
    consultation,
    notifications,
    qido,
    rendered,
    reports,
    sharelinks,
    site_webhooks,
    sites,
    stow,
    studies,
    users,
    wado,
    workitems,
    worklist,
    worklist_admin,
)
from telerad.viewer_api.services import Services, build_services
from telerad.worklist import EscalationHook, WorklistLoop, WorklistPolicy, notify_task_escalated

#: Pixel payloads are sent as they are: compressed ones do not shrink, and gzip of raw frames
#: costs more time than it saves on the links viewers use (frames must come fast). PDFs keep
#: their own compressed streams. The hot path (outside GZip) answers only these types.
NOT_COMPRESSED = (
    *DEFAULT_EXCLUDED_CONTENT_TYPES,
    "multipart/related",
    "application/dicom",
    "application/octet-stream",
    "application/pdf",
    "image/*",
    "video/*",
)
#: Response headers a browser viewer may read cross-origin (beyond the CORS-safelisted ones).
EXPOSED_HEADERS = ["ETag", "Content-Length", "Content-Location", "Location", "Warning"]


def cors_options(origins: list[str]) -> dict[str, Any]:
    """CORS for browser viewers served from other origins (OHIF): preflight answered, bearer
    tokens allowed, and the headers viewers read exposed. ``*`` allows any origin."""
    return {
        "allow_origins": origins,
        "allow_methods": ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"],
        "allow_headers": ["Authorization", "Accept", "Content-Type", "If-None-Match", "Range"],
        "expose_headers": EXPOSED_HEADERS,
        "max_age": 600,
    }


def create_app(
    settings: Settings,
    services: Services | None = None,
    *,
    on_escalated: EscalationHook | None = None,
    hot_path: bool = True,
) -> FastAPI:
    """Build the central API. ``services`` may be given (tests); else built in the lifespan.

    The worklist's background loop (intake sweep, leases, SLA escalation) runs while the app
    does when ``settings.worklist.background`` is on; ``on_escalated`` is its escalation hook
    (default: the new reader or pool and the previous reader get an inbox notification).
    ``hot_path`` off leaves the per-slice image requests to the routes (module
    :mod:`.hotpath`; tests compare both).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = services is None
        app.state.services = services or build_services(settings)
        hook = on_escalated or notify_task_escalated
        loop = _worklist_loop(settings, app.state.services, hook)
        stop_delivery = start_delivery(app.state.services)
        try:
            yield
        finally:
            stop_delivery()
            if loop is not None:
                loop.stop()
            if owned:
                app.state.services.close()

    app = FastAPI(title="telerad", version=__version__, lifespan=lifespan)
    app.add_middleware(GZipMiddleware, minimum_size=1024, exclude_content_types=NOT_COMPRESSED)
    if hot_path:  # inside CORS and the proxy middleware, outside GZip (see NOT_COMPRESSED)
        app.add_middleware(HotPath)
    if settings.viewer.cors_origins:
        app.add_middleware(CORSMiddleware, **cors_options(settings.viewer.cors_origins))
    app.add_middleware(ForwardedHeadersMiddleware, trusted=settings.viewer.forwarded_allow_ips)
    register_problem_handlers(app)
    app.include_router(auth.router, prefix="/api/auth")
    app.include_router(sites.router, prefix="/api/sites")
    app.include_router(users.router, prefix="/api/users")
    app.include_router(studies.router, prefix="/api/studies")
    app.include_router(reports.router, prefix="/api/reports")
    app.include_router(consultation.router, prefix="/api/studies")
    app.include_router(notifications.router, prefix="/api/notifications")
    app.include_router(site_webhooks.router, prefix="/api/sites")
    app.include_router(sharelinks.router, prefix="/api/reports")
    app.include_router(sharelinks.public_router)
    app.include_router(stow.router, prefix="/dicomweb")
    app.include_router(qido.router, prefix="/dicomweb")
    app.include_router(wado.router, prefix="/dicomweb")
    app.include_router(rendered.router, prefix="/dicomweb")
    app.include_router(worklist_admin.router, prefix="/api/worklist")
    app.include_router(worklist.router, prefix="/api/worklist")
    app.include_router(worklist_admin.orders, prefix="/api/studies")
    app.include_router(workitems.router, prefix="/dicomweb")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness and database reachability; needs no token."""
        with app.state.services.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    return app


def create_app_from_environment() -> FastAPI:
    """The app of one HTTP worker process: settings from ``TELERAD_…`` variables and
    ``TELERAD_CONFIG`` (``telerad serve`` exports what its command line changed), services
    built in the worker's own lifespan (uvicorn's ``factory`` entry point)."""
    return create_app(Settings())


def _worklist_loop(
    settings: Settings, services: Services, on_escalated: EscalationHook | None
) -> WorklistLoop | None:
    """Start the worklist's background loop if the settings ask for it."""
    if not settings.worklist.background:
        return None
    loop = WorklistLoop(
        services.engine,
        WorklistPolicy.from_settings(settings.worklist),
        interval=settings.worklist.escalation_interval_seconds,
        on_escalated=on_escalated,
        archive=services.archive,
        institution=settings.reports.institution_name,
    )
    loop.start()
    return loop
