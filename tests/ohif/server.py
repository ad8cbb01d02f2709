"""Serve OHIF's built ``dist`` folder, and any ASGI app, on a free localhost port.

The OHIF server is what a hospital's web server would be: static files, ``index.html`` for every
route the single-page app owns (``/viewer``, ``/local`` …: its router runs in the browser), and our
own ``app-config.js`` in place of the build's, naming one DICOMweb data source and nothing else.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope


def ohif_config(dicomweb_root: str) -> dict[str, Any]:
    """OHIF's ``window.config`` with one DICOMweb data source at ``dicomweb_root``.

    The data source is OHIF's own default one (``config/default.js`` of the build) pointed at
    telerad, minus ``staticWado`` (that switch is for static file servers, which cannot search):
    QIDO with ``includefield``, images as WADO-RS frames (``imageRendering: wadors``),
    thumbnails from the server's ``/thumbnail`` resources fetched with the same headers.
    """
    return {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,  # image decoders; CI machines have two cores
        "showLoadingIndicator": True,
        "defaultDataSourceName": "telerad",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "telerad",
                "configuration": {
                    "friendlyName": "telerad",
                    "name": "telerad",
                    "wadoUriRoot": dicomweb_root,
                    "qidoRoot": dicomweb_root,
                    "wadoRoot": dicomweb_root,
                    "qidoSupportsIncludeField": True,
                    "supportsWildcard": True,
                    "supportsFuzzyMatching": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "thumbnail",
                    "thumbnailRequestStrategy": "fetch",
                    "enableStudyLazyLoad": True,
                    "bulkDataURI": {"enabled": True},
                },
            }
        ],
    }


class _SinglePageApp(StaticFiles):
    """Static files; ``index.html`` for any other path (the app's router resolves it)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404:
                raise
            return FileResponse(Path(str(self.directory)) / "index.html")


def ohif_app(dist: Path, config: dict[str, Any]) -> Starlette:
    """The OHIF build at ``dist`` with ``config`` as its ``/app-config.js``."""
    script = f"window.config = {json.dumps(config, indent=2)};\n"

    async def app_config(request: Request) -> Response:
        return Response(script, media_type="text/javascript")

    return Starlette(
        routes=[
            Route("/app-config.js", app_config),
            Mount("/", _SinglePageApp(directory=dist, html=True)),
        ]
    )


@contextmanager
def serving(app: Any, sock: socket.socket | None = None) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on ``sock`` (else a free port); its base URL."""
    if sock is None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def bound_socket() -> socket.socket:
    """A socket bound to a free localhost port (its origin is known before the app starts)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock
