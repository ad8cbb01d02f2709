"""The hot path: the requests a reader's viewer makes for every slice it shows, answered
without the framework's routing.

While a radiologist scrolls, a viewer asks for one frame (``…/instances/{i}/frames/{n}``, PS3.18
§10.4.1.1.5) or one rendered image (``…/instances/{i}[/frames/{n}]/rendered`` or
``/thumbnail``, §10.4.1.1.3 and 4) per slice. The work of such a request is small: one indexed
user lookup, one indexed instance lookup, a byte-range read and, when rendered, a lookup table
and an encoder, about 1 ms in all. Through FastAPI it cost 3 to 5 ms: the framework's
middleware stack, matching the path against every route, resolving a dozen dependencies, and
three hops between the event loop and the thread pool (principal, instance, payload), each a
wake-up of another thread under one GIL (measured with py-spy on ``bench/dicomweb.py``'s
frame requests; the figures are in the README).

:class:`HotPath` is an ASGI middleware, placed inside CORS and the trusted-proxy middleware so
that both still apply. It recognises exactly those instance-level paths of a ``GET`` and
answers them in **one** hop to a thread, calling the functions the routes call
(:func:`telerad.viewer_api.deps.authorize` for the bearer token and scope,
:func:`…routes.wado.frames_answer`, :func:`…routes.rendered.rendered_answer`); an exception goes
to the handler the app registered for its class (:mod:`.problems`), so statuses and bodies are
the routes' own. Anything else (another method, another path) passes through untouched. The
routes stay: they document the resources in the OpenAPI schema and answer when the hot path is
switched off (``create_app(…, hot_path=False)``, which the tests use to check that both give
the same answers).

The hop is asyncio's own (``loop.run_in_executor`` on one process-wide pool of
:data:`POOL_THREADS`), not Starlette's ``run_in_threadpool``: anyio's capacity limiter, cancel
scope and task lookups made about a tenth of an API process's GIL time under eight readers
(py-spy ``--gil`` on ``bench/dicomweb.py``'s 8-client run). Nothing here reads context
variables, which asyncio's hop does not carry over.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import Request, Response
from fastapi.security.utils import get_authorization_scheme_param
from starlette.types import ASGIApp, Receive, Scope, Send

from telerad.viewer_api.deps import authorize
from telerad.viewer_api.routes.rendered import Target, frame_number, rendered_answer
from telerad.viewer_api.routes.wado import Caller, frames_answer

__all__ = ["HotPath"]

#: The instance-level frames, rendered and thumbnail resources (path segments as the routes
#: match them: anything but ``/``).
_PATH = re.compile(
    r"/dicomweb/studies/([^/]+)/series/([^/]+)/instances/([^/]+)/"
    r"(?:frames/([^/]+)(?:/(rendered|thumbnail))?|(rendered|thumbnail))"
)

Handler = Callable[[Request, Exception], Awaitable[Response] | Response]

#: Threads answering hot-path requests, shared by every app of the process.
POOL_THREADS = 16
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="hot-path")
    return _pool


class HotPath:
    """ASGI middleware answering the per-slice image requests directly (module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "GET":
            match = _PATH.fullmatch(route_path(scope))
        if match is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            loop = asyncio.get_running_loop()
            response = await loop.run_in_executor(_executor(), _answer, request, match)
        except Exception as exc:
            handler = _handler_for(scope["app"], exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)


def route_path(scope: Scope) -> str:
    """The path the router matches: ``path`` without the ``root_path`` a reverse proxy's prefix
    puts in front of it (as Starlette's own routing strips it)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path != root and path[len(root)] == "/":
        return path[len(root) :]
    return path


def _answer(request: Request, match: re.Match[str]) -> Response:
    """Authenticate, authorize and answer; blocking (one hop)."""
    services = request.app.state.services
    scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
    principal, scope = authorize(services, token if scheme.lower() == "bearer" else None)
    address = request.client.host if request.client else ""
    study, series, instance, frames, of_frame, of_instance = match.groups()
    if frames is not None and of_frame is None:
        caller = Caller(services, principal, scope, address)
        return frames_answer(request, caller, study, series, instance, frames)
    kind = of_frame or of_instance
    frame = frame_number(frames) if frames is not None else None
    target = Target(study, series, instance, frame, thumbnail=kind == "thumbnail")
    return rendered_answer(target, request, services, principal, scope, address)


def _handler_for(app: Any, exc: Exception) -> Handler | None:
    """The exception handler the app registered for ``exc``'s class or its nearest base (the
    class lookup of Starlette's exception middleware; the app registers no handlers by status
    code, which Starlette would try first for an ``HTTPException``)."""
    handlers: dict[Any, Handler] = app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None
