"""The pipeline, in the order of the spec: rules -> parse -> translate -> policy -> credentials -> sign ->
send -> relay. Each stage is a call into its own module; this file only sequences them."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from .attempts import AttemptRecord, send_with_retries
from .credentials import Snapshot
from .middleware import RequestContext, context
from .models import Operation, SignedRequest, UpstreamResponse
from .parse import read_query, request_head
from .respond import send_document
from .service import Service
from .signing import sign
from .translate import answer_error
from .validate import check_head

SERVICE = web.AppKey("service", Service)
# An upstream request id the proxy repeats (header, XML, log line): AWS's are UUIDs or base64-like tokens. Any
# other value (control characters, non-UTF-8 bytes, kilobytes of it) is not echoed; the proxy's own id stays.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


async def handle_query(request: web.Request) -> web.StreamResponse:
    """Answer one Query API request (docs/interface.md, "Query requests" to "Errors")."""
    service = request.app[SERVICE]
    ctx = context(request)
    check_head(request_head(request), service.rules)  # HTTPS / size / header rules
    query = await read_query(request, service.limits.max_body_bytes, service.limits.max_parameters)
    if query.action in service.translator.operation_names:  # named in the metrics also when refused below
        ctx.action = query.action
    operation = service.translator.decode(query.action, query.version, query.params)
    ctx.action, ctx.secret_ids = operation.name, operation.secret_ids
    service.guard.check(operation)
    service.policy.check(operation)
    document = await answer_document(request, service, ctx, operation)
    return await send_document(request, document, ctx)  # with backpressure


async def answer_document(request: web.Request, service: Service, ctx: RequestContext, operation: Operation) -> bytes:
    """The answer (from the cache or the upstream) as the Query XML document; raises the upstream's error.

    The upstream answer is dropped on return: while a slow client reads, only the document is held."""
    keep = service.policy.answer_filter
    regional = service.regional(operation.region)  # the region is part of the cache key and of the tokens
    listings = regional.listings
    listing = listings.pages(operation) if listings is not None else None
    if listings is not None and listing is not None and keep is not None:  # paged by the proxy
        response = await listings.answer(listing, operation, keep, upstream_call(service, ctx, operation))
    else:
        response = await regional.cache.answer(  # after the policy: a denied request never reaches the cache
            operation,
            request.headers.get("Cache-Control"),
            lambda: send_upstream(service, ctx, operation, *service.translator.json_request(operation)),
        )
    if response.status >= 300:
        raise answer_error(response, service.policy.ambiguous(operation))
    return service.translator.render_result(operation.name, response, ctx.request_id, keep=keep)


def upstream_call(
    service: Service, ctx: RequestContext, operation: Operation
) -> Callable[[dict[str, Any]], Awaitable[UpstreamResponse]]:
    """``call(input)``: ``operation`` with another input (a listing's page), serialized, signed and sent."""

    async def call(data: dict[str, Any]) -> UpstreamResponse:
        page = replace(operation, input=data)
        return await send_upstream(service, ctx, page, *service.translator.json_request(page))

    return call


async def call_upstream(service: Service, operation: Operation) -> UpstreamResponse:
    """An upstream call the proxy makes on its own (the secret cache's refresh-ahead and version checks):
    signed and sent with retries as a request's is, counted in the upstream metrics, with no client and no
    access line. Raises what :func:`send_upstream` raises."""
    ctx = RequestContext(action=operation.name, secret_ids=operation.secret_ids)
    return await send_upstream(service, ctx, operation, *service.translator.json_request(operation))


async def send_upstream(
    service: Service,
    ctx: RequestContext,
    operation: Operation,
    headers: dict[str, str],
    body: bytes,
    send: Callable[[SignedRequest], Awaitable[UpstreamResponse]] | None = None,
) -> UpstreamResponse:
    """Sign with the current credentials and send, with retries (:mod:`proxy.attempts`).

    The endpoint and transport are those of ``operation.region`` (:meth:`~proxy.service.Service.regional`).
    ``send`` replaces the transport's ``send`` (the streaming path, :mod:`proxy.relay`). Records the
    attempts, the upstream status and the upstream's request id (when it looks like one, :data:`REQUEST_ID`)
    on ``ctx``.
    """
    record = AttemptRecord()
    regional = service.regional(operation.region)

    def build(creds: Snapshot) -> SignedRequest:
        return sign(
            method="POST",
            endpoint=regional.endpoint,
            headers=headers,
            body=body,
            credentials=creds,
            clock_offset=service.clock_skew.offset,
        )

    try:
        response = await send_with_retries(
            send=send or regional.upstream.send,
            build=build,
            credentials_get=service.credentials.get,
            credentials_refresh=service.credentials.refresh,
            may_refresh=service.credentials.may_refresh,
            policy=service.attempts,
            retryable=operation.retryable,
            record=record,
            clock_skew=service.clock_skew,
            quota=service.retry_quota,
        )
    finally:
        ctx.attempts = record.attempts
        metrics = service.metrics
        if record.retry_refused:
            metrics.retries_refused.inc()
        metrics.child(metrics.upstream_attempts, operation.name).observe(record.attempts)
        metrics.child(metrics.upstream_duration, operation.name).observe(record.upstream_seconds)
    ctx.upstream_status = response.status
    upstream_id = response.header("x-amzn-RequestId")
    if upstream_id and REQUEST_ID.fullmatch(upstream_id):
        ctx.request_id = upstream_id
    return response
