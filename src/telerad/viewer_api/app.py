"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.gzip import GZipMiddleware
from sqlalchemy import text

from telerad import __version__
from telerad.settings import Settings
from telerad.viewer_api.delivery_runtime import start_delivery
from telerad.viewer_api.problems import register_problem_handlers
from telerad.viewer_api.routes import (
    auth,
    consultation,
    notifications,
    qido,
    sharelinks,
    site_webhooks,
    sites,
    stow,
    studies,
)
from telerad.viewer_api.services import Services, build_services


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """Build the central API. ``services`` may be given (tests); else built in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = services is None
        app.state.services = services or build_services(settings)
        stop_delivery = start_delivery(app.state.services)
        try:
            yield
        finally:
            stop_delivery()
            if owned:
                app.state.services.close()

    app = FastAPI(title="telerad", version=__version__, lifespan=lifespan)
    app.add_middleware(GZipMiddleware, minimum_size=1024)
    register_problem_handlers(app)
    app.include_router(auth.router, prefix="/api/auth")
    app.include_router(sites.router, prefix="/api/sites")
    app.include_router(studies.router, prefix="/api/studies")
    app.include_router(consultation.router, prefix="/api/studies")
    app.include_router(notifications.router, prefix="/api/notifications")
    app.include_router(site_webhooks.router, prefix="/api/sites")
    app.include_router(sharelinks.router, prefix="/api/reports")
    app.include_router(sharelinks.public_router)
    app.include_router(stow.router, prefix="/dicomweb")
    app.include_router(qido.router, prefix="/dicomweb")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness and database reachability; needs no token."""
        with app.state.services.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    return app
