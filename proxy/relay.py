"""Relaying an upstream answer to the client unchanged, chunk by chunk (the pass-through and SDK paths).

Nothing of the answer is held beyond one chunk: ``StreamResponse.prepare`` -> ``iter_chunked(64 KiB)`` ->
``write`` (which waits while the client's socket is full, so a slow reader slows the upstream read instead
of filling memory) -> ``write_eof``. The upstream connection is closed as soon as the client goes away or
the relay stops for any other reason; a body read to its end goes back to the pool.

Retries (:mod:`proxy.attempts`) decide on the status and, for an error, the body: an error answer is small
and read whole (bounded by ``limits.max_response_bytes``); a success is streamed. An error body in the
caller's protocol (:class:`WireFormat`) is relayed unchanged; any other (an HTML page from a load
balancer, moto's XML for an SDK call) becomes the proxy's own error in the caller's protocol (docs/interface.md,
"Errors").

Once the status line has gone out no error answer can follow: an upstream failure mid-body closes the
client connection, so the client sees a short body (``Content-Length``) or a missing last chunk, never a
truncated answer that looks complete. The access line then says 502 ``UpstreamAborted``, or 499
``ClientClosedRequest`` when the client left.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from . import errors
from .handler import send_upstream
from .middleware import RequestContext
from .models import Operation, SignedRequest, UpstreamResponse
from .respond import CoalescingResponse
from .service import Service
from .translate import upstream_error
from .upstream import UpstreamStream

log = logging.getLogger("proxy.relay")


@dataclass(frozen=True, slots=True)
class WireFormat:
    """What an answer in a protocol looks like: ``first_byte`` of its body (after whitespace)."""

    name: str
    first_byte: bytes

    def holds(self, body: bytes) -> bool:
        return body.lstrip().startswith(self.first_byte)


AWS_JSON = WireFormat("AWS JSON", b"{")
QUERY_XML = WireFormat("Query XML", b"<")

# Not relayed: hop-by-hop headers (RFC 9110 section 7.6.1), the framing aiohttp sets itself, and the
# headers aiohttp's server writes on every answer.
NOT_RELAYED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "date",
        "server",
        "set-cookie",
    }
)
REQUEST_ID_HEADER = "x-amzn-RequestId"
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


def answer_headers(upstream: Iterable[tuple[str, str]], request_id: str) -> list[tuple[str, str]]:
    """The upstream's headers minus :data:`NOT_RELAYED` and minus any holding a control character (which the
    HTTP writer refuses), with ``x-amzn-RequestId: request_id`` (the upstream's own when it sent a well-formed
    one, :func:`~proxy.handler.send_upstream`)."""
    headers = [
        (k, v)
        for k, v in upstream
        if k.lower() not in NOT_RELAYED and k.lower() != REQUEST_ID_HEADER.lower() and not _CONTROL.search(k + v)
    ]
    headers.append((REQUEST_ID_HEADER, request_id))
    return headers


async def relay(
    request: web.Request,
    service: Service,
    ctx: RequestContext,
    operation: Operation,
    headers: dict[str, str],
    body: bytes,
    wire: WireFormat,
    answered: Callable[[], None] | None = None,
) -> web.StreamResponse:
    """Sign and send ``headers``/``body`` (with retries) and relay the answer to ``request``'s client.

    ``answered()`` is called once the upstream has answered and before anything is written to the client
    (the secret cache forgets what a write changed there, before the write is answered). Raises, before
    anything was written: what :func:`~proxy.handler.send_upstream` raises, the upstream's
    error (:func:`~proxy.translate.upstream_error`) when its error body is not in ``wire``'s format, and
    ResponseTooLarge for an error body over ``limits.max_response_bytes``.
    """
    opened: list[UpstreamStream] = []
    limit = service.limits.max_response_bytes
    transport = service.regional(operation.region).upstream

    async def open_stream(signed: SignedRequest) -> UpstreamResponse:
        stream = await transport.open(signed)
        if stream.status < 300:
            opened.append(stream)
            return UpstreamResponse(stream.status, stream.headers, b"")
        try:
            return UpstreamResponse(stream.status, stream.headers, await stream.read(limit))
        finally:
            stream.close()

    try:
        answer = await send_upstream(service, ctx, operation, headers, body, send=open_stream)
    except BaseException:
        for stream in opened:
            stream.close()
        raise
    if answered is not None:
        answered()
    if not opened:
        error = upstream_error(answer)
        if not wire.holds(answer.body):
            raise error
        ctx.error_code = error.code  # relayed unchanged; the metrics still name its code
        return web.Response(
            status=answer.status, body=answer.body, headers=answer_headers(answer.headers, ctx.request_id)
        )
    return await stream_answer(request, opened[-1], ctx)


async def stream_answer(request: web.Request, stream: UpstreamStream, ctx: RequestContext) -> web.StreamResponse:
    """Copy ``stream`` to the client chunk by chunk; never raises once the status line is out.

    Sets ``ctx.stream_status`` when the copy ends early. The upstream connection is closed unless its body
    was read to the end (then it went back to the pool).
    """
    response = CoalescingResponse(status=stream.status, headers=answer_headers(stream.headers, ctx.request_id))
    if stream.content_length is not None:
        response.content_length = stream.content_length
    chunks = stream.chunks()
    try:
        await response.prepare(request)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                await response.write(chunk)
        await response.write_eof()
    except errors.ProxyError as exc:  # the upstream failed mid-body (mapped where aiohttp is imported)
        ctx.stream_status, ctx.stream_code = 502, "UpstreamAborted"
        log.warning(
            "the upstream answer broke off; closing the client connection",
            extra={"request_id": ctx.request_id, "error": exc.code},
        )
        if request.transport is not None:
            request.transport.close()
    except ConnectionError:  # the client went away (aiohttp raises ClientConnectionResetError)
        ctx.stream_status, ctx.stream_code = 499, "ClientClosedRequest"
    finally:
        stream.close()
    return response
