"""HTTP errors and the one table that maps exception classes to HTTP statuses.

Domain code raises its own exceptions; this module registers a handler per class once
(Starlette walks the MRO), so routes never build error responses by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from telerad.storage import (
    FrameNotFound,
    InvalidKey,
    InvalidManifest,
    ObjectNotFound,
    QueryError,
    StorageUnavailable,
)
from telerad.storage import NotFound as ResourceNotFound
from telerad.viewer_api.encoding import (
    ACCEPTED_CODINGS,
    ContentTooLarge,
    CorruptContent,
    UnsupportedContentCoding,
)
from telerad.viewer_api.negotiation import NotAcceptable as NotAcceptable  # rendered.py too
from telerad.viewer_api.pixels import CorruptFrame, NotAnImage
from telerad.viewer_api.rendering.images import RenderParameterError
from telerad.viewer_api.security import AuthenticationFailed, PermissionDenied
from telerad.worklist import (
    AccountError,
    AccountExists,
    InvalidAssignment,
    InvalidMessage,
    InvalidReportTransition,
    InvalidShareLink,
    InvalidTransition,
    InvalidWebhook,
    InvalidWorklistInput,
    LastAdministrator,
    NotificationNotFound,
    NotReportWriter,
    ReportContentError,
    ReportExists,
    ReportNotFound,
    ReportVersionMismatch,
    ShareLinkNotFound,
    TaskNotFound,
    TaskPermissionDenied,
    ThreadNotFound,
    TransactionUIDError,
    UnknownUser,
)

logger = logging.getLogger(__name__)


class HttpProblem(Exception):
    """An error with its HTTP status, raised by adapters in this package."""

    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(HttpProblem):
    """400: the request cannot be understood."""


class UnsupportedMediaType(HttpProblem):
    """415: a body of a media type this route does not take."""

    status = 415


class NotFound(HttpProblem):
    """404: absent, or not visible to the caller (the two look the same)."""

    status = 404


#: Exception class → (HTTP status, whether the message may be shown to the client).
STATUS_FOR: dict[type[Exception], tuple[int, bool]] = {
    QueryError: (400, True),
    InvalidKey: (400, True),
    InvalidManifest: (400, True),
    AccountError: (400, True),
    AccountExists: (409, True),
    UnknownUser: (404, True),  # administrators only: they may know who exists
    LastAdministrator: (409, True),
    CorruptContent: (400, True),
    RenderParameterError: (400, True),
    AuthenticationFailed: (401, False),
    PermissionDenied: (403, True),
    ObjectNotFound: (404, False),
    ResourceNotFound: (404, False),
    # The instance is visible to the caller by then, so the frame numbers may be named.
    FrameNotFound: (404, True),
    # The instance has no Pixel Data: its frames are not a resource that exists.
    NotAnImage: (404, True),
    NotAcceptable: (406, True),
    ContentTooLarge: (413, True),
    # The request is valid but the stored bitstream of that frame cannot be decoded: 422
    # (RFC 9110 §15.5.21) names the frame and says why, not 500; the server stays up.
    CorruptFrame: (422, True),
    UnsupportedContentCoding: (415, True),
    StorageUnavailable: (503, False),
    ReportContentError: (400, True),
    NotReportWriter: (403, True),
    ReportNotFound: (404, False),
    InvalidReportTransition: (409, True),
    ReportExists: (409, True),
    ReportVersionMismatch: (412, True),
    InvalidWorklistInput: (400, True),
    TransactionUIDError: (400, True),  # PS3.18 §11.7.3.1
    TaskPermissionDenied: (403, True),
    TaskNotFound: (404, True),
    InvalidAssignment: (409, True),
    InvalidTransition: (409, True),
    # delivery (issue 5): thread, notifications, webhooks, share links
    InvalidMessage: (400, True),
    InvalidWebhook: (400, True),
    InvalidShareLink: (400, True),
    ThreadNotFound: (404, False),
    NotificationNotFound: (404, False),
    ShareLinkNotFound: (404, False),
}
#: Headers the response to an exception class carries (RFC 9110 §11.6.1, §12.5.3).
HEADERS_FOR: dict[type[Exception], dict[str, str]] = {
    AuthenticationFailed: {"WWW-Authenticate": "Bearer"},
    UnsupportedContentCoding: {"Accept-Encoding": ", ".join(ACCEPTED_CODINGS)},
}


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _unrouted(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no route, method not allowed); a 404 has the same body as a
    missing or hidden resource, so a path that matches no route gives no hint either."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return _problem(404, _GENERIC[404])
    return await http_exception_handler(request, exc)


async def _http_problem(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HttpProblem)
    return _problem(exc.status, exc.detail)


def _handler_for(
    status: int, show: bool, headers: dict[str, str] | None
) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if status >= 500:
            logger.error("%s %s: %s", request.method, request.url.path, exc)
        detail = str(exc) if show else _GENERIC[status]
        return _problem(status, detail, headers)

    return handle


_GENERIC = {
    401: "not authenticated",
    404: "not found",
    503: "storage temporarily unavailable",
}


def register_problem_handlers(app: FastAPI) -> None:
    """Install one handler per exception class of :data:`STATUS_FOR`."""
    app.add_exception_handler(HttpProblem, _http_problem)
    app.add_exception_handler(StarletteHTTPException, _unrouted)
    for exc_class, (status, show) in STATUS_FOR.items():
        handler = _handler_for(status, show, HEADERS_FOR.get(exc_class))
        app.add_exception_handler(exc_class, handler)
