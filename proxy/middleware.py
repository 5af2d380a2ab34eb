"""Around every Query request: the request id, the concurrency cap, error rendering, the access log, metrics.

Errors are rendered here and only here: a :class:`~proxy.errors.ProxyError` becomes the Query
``ErrorResponse`` of docs/interface.md, "Errors" (the shape botocore's ``QueryParser`` reads), or for an SDK's AWS JSON
call (:func:`~proxy.parse.is_sdk_request`) the JSON 1.1 error ``{"__type": ..., "message": ...}`` that
botocore's ``JSONParser`` reads, with the SDK table's status and code (:meth:`~proxy.errors.ProxyError.sdk_answer`);
anything else is logged by class name and answered as a generic 500 ``InternalFailure`` without its text.

``query_signing_proxy_requests_total`` is labelled by the error code the caller saw, on both paths: the code of
the proxy's own error, or of a relayed upstream error (``RequestContext.error_code``, read from the JSON ``__type``,
``X-Amzn-ErrorType`` or the XML ``<Code>``), ``OK`` for a success.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware

from . import errors, logs
from .metrics import Metrics
from .parse import is_sdk_request, request_head
from .shapes import UNREPRESENTABLE
from .validate import RuleSettings, check_host

access_log = logging.getLogger("proxy.access")
log = logging.getLogger("proxy")

XML_TYPE = "text/xml"
JSON_ERROR_TYPE = "application/x-amz-json-1.1"
ADMIN_ROUTE = "admin-"  # name prefix of /healthz, /readyz, /metrics: not Query requests
_MESSAGE_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#xD;"})


@dataclass
class RequestContext:
    """What the access line and metrics report about one request; filled in as the pipeline runs.

    ``request_id`` is the upstream's once it answered, else a UUID the proxy makes when it is first read
    (most answers carry the upstream's, so most requests never make one)."""

    _request_id: str | None = field(default=None, repr=False)
    action: str | None = None
    secret_ids: tuple[str, ...] = ()
    upstream_status: int | None = None
    attempts: int = 0
    sdk: bool = False  # an SDK's AWS JSON call: errors are rendered as JSON 1.1
    error_code: str | None = None  # the code of an upstream error answer relayed as it came (metrics)
    # Set when a streamed answer ended early: 499 (the client went away) or 502 (the upstream failed).
    stream_status: int | None = None
    stream_code: str | None = None

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            self._request_id = str(uuid.uuid4())
        return self._request_id

    @request_id.setter
    def request_id(self, value: str) -> None:
        self._request_id = value


CONTEXT = web.RequestKey("query_context", RequestContext)


def context(request: web.Request) -> RequestContext:
    return request[CONTEXT]


def _text(value: str) -> str:
    return UNREPRESENTABLE.sub("\ufffd", value).translate(_MESSAGE_ESCAPES)


def error_document(code: str, message: str, fault: str, request_id: str) -> bytes:
    """The Query ``ErrorResponse`` document (docs/interface.md, "Errors"), UTF-8."""
    return (
        f"<ErrorResponse><Error><Type>{fault}</Type><Code>{_text(code)}</Code>"
        f"<Message>{_text(message)}</Message></Error><RequestId>{_text(request_id)}</RequestId></ErrorResponse>"
    ).encode()


def json_error_document(code: str, message: str) -> bytes:
    """The AWS JSON 1.1 error body (docs/interface.md, "SDK callers"): ``{"__type": code, "message": message}``,
    UTF-8."""
    return json.dumps({"__type": code, "message": message}).encode()


def error_response(error: errors.ProxyError, request_id: str, sdk: bool = False) -> web.Response:
    """The error answer in the caller's protocol: Query XML with the Query table's status and code, or AWS JSON
    1.1 with the SDK table's (:meth:`~proxy.errors.ProxyError.sdk_answer`) when ``sdk``."""
    headers = {"x-amzn-RequestId": request_id, **error.headers}
    if sdk:
        status, code = error.sdk_answer()
        body, content_type = json_error_document(code, error.message), JSON_ERROR_TYPE
    else:
        status, code = error.status, error.code
        body, content_type = error_document(code, error.message, error.fault, request_id), XML_TYPE
    return web.Response(status=status, body=body, content_type=content_type, headers=headers)


def answered_code(error: errors.ProxyError, sdk: bool) -> tuple[int, str]:
    """The status and code the caller sees for ``error`` (the metrics' and access line's view)."""
    return error.sdk_answer() if sdk else (error.status, error.code)


_HTTP_ERRORS: dict[int, type[errors.ProxyError]] = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.RequestEntityTooLarge,
    414: errors.RequestURITooLong,
    415: errors.UnsupportedMediaType,
}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# How a listener answers an error: the error and the request's context -> the answer.
ErrorRenderer = Callable[[errors.ProxyError, RequestContext], web.Response]


