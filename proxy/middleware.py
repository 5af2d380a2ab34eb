"""Around every Query request: the request id, the concurrency cap, error rendering, the access log, metrics.

Errors are rendered here and only here: a :class:`~proxy.errors.ProxyError` becomes the Query
``ErrorResponse`` of SPEC section 6 (the shape botocore's ``QueryParser`` reads); anything else is logged by
class name and answered as a generic 500 ``InternalFailure`` without its text.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware

from . import errors
from .metrics import Metrics
from .translate import UNREPRESENTABLE

access_log = logging.getLogger("proxy.access")
log = logging.getLogger("proxy")

XML_TYPE = "text/xml"
ADMIN_ROUTE = "admin-"  # name prefix of /healthz, /readyz, /metrics: not Query requests
_MESSAGE_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#xD;"})


@dataclass
class RequestContext:
    """What the access line and metrics report about one request; filled in as the pipeline runs."""

    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    action: str | None = None
    secret_ids: tuple[str, ...] = ()
    upstream_status: int | None = None
    attempts: int = 0


CONTEXT = web.RequestKey("query_context", RequestContext)


def context(request: web.Request) -> RequestContext:
    return request[CONTEXT]


def _text(value: str) -> str:
    return UNREPRESENTABLE.sub("\ufffd", value).translate(_MESSAGE_ESCAPES)


def error_document(code: str, message: str, fault: str, request_id: str) -> bytes:
    """The Query ``ErrorResponse`` document (SPEC section 6), UTF-8."""
    return (
        f"<ErrorResponse><Error><Type>{fault}</Type><Code>{_text(code)}</Code>"
        f"<Message>{_text(message)}</Message></Error><RequestId>{_text(request_id)}</RequestId></ErrorResponse>"
    ).encode()


def error_response(error: errors.ProxyError, request_id: str) -> web.Response:
    headers = {"x-amzn-RequestId": request_id, **error.headers}
    return web.Response(
        status=error.status,
        body=error_document(error.code, error.message, error.fault, request_id),
        content_type=XML_TYPE,
        headers=headers,
    )


_HTTP_ERRORS: dict[int, type[errors.ProxyError]] = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.RequestEntityTooLarge,
    414: errors.RequestURITooLong,
    415: errors.UnsupportedMediaType,
}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def query_middleware(metrics: Metrics, max_concurrent: int) -> Middleware:
    """The middleware for a Query listener; ``max_concurrent`` is ``limits.max_concurrent_requests``."""
    in_flight = 0

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal in_flight
        route_name = request.match_info.route.name
        if route_name is not None and route_name.startswith(ADMIN_ROUTE):
            return await handler(request)
        ctx = RequestContext()
        request[CONTEXT] = ctx
        started = time.perf_counter()
        status = 500
        code = "InternalFailure"
        response: web.StreamResponse
        try:
            if in_flight >= max_concurrent:
                raise errors.ServiceUnavailable(
                    f"more than limits.max_concurrent_requests ({max_concurrent}) requests in flight; retry"
                )
            in_flight += 1
            metrics.in_flight.inc()
            try:
                response = await handler(request)
            finally:
                in_flight -= 1
                metrics.in_flight.dec()
            status, code = response.status, "OK" if response.status < 400 else str(response.status)
        except errors.ProxyError as exc:
            response = error_response(exc, ctx.request_id)
            status, code = exc.status, exc.code
        except web.HTTPException as exc:
            cls = _HTTP_ERRORS.get(exc.status)
            err: errors.ProxyError = cls(exc.reason) if cls is not None else errors.ProxyError(f"HTTP {exc.status}")
            response = error_response(err, ctx.request_id)
            status, code = err.status, err.code
        except asyncio.CancelledError:
            status, code = 499, "ClientClosedRequest"
            raise
        except Exception as exc:
            log.error("unexpected error", extra={"request_id": ctx.request_id, "error": type(exc).__name__})
            response = error_response(errors.ProxyError("the proxy failed unexpectedly"), ctx.request_id)
        finally:
            elapsed = time.perf_counter() - started
            action = ctx.action or "-"
            metrics.requests.labels(action=action, code=code).inc()
            metrics.request_duration.labels(action=action).observe(elapsed)
            access_log.info(
                "request",
                extra={
                    "request_id": ctx.request_id,
                    "action": ctx.action,
                    "secret_id": _secret_field(ctx.secret_ids),
                    "status": status,
                    "upstream_status": ctx.upstream_status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "attempts": ctx.attempts,
                },
            )
        return response

    return middleware


def _secret_field(ids: tuple[str, ...]) -> str | list[str] | None:
    if not ids:
        return None
    return ids[0] if len(ids) == 1 else list(ids)
