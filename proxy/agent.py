"""The Secrets Manager Agent's HTTP API on a listener of its own (``agent_api``; docs/agent-api.md and
docs/interface.md, "The Agent API").

Apps written against AWS's Secrets Manager Agent (github.com/aws/aws-secretsmanager-agent, a Rust sidecar) or
the Parameters and Secrets Lambda extension ask ``GET /secretsmanager/get?secretId=...`` (or the path form
``GET /v1/<secretId>``) on loopback with the header ``X-Aws-Parameters-Secrets-Token``, and read
GetSecretValue's JSON. This module serves that contract from the same pipeline as every other request: the
request becomes a ``GetSecretValue`` :class:`~proxy.models.Operation`, checked against the model's input shape,
the credential guard and the policy, answered from the secret cache or the upstream (signed by the role,
retried), counted by the same metrics and logged by the same access line (:func:`~proxy.middleware.query_middleware`
with :func:`render_agent_error`).

What the Agent does, and so this listener (the Agent's ``server.rs``, ``parse.rs``, ``cache_manager.rs``,
``utils.rs``):

- ``GET /ping`` answers 200 ``healthy`` without a token; any other method 405.
- Every other request is checked in this order: a ``X-Forwarded-For`` header is 400 ``Forwarded``; a missing or
  wrong token is 403 ``Bad Token`` (the token may come in ``X-Aws-Parameters-Secrets-Token`` or
  ``X-Vault-Token``, the Agent's default ``ssrf_headers``); a method other than ``GET`` is 405 ``Not allowed``;
  a path other than ``/secretsmanager/get`` and ``/v1/...`` is 404 ``Not found``.
- Parameters: ``secretId`` (query form only), ``versionId``, ``versionStage``, ``refreshNow`` (``true``/``1``/
  ``false``/``0``, any case; else 400 ``invalid refreshNow value``); any other is 400 ``unknown parameter:
  <name>``; no secret id is 400 ``missing parameter secretId`` / ``missing secret ID``. A repeated parameter
  takes its last value.
- ``refreshNow=true`` skips the cache and refreshes the entry, as ``Cache-Control: no-cache`` does on the other
  listeners: a failure is answered as the error, never with the cached value.
- The answer is 200 with the Agent's GetSecretValue JSON (:func:`agent_answer`). An error of the call is the
  upstream's status with ``{"__type":"<code>", "message":"<message>"}``; 500 is ``{"__type":"InternalFailure"}``,
  a timeout 504 ``TimeoutError``, an unreachable upstream 502 ``ConnectionError``.
- Too many requests in flight (``limits.max_concurrent_requests``, the Agent's ``max_conn``) is 429
  ``Connection limit exceeded``.

Errors about the HTTP request itself are plain text lines, as the Agent writes its own; errors of the
GetSecretValue call are JSON. What this listener does beyond the Agent: the ``Host`` rule of every listener
(DNS rebinding; 403 ``AccessDenied`` in the JSON shape, from the middleware, on ``/ping`` too), and as plain text
4xx a ``Forwarded`` header refused like ``X-Forwarded-For``, the request target bounded by
``limits.max_get_url_bytes`` (414), and in the path form percent-escapes decoded and ``.``/``..`` segments
refused (the Agent resolves them as a URL parser does, so ``/v1/a/../b`` reads ``b``).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from aiohttp import web
from botocore.model import Shape

from . import errors
from .config import Config
from .handler import SERVICE, send_upstream
from .metrics import Metrics
from .middleware import ADMIN_ROUTE, RequestContext, context, query_middleware
from .models import Operation
from .parse import decode_form, request_head
from .sdk import decode_json_input
from .service import Service
from .translate import answer_error, operation_of, visible_output

PING_PATH = "/ping"
QUERY_PATH = "/secretsmanager/get"
PATH_PREFIX = "/v1/"  # the Agent's default path_prefix
SELECTORS = ("versionId", "versionStage", "refreshNow")  # the parameters of both forms besides secretId
# The headers the Agent looks for the token in (its default ssrf_headers); policy.token_header is taken too.
TOKEN_HEADERS = ("X-Aws-Parameters-Secrets-Token", "X-Vault-Token")
FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded")
# The members of the Agent's answer, in its order (aws_secretsmanager_caching's GetSecretValueOutputDef);
# those in _ALWAYS are written as null when the upstream left them out, the others are left out too.
ANSWER_MEMBERS = ("ARN", "Name", "VersionId", "SecretString", "SecretBinary", "VersionStages", "CreatedDate")
_ALWAYS = frozenset({"ARN", "Name", "VersionId", "CreatedDate"})
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain"


class AgentRequestError(errors.ClientError):
    """An error about the HTTP request (not the GetSecretValue call), answered as the Agent answers its own:
    ``status`` and the message as a plain text line; ``code`` names it in the access line and metrics."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _echo(value: str) -> str:
    """A parameter name echoed in a message: at most 40 characters, control characters shown escaped."""
    shown = value[:40] + ("..." if len(value) > 40 else "")
    return shown.encode("unicode_escape").decode("ascii") if not shown.isprintable() else shown


