"""Services that really speak awsQuery (sts, sns, iam ...): validate, re-encode, sign, stream back (docs/interface.md,
"The upstream request").

The app's form is not forwarded as received: it is decoded against the operation's input shape (the same
:func:`~proxy.translate.decode_input` the Secrets Manager translation uses, so the same errors), checked by
the credential guard and the policy, and written again by botocore's ``QuerySerializer``. What is signed and
sent is exactly what was checked; parameters the model does not know never reach AWS. The upstream's XML
answer is relayed unchanged, chunk by chunk (:mod:`proxy.relay`).
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web
from botocore.serialize import QuerySerializer

from .handler import SERVICE
from .middleware import context
from .models import Operation
from .parse import read_query, request_head
from .relay import QUERY_XML, relay
from .service import Service
from .validate import check_head

_SERIALIZER = QuerySerializer()


def query_form(service: Service, operation: Operation) -> tuple[dict[str, str], bytes]:
    """The awsQuery request for a decoded operation: headers (``Content-Type``) and the form body with
    ``Action``, ``Version`` and the parameters, encoded as botocore encodes them (``urlencode``)."""
    op_model = service.translator.service_model.operation_model(operation.name)
    req = _SERIALIZER.serialize_to_request(operation.input, op_model)
    body = req["body"]
    encoded = urlencode(list(body.items()), doseq=True) if isinstance(body, dict) else body
    return dict(req["headers"]), encoded.encode("utf-8") if isinstance(encoded, str) else encoded


async def handle_passthrough(request: web.Request) -> web.StreamResponse:
    """Answer one Query request for a query-protocol service: rules -> parse -> decode -> guard -> policy ->
    re-encode -> sign -> send -> relay the XML unchanged."""
    service = request.app[SERVICE]
    ctx = context(request)
    check_head(request_head(request), service.rules)
    query = await read_query(request, service.limits.max_body_bytes, service.limits.max_parameters)
    if query.action in service.translator.operation_names:  # named in the metrics also when refused below
        ctx.action = query.action
    operation = service.translator.decode(query.action, query.version, query.params)
    ctx.action, ctx.secret_ids = operation.name, operation.secret_ids
    service.guard.check(operation)
    service.policy.check(operation)
    headers, body = query_form(service, operation)
    return await relay(request, service, ctx, operation, headers, body, QUERY_XML)
