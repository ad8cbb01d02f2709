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
from telerad.viewer_api.problems import register_problem_handlers
from telerad.viewer_api.proxy import ForwardedHeadersMiddleware
from telerad.viewer_api.routes import auth, qido, rendered, sites, stow, studies, wado
from telerad.viewer_api.services import Services, build_services

#: Pixel payloads are sent as they are: compressed ones do not shrink, and gzip of raw frames
#: costs more time than it saves on the links viewers use (frames must come fast).
NOT_COMPRESSED = (
    *DEFAULT_EXCLUDED_CONTENT_TYPES,
    "multipart/related",
    "application/dicom",
    "application/octet-stream",
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


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """Build the central API. ``services`` may be given (tests); else built in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = services is None
        app.state.services = services or build_services(settings)
        try:
            yield
        finally:
            if owned:
                app.state.services.close()

    app = FastAPI(title="telerad", version=__version__, lifespan=lifespan)
    app.add_middleware(GZipMiddleware, minimum_size=1024, exclude_content_types=NOT_COMPRESSED)
    if settings.viewer.cors_origins:
        app.add_middleware(CORSMiddleware, **cors_options(settings.viewer.cors_origins))
    app.add_middleware(ForwardedHeadersMiddleware, trusted=settings.viewer.forwarded_allow_ips)
    register_problem_handlers(app)
    app.include_router(auth.router, prefix="/api/auth")
    app.include_router(sites.router, prefix="/api/sites")
    app.include_router(studies.router, prefix="/api/studies")
    app.include_router(stow.router, prefix="/dicomweb")
    app.include_router(qido.router, prefix="/dicomweb")
    app.include_router(wado.router, prefix="/dicomweb")
    app.include_router(rendered.router, prefix="/dicomweb")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness and database reachability; needs no token."""
        with app.state.services.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    return app