# ---------------------------------------------------------------------------------------------------------
# the request


@dataclass(frozen=True, slots=True)
class AgentQuery:
    """One Agent request: the secret id (decoded), the version selectors, and whether to skip the cache."""

    secret_id: str
    version_id: str | None = None
    version_stage: str | None = None
    refresh_now: bool = False


def parse_refresh_now(value: str) -> bool:
    """``refreshNow``: ``true``/``1`` or ``false``/``0``, any case (the Agent's ``parse.rs``). Raises
    AgentRequestError 400 ``invalid refreshNow value`` for anything else."""
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise AgentRequestError(400, "InvalidParameterValue", "invalid refreshNow value")


def path_secret_id(raw: str) -> str:
    """The secret id of the path form: what follows ``/v1/`` in the raw path, percent-decoded as UTF-8.

    Raises AgentRequestError 400 for no id (``missing secret ID``, the Agent's text), a malformed escape or
    bytes that are not UTF-8, and a ``.`` or ``..`` segment (a URL parser would resolve it to another path,
    as the Agent's does; secret names rarely hold one, and the query form reads those)."""
    if _BAD_ESCAPE.search(raw):
        raise AgentRequestError(400, "MalformedQueryString", "the secret ID in the path has a malformed percent-escape")
    try:
        secret_id = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise AgentRequestError(400, "MalformedQueryString", "the secret ID in the path is not UTF-8") from None
    if not secret_id:
        raise AgentRequestError(400, "MissingParameter", "missing secret ID")
    if any(segment in (".", "..") for segment in secret_id.split("/")):
        raise AgentRequestError(
            400,
            "InvalidParameterValue",
            "the secret ID in the path has a '.' or '..' segment; send it as secretId= to /secretsmanager/get",
        )
    return secret_id


def parse_agent_request(path: str, query: str) -> AgentQuery:
    """The Agent request in ``path`` (the raw path, as received) and ``query`` (the raw query string), per the
    Agent's ``parse.rs``: ``/secretsmanager/get`` takes ``secretId``, ``/v1/<secretId>`` carries it in the path;
    both take ``versionId``, ``versionStage`` and ``refreshNow``.

    Raises AgentRequestError: 404 ``Not found`` for another path, 400 for an unknown parameter, a missing
    secret id, a bad ``refreshNow`` or a query string that does not decode (form-urlencoded UTF-8)."""
    names: tuple[str, ...]
    if path == QUERY_PATH:
        secret_id, names = "", ("secretId", *SELECTORS)
    elif path.startswith(PATH_PREFIX):
        secret_id, names = path_secret_id(path[len(PATH_PREFIX) :]), SELECTORS
    else:
        raise AgentRequestError(404, "NotFound", "Not found")
    try:
        pairs = decode_form(query.encode("utf-8", "surrogateescape"), "query string")
    except errors.MalformedQueryString as exc:
        raise AgentRequestError(400, exc.code, exc.message) from None
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in names:
            raise AgentRequestError(400, "UnknownParameter", f"unknown parameter: {_echo(name)}")
        values[name] = value  # the last one wins, as in the Agent
    secret_id = values.get("secretId", secret_id)
    if not secret_id:
        raise AgentRequestError(400, "MissingParameter", "missing parameter secretId")
    refresh = values.get("refreshNow")
    return AgentQuery(
        secret_id=secret_id,
        version_id=values.get("versionId"),
        version_stage=values.get("versionStage"),
        refresh_now=parse_refresh_now(refresh) if refresh is not None else False,
    )


