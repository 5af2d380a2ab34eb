"""Reading a Query API request: the query string or form body, decoded once (docs/interface.md, "Query requests").

Decoding is ``application/x-www-form-urlencoded`` in both GET and POST: ``+`` is a space, percent-escapes
(upper or lower hex) are bytes, the bytes are UTF-8. A literal plus arrives as ``%2B`` and stays a plus.
Malformed escapes and invalid UTF-8 are errors (MalformedQueryString), not silently kept.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import unquote_to_bytes

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from . import errors
from .models import QueryRequest, RequestHead
from .validate import SDK_TYPES

# The app's own signing parameters: dropped, never forwarded, never an error (docs/interface.md, "Query requests").
SIGNING_PARAMETERS = frozenset(
    {
        "AWSAccessKeyId",
        "Signature",
        "SignatureMethod",
        "SignatureVersion",
        "Timestamp",
        "Expires",
        "SecurityToken",
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
    }
)

_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# Names query_request takes out of the parameters (as bytes): not counted against limits.max_parameters.
_UNCOUNTED = frozenset(name.encode() for name in (*SIGNING_PARAMETERS, "Action", "Version"))
# A request is also refused when it holds more than RAW_PAIRS_FACTOR * max_parameters + len(_UNCOUNTED)
# name=value pairs in all, whatever their names: room for every parameter, Action, Version and each signing
# parameter once, and as many again, while 23,000 repeated ``Signature=&`` (a 256 KiB body, ~40-60 ms of
# decoding, all dropped afterwards) are refused unread.
RAW_PAIRS_FACTOR = 2
_PART = re.compile(rb"[^&]+")
# A body of at most limits.max_body_bytes from a client on loopback arrives in milliseconds; one that stops
# arriving would hold its limits.max_concurrent_requests slot (and the connection) for ever.
BODY_TIMEOUT_SECONDS = 10.0


def decode_form(raw: bytes, where: str) -> list[tuple[str, str]]:
    """Decode ``a=1&b=x+y`` into ``[("a", "1"), ("b", "x y")]``; ``&&`` and empty parts are skipped, a name
    without ``=`` has the empty value. Raises MalformedQueryString naming ``where`` (query string or body)."""
    if _BAD_ESCAPE.search(raw):
        raise errors.MalformedQueryString(f"the {where} has a malformed percent-escape (use %XX with hex digits)")
    pairs: list[tuple[str, str]] = []
    for part in raw.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        try:
            pairs.append(
                (
                    unquote_to_bytes(name.replace(b"+", b" ")).decode("utf-8"),
                    unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8"),
                )
            )
        except UnicodeDecodeError:
            raise errors.MalformedQueryString(f"the {where} is not UTF-8 after percent-decoding") from None
    return pairs


def too_many_parameters(max_parameters: int) -> errors.InvalidParameterValue:
    """The error of the ``limits.max_parameters`` rule (docs/interface.md, "Query requests" and "Errors"): raised
    before decoding by :func:`check_parameter_count`, and after it by :func:`proxy.translate.decode_input`."""
    return errors.InvalidParameterValue(f"more than limits.max_parameters ({max_parameters}) parameters in one request")


def max_raw_pairs(max_parameters: int) -> int:
    """How many non-empty ``name=value`` pairs one request may hold in all, Action, Version and signing
    parameters included: ``RAW_PAIRS_FACTOR * max_parameters`` plus one of each name that is not counted."""
    return RAW_PAIRS_FACTOR * max_parameters + len(_UNCOUNTED)


def check_parameter_count(max_parameters: int, *sources: bytes) -> None:
    """Refuse a raw query string and form body holding more than ``max_parameters`` parameters before any of
    it is decoded: a 256 KiB body of 100,000 ``a=&`` pairs would otherwise be decoded whole first.

    Counts what :func:`query_request` keeps as parameters: non-empty ``&``-separated parts not named
    ``Action``, ``Version`` or a signing parameter (names compared after percent-decoding). Also refuses more
    than :func:`max_raw_pairs` non-empty parts in all, whatever their names (the signing parameters are
    dropped after decoding, so repeating them would otherwise pad a body that is decoded whole). Costs one
    ``bytes.count`` per source while the ``&`` separators are within ``max_parameters``, else a scan that
    stops at the first part over either bound. Raises InvalidParameterValue (:func:`too_many_parameters`).
    """
    if sum(raw.count(b"&") + 1 for raw in sources if raw) <= max_parameters:
        return
    raw_limit = max_raw_pairs(max_parameters)
    counted = pairs = 0
    for raw in sources:
        for part in _PART.finditer(raw):
            pairs += 1
            if pairs > raw_limit:
                raise too_many_parameters(max_parameters)
            name = part.group().partition(b"=")[0]
            if b"%" in name or b"+" in name:
                name = unquote_to_bytes(name.replace(b"+", b" "))
            if name not in _UNCOUNTED:
                counted += 1
                if counted > max_parameters:
                    raise too_many_parameters(max_parameters)


async def read_body(request: web.Request, max_body_bytes: int) -> bytes:
    """Read the whole body, Content-Length or chunked, stopping at ``max_body_bytes`` (bytes).

    Raises RequestEntityTooLarge as soon as the announced length or the bytes read pass the limit;
    MalformedQueryString when aiohttp's HTTP parser finds the body's framing broken while it is read;
    RequestTimeout when the whole body has not arrived within :data:`BODY_TIMEOUT_SECONDS`.
    """
    declared = request.content_length
    if declared is not None and declared > max_body_bytes:
        raise _too_large(max_body_bytes)
    content = request.content
    if content.is_eof() and content.exception() is None:  # the whole body came with the head: no wait, no timer
        whole = content.read_nowait()
        if len(whole) > max_body_bytes:
            raise _too_large(max_body_bytes)
        return whole
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            async for chunk in content.iter_any():
                body += chunk
                if len(body) > max_body_bytes:
                    raise _too_large(max_body_bytes)
    except TimeoutError:  # aiohttp discards what may still come of the body (lingering close), then closes
        raise errors.RequestTimeout(
            f"the request body did not arrive within {BODY_TIMEOUT_SECONDS:g} s "
            "(is Content-Length larger than the body, or a chunked body missing its last chunk?)"
        ) from None
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        raise errors.MalformedQueryString(f"the request body could not be read: {type(exc).__name__}") from None
    return bytes(body)


def _too_large(max_body_bytes: int) -> errors.RequestEntityTooLarge:
    return errors.RequestEntityTooLarge(f"the request body is over limits.max_body_bytes ({max_body_bytes} bytes)")


def query_request(method: str, raw_query: bytes, body: bytes | None, max_parameters: int | None = None) -> QueryRequest:
    """Build the :class:`QueryRequest` from the raw query string and (for POST) the form body.

    Parameters from both are taken, query string first. ``Action`` and ``Version`` are lifted out; the app's
    signing parameters are dropped. With ``max_parameters`` (``limits.max_parameters``) the parameters are
    counted first (:func:`check_parameter_count`). Raises MalformedQueryString; InvalidParameterValue when
    Action or Version is given twice or there are more than ``max_parameters`` parameters.
    """
    if max_parameters is not None:
        check_parameter_count(max_parameters, raw_query, body or b"")
    pairs = decode_form(raw_query, "query string")
    if body:
        pairs += decode_form(body, "request body")
    action: str | None = None
    version: str | None = None
    params: list[tuple[str, str]] = []
    for name, value in pairs:
        if name == "Action":
            if action is not None:
                raise errors.InvalidParameterValue("Action is given more than once")
            action = value
        elif name == "Version":
            if version is not None:
                raise errors.InvalidParameterValue("Version is given more than once")
            version = value
        elif name not in SIGNING_PARAMETERS:
            params.append((name, value))
    return QueryRequest(method=method, action=action or "", version=version or None, params=tuple(params))


def raw_query(request: web.Request) -> bytes:
    """The query string exactly as received (before any decoding)."""
    _, _, query = request.raw_path.partition("?")
    return query.encode("utf-8", "surrogateescape")


async def read_query(request: web.Request, max_body_bytes: int, max_parameters: int) -> QueryRequest:
    """Read a GET or form POST Query request (the content type was checked by :mod:`proxy.validate`), at most
    ``max_body_bytes`` of body and ``max_parameters`` parameters (counted before decoding)."""
    body = await read_body(request, max_body_bytes) if request.method == "POST" else None
    return query_request(request.method, raw_query(request), body, max_parameters)


def request_head(request: web.Request) -> RequestHead:
    """The :class:`RequestHead` the rules of :mod:`proxy.validate` look at."""
    return RequestHead(
        method=request.method,
        path=request.path,
        target=request.raw_path,
        host=request.headers.get("Host"),
        content_type=request.content_type if request.body_exists or request.method == "POST" else "",
        has_amz_target="X-Amz-Target" in request.headers,
        headers=request.headers,
    )


def is_sdk_request(request: web.Request) -> bool:
    """An SDK's AWS JSON call (docs/interface.md, "SDK calls"): POST with ``X-Amz-Target`` and an
    ``application/x-amz-json-1.x`` body. Such a caller gets JSON answers and errors; everything else on ``/`` is a
    Query request."""
    return request.method == "POST" and "X-Amz-Target" in request.headers and request.content_type in SDK_TYPES
