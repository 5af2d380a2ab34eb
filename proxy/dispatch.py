"""Which pipeline answers a request: a table keyed by the request's kind and the upstream's protocol.

==========  ===============  ===========================================================================
request     service model    pipeline
==========  ===============  ===========================================================================
Query       ``json``         :func:`proxy.handler.handle_query`: translated to JSON 1.1, answered in XML
SDK (JSON)  ``json``         :func:`proxy.sdk.handle_sdk`: re-signed, the JSON answer relayed unchanged
Query       ``query``        :func:`proxy.passthrough.handle_passthrough`: re-encoded, XML relayed unchanged
SDK (JSON)  ``query``        415 UnsupportedMediaType (the service speaks awsQuery; SDKs send it forms)
==========  ===============  ===========================================================================

The request's kind is :func:`proxy.parse.is_sdk_request`, the same test the middleware uses to choose the
error format. :data:`PROTOCOLS` (the services a listener can front) follows from the table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from . import errors
from .handler import SERVICE, handle_query
from .parse import is_sdk_request, request_head
from .passthrough import handle_passthrough
from .sdk import handle_sdk
from .validate import check_head

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

QUERY, SDK = "query", "sdk"

HANDLERS: dict[tuple[str, str], Handler] = {
    (QUERY, "json"): handle_query,
    (SDK, "json"): handle_sdk,
    (QUERY, "query"): handle_passthrough,
}

PROTOCOLS = frozenset(protocol for _, protocol in HANDLERS)


def request_kind(request: web.Request) -> str:
    """``"sdk"`` for an SDK's AWS JSON call, else ``"query"``."""
    return SDK if is_sdk_request(request) else QUERY


async def handle(request: web.Request) -> web.StreamResponse:
    """The route handler of every listener: pick the pipeline from :data:`HANDLERS`."""
    service = request.app[SERVICE]
    handler = HANDLERS.get((request_kind(request), service.protocol))
    if handler is None:
        check_head(request_head(request), service.rules)  # the Host rule and friends come first
        raise errors.UnsupportedMediaType(
            f"{service.translator.service_model.service_name} speaks awsQuery: send "
            "application/x-www-form-urlencoded Query requests (an AWS SDK does so for this service)"
        )
    return await handler(request)