def check_agent_head(request: web.Request, service: Service) -> None:
    """The checks before the parameters are read, in the Agent's order (``server.rs``): forwarding headers, the
    token, the method; then the request target's length. (The ``Host`` rule of every listener came first, in
    :func:`~proxy.middleware.query_middleware`.) Raises AgentRequestError."""
    head = request_head(request)
    if any(name in request.headers for name in FORWARDING_HEADERS):
        raise AgentRequestError(400, "Forwarded", "Forwarded")
    token = service.rules.token
    presented = [request.headers.get(name) for name in (*TOKEN_HEADERS, token.header)] if token is not None else []
    if token is None or not any(value is not None and token.accepts(value) for value in presented):
        raise AgentRequestError(403, "BadToken", "Bad Token")
    if request.method != "GET":
        raise AgentRequestError(405, "MethodNotAllowed", "Not allowed")
    size = len(head.target.encode("utf-8", "surrogateescape"))
    limit = service.limits.max_get_url_bytes
    if size > limit:
        raise AgentRequestError(
            414, "RequestURITooLong", f"the request target is {size} bytes, over limits.max_get_url_bytes ({limit})"
        )


def get_secret_value(service: Service, query: AgentQuery) -> Operation:
    """The GetSecretValue operation ``query`` asks for, decoded against the model's input shape (lengths of
    ``SecretId``, ``VersionId``, ``VersionStage``). Raises ValidationError with the service's own code
    (``InvalidParameterException``, docs/interface.md, "Errors")."""
    op = service.translator.operation_model("GetSecretValue", None)
    data: dict[str, Any] = {"SecretId": query.secret_id}
    if query.version_id is not None:
        data["VersionId"] = query.version_id
    if query.version_stage is not None:
        data["VersionStage"] = query.version_stage
    with service.translator.validating():
        return operation_of(op, decode_json_input(data, op, service.translator.limits))


# ---------------------------------------------------------------------------------------------------------
# the answer


def epoch_text(value: Any) -> Any:
    """``CreatedDate`` as the Agent writes it: epoch seconds in a string, the fraction only when there is one
    (``1523477145.713``, ``1700000000``). A value that is not a number is returned as it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(value)


def agent_answer(doc: dict[str, Any]) -> bytes:
    """The Agent's GetSecretValue JSON for the upstream's answer ``doc``: :data:`ANSWER_MEMBERS` in that order,
    compact, UTF-8, with ``CreatedDate`` as :func:`epoch_text`."""
    out: dict[str, Any] = {}
    for member in ANSWER_MEMBERS:
        value = doc.get(member)
        if value is None and member not in _ALWAYS:
            continue
        out[member] = epoch_text(value) if member == "CreatedDate" else value
    try:
        return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate the upstream sent as \ud800: keep it escaped
        return json.dumps(out, separators=(",", ":")).encode("ascii")


def answer_document(body: bytes, output: Shape | None, keep: Callable[[str], bool] | None) -> bytes:
    """The Agent's answer for an upstream success ``body``; with ``keep`` (``policy.allow_secrets``), an answer
    about a secret it refuses is SecretNotFound (:func:`~proxy.translate.visible_output`). Raises BadGateway for a
    body that is not a JSON object."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise errors.BadGateway("the upstream answered GetSecretValue with a body that is not a JSON object")
    if keep is not None and output is not None:
        doc = visible_output(output, doc, keep)
    return agent_answer(doc)


def agent_error_document(code: str, message: str) -> bytes:
    """The Agent's JSON error body (its ``utils.rs`` ``err_response``): ``{"__type":"<code>", "message":"..."}``,
    or ``{"__type":"InternalFailure"}`` for that code or an empty message."""
    if not message or code == "InternalFailure":
        return b'{"__type":"InternalFailure"}'
    return json.dumps({"__type": code, "message": message}, separators=(", ", ":")).encode()