def render_error(error: errors.ProxyError, ctx: RequestContext) -> web.Response:
    """The Query and SDK listeners' error answer (:func:`error_response` in the caller's protocol)."""
    return error_response(error, ctx.request_id, ctx.sdk)


def host_passes(request: web.Request, rules: RuleSettings) -> bool:
    """Whether the request passes the Host rule (:func:`proxy.validate.check_host`)."""
    try:
        check_host(request_head(request), rules)
    except errors.AccessDenied:
        return False
    return True


def query_middleware(
    metrics: Metrics, max_concurrent: int, rules: RuleSettings, render: ErrorRenderer = render_error
) -> Middleware:
    """The middleware for a Query listener; ``max_concurrent`` is ``limits.max_concurrent_requests``, ``rules``
    the listener's request rules, ``render`` answers errors (the Agent API's listener, :mod:`proxy.agent`,
    shapes them as the Agent does).

    The Host rule holds for every path of the listener (docs/interface.md, "HTTP endpoints"): also for
    ``/healthz``, ``/readyz`` and ``/metrics`` when ``admin.host`` is null (a page that rebinds a DNS name to
    127.0.0.1 would otherwise read the metrics and the reason ``/readyz`` fails), and for the answers aiohttp's
    router makes itself (405 for ``POST /metrics``). Admin requests that pass it are answered without an
    access line or metrics, as on the admin listener; one that fails it is refused like any request (403
    ``AccessDenied``, counted and logged)."""
    in_flight = 0

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal in_flight
        route_name = request.match_info.route.name
        if route_name is not None and route_name.startswith(ADMIN_ROUTE) and host_passes(request, rules):
            return await handler(request)
        ctx = RequestContext(sdk=is_sdk_request(request))
        request[CONTEXT] = ctx
        started = time.perf_counter()
        status = 500
        code = "InternalFailure"
        response: web.StreamResponse
        try:
            check_host(request_head(request), rules)  # first, on every path (the handlers' rules repeat it)
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
            status = response.status
            code = "OK" if status < 400 else ctx.error_code or str(status)
            if ctx.stream_status is not None:
                status, code = ctx.stream_status, ctx.stream_code or str(ctx.stream_status)
        except errors.ProxyError as exc:
            response = render(exc, ctx)
            status, code = response.status, answered_code(exc, ctx.sdk)[1]
        except web.HTTPException as exc:
            cls = _HTTP_ERRORS.get(exc.status)
            err: errors.ProxyError = cls(exc.reason) if cls is not None else errors.ProxyError(f"HTTP {exc.status}")
            response = render(err, ctx)
            status, code = response.status, answered_code(err, ctx.sdk)[1]
        except asyncio.CancelledError:
            status, code = 499, "ClientClosedRequest"
            raise
        except Exception as exc:
            log.error("unexpected error", extra={"request_id": ctx.request_id, "error": type(exc).__name__})
            response = render(errors.ProxyError("the proxy failed unexpectedly"), ctx)
        finally:
            elapsed = time.perf_counter() - started
            action = ctx.action or "-"
            metrics.child(metrics.requests, action, code).inc()
            metrics.child(metrics.request_duration, action).observe(elapsed)
            logs.access(
                access_log,
                ctx.request_id,
                ctx.action,
                _secret_field(ctx.secret_ids),
                status,
                ctx.upstream_status,
                round(elapsed * 1000, 2),
                ctx.attempts,
            )
        return response

    return middleware


def _secret_field(ids: tuple[str, ...]) -> str | list[str] | None:
    if not ids:
        return None
    return ids[0] if len(ids) == 1 else list(ids)