def render_agent_error(error: errors.ProxyError, ctx: RequestContext) -> web.Response:
    """An error on the Agent API's listener, shaped as the Agent shapes it (module docstring)."""
    headers = {"x-amzn-RequestId": ctx.request_id}
    if isinstance(error, AgentRequestError):
        return web.Response(status=error.status, text=error.message, content_type=TEXT_TYPE, headers=headers)
    if type(error) is errors.ServiceUnavailable:  # limits.max_concurrent_requests: the Agent's max_conn
        return web.Response(
            status=429, text="Connection limit exceeded", content_type=TEXT_TYPE, headers={**headers, **error.headers}
        )
    status, code = error.status, error.code
    if isinstance(error, errors.GatewayTimeout):
        code = "TimeoutError"
    elif isinstance(error, errors.BadGateway):
        code = "ConnectionError"
    body = agent_error_document(code, error.message)
    return web.Response(status=status, body=body, content_type=JSON_TYPE, headers=headers)


# ---------------------------------------------------------------------------------------------------------
# the handlers and the listener


async def handle_agent(request: web.Request) -> web.StreamResponse:
    """Answer one Agent request: head checks -> parameters -> GetSecretValue -> guard -> policy -> cache or
    upstream -> the Agent's JSON."""
    service = request.app[SERVICE]
    ctx = context(request)
    check_agent_head(request, service)
    query = parse_agent_request(request.rel_url.raw_path, request.rel_url.raw_query_string)
    ctx.action = "GetSecretValue"
    operation = get_secret_value(service, query)
    ctx.secret_ids = operation.secret_ids
    service.guard.check(operation)
    service.policy.check(operation)
    response = await service.cache.answer(  # after the policy: a denied request never reaches the cache
        operation,
        "no-cache" if query.refresh_now else None,
        lambda: send_upstream(service, ctx, operation, *service.translator.json_request(operation)),
    )
    if response.status >= 300:
        raise answer_error(response, service.policy.ambiguous(operation))
    output = service.translator.operation_model(operation.name, None).output_shape
    body = answer_document(response.body, output, service.policy.answer_filter)
    return web.Response(body=body, content_type=JSON_TYPE, headers={"x-amzn-RequestId": ctx.request_id})


async def ping(request: web.Request) -> web.Response:
    """``GET /ping``: 200 ``healthy``, without a token (the Agent's health check); another method 405."""
    if request.method != "GET":
        return web.Response(status=405, text="Not allowed", content_type=TEXT_TYPE)
    return web.Response(text="healthy", content_type=TEXT_TYPE)


@dataclass
class AgentListener:
    """The Agent API's application, its port once :func:`proxy.app.serve` has bound it, and its state: the
    Query listener's application closes the upstream transport they share only once this one has drained."""

    app: web.Application
    port: int = 0
    serving: bool = False
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


AGENT_LISTENER = web.AppKey("agent_listener", AgentListener)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    listener = app[AGENT_LISTENER]
    listener.serving = True
    try:
        yield
    finally:
        listener.stopped.set()


def agent_listener(cfg: Config, metrics: Metrics, service: Service) -> AgentListener:
    """The Agent API's listener (``agent_api``) on ``service``, the Query listener's: the same policy, caller
    token, cache, transport and credentials. Its error answers are :func:`render_agent_error`'s."""
    app = web.Application(
        middlewares=[query_middleware(metrics, cfg.limits.max_concurrent_requests, service.rules, render_agent_error)],
        handler_args={
            "max_field_size": 16384,
            "max_line_size": max(8190, cfg.limits.max_get_url_bytes + 64),
            "handler_cancellation": True,
        },
    )
    listener = AgentListener(app)
    app[SERVICE] = service
    app[AGENT_LISTENER] = listener
    app.router.add_route("*", PING_PATH, ping, name=f"{ADMIN_ROUTE}agent-ping")
    app.router.add_route("*", "/{tail:.*}", handle_agent)
    app.cleanup_ctx.append(_lifecycle)
    return listener
