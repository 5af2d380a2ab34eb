"""SDK callers: an AWS SDK's own JSON call, re-signed with the role (docs/interface.md, "SDK calls").

An app built on an AWS SDK, pointed at the proxy (``AWS_ENDPOINT_URL_SECRETS_MANAGER=http://127.0.0.1:8977``)
with placeholder keys, sends ``POST /`` with ``X-Amz-Target: secretsmanager.<Op>`` and an
``application/x-amz-json-1.1`` body, signed with those placeholder keys. The proxy keeps none of the app's
headers (Authorization, X-Amz-*, its User-Agent): it reads the operation from ``X-Amz-Target``, decodes the
body against the operation's input shape from botocore's model (:func:`decode_json_input`), applies the same
rules, credential guard and policy as a Query request, writes the body again with botocore's
``JSONSerializer`` (so what is signed is exactly what was checked: no duplicate keys, no members the model
does not know), signs it with the role and relays the upstream's JSON answer unchanged (:mod:`proxy.relay`).
Errors the proxy raises reach the SDK as JSON 1.1 errors (``{"__type": ..., "message": ...}``).

One exception to "unchanged": with ``policy.allow_secrets`` set, an answer whose output shape can name secrets
(``ListSecrets``' ``SecretList``, ``BatchGetSecretValue``'s ``SecretValues``, any ``ARN``/``Name``) is read whole
(up to ``limits.max_response_bytes``), filtered by the same :func:`~proxy.translate.visible_output` as a Query
answer and written again as JSON (:func:`filtered_answer`), and a listing is paged by the proxy with its own
``NextToken`` (:mod:`proxy.listing`): an SDK call sees no more than a Query request.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import web
from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape

from . import errors
from .handler import SERVICE, send_upstream, upstream_call
from .middleware import RequestContext, context
from .models import Operation
from .parse import read_body, request_head
from .relay import AWS_JSON, answer_headers, relay
from .service import Service
from .shapes import OUTPUT_SECRET_ID_SHAPES
from .translate import (
    InputLimits,
    Translator,
    answer_error,
    check_range,
    operation_of,
    upstream_error,
    utc_timestamp,
    visible_output,
)
from .validate import check_head

# ---------------------------------------------------------------------------------------------------------
# X-Amz-Target and the content type


def sdk_operation(translator: Translator, target: str, content_type: str) -> OperationModel:
    """The operation an SDK call names: ``X-Amz-Target: <targetPrefix>.<Operation>`` from the model's metadata.

    Raises UnsupportedMediaType when the content type is not the model's ``application/x-amz-json-<jsonVersion>``,
    MissingAction / InvalidAction for a target that names no operation of the service.
    """
    model = translator.service_model
    expected = f"application/x-amz-json-{model.metadata.get('jsonVersion', '1.0')}"
    if content_type != expected:
        raise errors.UnsupportedMediaType(f"{model.service_name} takes {expected} bodies, got {content_type}")
    prefix, dot, name = target.strip().rpartition(".")
    if not dot or prefix != model.metadata.get("targetPrefix"):
        raise errors.InvalidAction(
            f"X-Amz-Target must be {model.metadata.get('targetPrefix')}.<Operation>; got {target[:80]!r}"
        )
    return translator.operation_model(name, None)


# The region of a SigV4 Authorization header's credential scope, as every SDK writes it:
# "AWS4-HMAC-SHA256 Credential=<key id>/<yyyymmdd>/<region>/<service>/aws4_request, SignedHeaders=..., Signature=..."
# (AWS, "Elements of an AWS API request signature"). Anything else (unsigned, SigV4a, a scope without a region)
# reads as no region. Bounded, anchored: linear in the header's length.
_SCOPE_REGION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=[^/\s,]{1,128}/[0-9]{8}/([A-Za-z0-9-]{1,64})/[^/\s,]{1,64}/aws4_request"
)


def signed_region(authorization: str | None) -> str | None:
    """The region an SDK signed its call for, from its SigV4 ``Authorization`` header; None when it names none.

    The signature itself is thrown away (the proxy signs again); only the region is kept, to send the call
    where the app meant it to go (docs/interface.md, "SDK calls")."""
    found = _SCOPE_REGION.match((authorization or "").strip())
    return found.group(1) if found else None


# ---------------------------------------------------------------------------------------------------------
# JSON body -> typed input

DEFAULT_LIMITS = InputLimits()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise errors.MalformedJSON(f"the JSON body has the key {key!r} twice")
        out[key] = value
    return out


def load_json(body: bytes) -> Any:
    """Parse an SDK's body (empty means ``{}``). Raises MalformedJSON for bad JSON, duplicate keys, bad UTF-8
    or nesting too deep to parse."""
    if not body.strip():
        return {}
    try:
        return json.loads(body, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise errors.MalformedJSON("the JSON body is nested too deeply") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise errors.MalformedJSON("the body is not JSON (RFC 8259, UTF-8)") from None


class _Decoder:
    """One body's decode: counts values against ``limits`` and names positions like ``Filters[0].Key``."""

    def __init__(self, limits: InputLimits) -> None:
        self.limits = limits
        self.values = 0

    def decode(self, shape: Shape, value: Any, path: str) -> Any:
        if isinstance(shape, StructureShape):
            return self.structure(shape, value, path)
        if isinstance(shape, ListShape):
            return self.list(shape, value, path)
        if isinstance(shape, MapShape):
            return self.map(shape, value, path)
        self.values += 1
        if self.values > self.limits.max_parameters:
            raise errors.ValidationError(
                f"more than limits.max_parameters ({self.limits.max_parameters}) values in one request"
            )
        return _scalar(shape, value, path)

    def structure(self, shape: StructureShape, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise errors.ValidationError(f"{path or 'the body'}: must be a JSON object ({shape.name})")
        members = {m.serialization.get("name", name): (name, m) for name, m in shape.members.items()}
        out: dict[str, Any] = {}
        for key, item in value.items():
            found = members.get(key)
            where = f"{path}.{key}" if path else key
            if found is None:
                raise errors.ValidationError(f"{where} is not a member of {shape.name}")
            if item is None:  # an explicit null is an absent member, as AWS reads it
                continue
            name, member = found
            out[name] = self.decode(member, item, where)
        for required in shape.required_members:
            if required not in out:
                raise errors.ValidationError(f"{f'{path}.{required}' if path else required} is required")
        return out

    def check_count(self, shape: Shape, count: int, path: str, what: str) -> None:
        """A list's items or a map's entries (``what``): at most ``limits.max_list_members``, and within the
        model's ``min``/``max``. Raises InvalidParameterValue naming ``path``."""
        if count > self.limits.max_list_members:
            raise errors.ValidationError(
                f"{path}: {count} {what} is over limits.max_list_members ({self.limits.max_list_members})"
            )
        check_range(shape, count, path, what)

    def list(self, shape: ListShape, value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise errors.ValidationError(f"{path}: must be a JSON array")
        self.check_count(shape, len(value), path, "items")
        return [self.decode(shape.member, item, f"{path}[{i}]") for i, item in enumerate(value)]

    def map(self, shape: MapShape, value: Any, path: str) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise errors.ValidationError(f"{path}: must be a JSON object")
        self.check_count(shape, len(value), path, "entries")
        return {
            self.decode(shape.key, k, f"{path} key"): self.decode(shape.value, v, f"{path}.{k}")
            for k, v in value.items()
        }


def _scalar(shape: Shape, value: Any, path: str) -> Any:
    kind = shape.type_name
    if kind == "string":
        if not isinstance(value, str):
            raise errors.ValidationError(f"{path}: must be a string")
        check_range(shape, len(value), path, "length")
        return value
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise errors.ValidationError(f"{path}: must be an integer")
        check_range(shape, value, path, "value")
        return value
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise errors.ValidationError(f"{path}: must be a finite number")
        return float(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise errors.ValidationError(f"{path}: must be true or false")
        return value
    if kind == "blob":
        try:
            raw = base64.b64decode(value, validate=True) if isinstance(value, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None:
            raise errors.ValidationError(f"{path}: must be a base64 string (RFC 4648, with padding)")
        check_range(shape, len(raw), path, "bytes")
        return raw
    if kind == "timestamp":
        try:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return datetime.datetime.fromtimestamp(value, datetime.UTC)
            if isinstance(value, str):
                return utc_timestamp(value)
        except (ValueError, TypeError, OverflowError, OSError):
            pass
        raise errors.ValidationError(f"{path}: must be epoch seconds or an ISO 8601 timestamp")
    raise errors.ValidationError(f"{path}: values of type {kind} cannot be sent")  # pragma: no cover


def decode_json_input(doc: Any, operation: OperationModel, limits: InputLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Decode a parsed JSON 1.1 body into the operation's input as botocore-typed data (the same form
    :func:`~proxy.translate.decode_input` gives for awsQuery), filling a missing idempotency token with a UUID.

    Raises ValidationError for anything wrong in the body's content (an SDK caller gets the service's own
    validation error for all of it, docs/interface.md, "SDK callers"): a member the input shape lacks, a
    required member absent, a wrong JSON type, outside the model's min/max, over a ``limits`` count.
    """
    shape = operation.input_shape
    if shape is None:
        if doc not in ({}, None):
            raise errors.ValidationError(f"{operation.name} takes no parameters")
        return {}
    result = _Decoder(limits).structure(shape, doc, "")
    for member in operation.idempotent_members:
        if member not in result:
            result[member] = str(uuid.uuid4())
    return result


def decode_sdk_call(translator: Translator, op: OperationModel, body: bytes) -> Operation:
    """An SDK call's body as the :class:`~proxy.models.Operation` the policy and the serializer take.

    Raises MalformedJSON (:func:`load_json`) and ValidationError with the service's code
    (:attr:`~proxy.translate.Translator.validation_code`)."""
    with translator.validating():
        return operation_of(op, decode_json_input(load_json(body), op, translator.limits))


# ---------------------------------------------------------------------------------------------------------
# answers filtered by policy.allow_secrets


def names_secrets(shape: Shape | None, seen: frozenset[str] = frozenset()) -> bool:
    """True when ``shape`` (an output shape) has, at any depth, a member of a secret-id shape
    (:data:`~proxy.shapes.OUTPUT_SECRET_ID_SHAPES`): its answers can carry secrets the policy filters."""
    if shape is None or shape.name in seen:
        return False
    seen = seen | {shape.name}
    if isinstance(shape, StructureShape):
        return any(m.name in OUTPUT_SECRET_ID_SHAPES or names_secrets(m, seen) for m in shape.members.values())
    if isinstance(shape, ListShape):
        return names_secrets(shape.member, seen)
    if isinstance(shape, MapShape):
        return names_secrets(shape.value, seen)
    return False


async def filtered_answer(
    service: Service,
    ctx: RequestContext,
    operation: Operation,
    output: Shape,
    headers: dict[str, str],
    payload: bytes,
    keep: Callable[[str], bool],
) -> web.Response:
    """Send, read the whole answer (up to ``limits.max_response_bytes``) and answer the SDK with it after
    :func:`~proxy.translate.visible_output` has taken out every secret ``keep`` refuses.

    A listing that names no secret (``ListSecrets``, ``BatchGetSecretValue`` by ``Filters``) is paged by the
    proxy itself (:meth:`proxy.listing.Listings.answer`), with its own ``NextToken``. A JSON error body is
    relayed unchanged. Raises what :func:`~proxy.handler.send_upstream` raises, the
    upstream's error for a non-JSON error body, BadGateway for a success that is not a JSON object, and
    SecretNotFound for an answer about a secret ``keep`` refuses.
    """
    listings = service.regional(operation.region).listings  # tokens bound to the region's endpoint
    listing = listings.pages(operation) if listings is not None else None
    if listings is not None and listing is not None:  # paged by the proxy (proxy/listing.py)
        response = await listings.answer(listing, operation, keep, upstream_call(service, ctx, operation))
    else:
        response = await send_upstream(service, ctx, operation, headers, payload)
    out_headers = answer_headers(response.headers, ctx.request_id)
    if response.status >= 300:
        if service.policy.ambiguous(operation):
            raise answer_error(response, True)  # answered as an answer about a hidden secret is
        error = upstream_error(response)
        if not AWS_JSON.holds(response.body):
            raise error
        ctx.error_code = error.code
        return web.Response(status=response.status, body=response.body, headers=out_headers)
    try:
        doc = json.loads(response.body) if response.body.strip() else {}
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise errors.BadGateway(f"the upstream answered {operation.name} with a body that is not a JSON object")
    body = json.dumps(visible_output(output, doc, keep)).encode()
    return web.Response(status=response.status, body=body, headers=out_headers)


# ---------------------------------------------------------------------------------------------------------
# the handler


async def handle_sdk(request: web.Request) -> web.StreamResponse:
    """Answer one SDK call: rules -> target -> the signed region -> bounded body -> decode -> guard -> policy ->
    JSON 1.1 -> sign for that region -> send to its endpoint -> relay the JSON answer unchanged."""
    service: Service = request.app[SERVICE]
    ctx = context(request)
    check_head(request_head(request), service.rules)
    op = sdk_operation(service.translator, request.headers.get("X-Amz-Target", ""), request.content_type)
    ctx.action = op.name
    region = signed_region(request.headers.get("Authorization"))
    service.regional(region)  # a region the listener does not serve is refused before the body is read
    body = await read_body(request, service.limits.max_body_bytes)
    operation = replace(decode_sdk_call(service.translator, op, body), region=region)
    ctx.secret_ids = operation.secret_ids
    service.guard.check(operation)
    service.policy.check(operation)
    headers, payload = service.translator.json_request(operation)
    keep, output = service.policy.answer_filter, op.output_shape
    # a write leaves no cached answer of the secrets it names, in any worker and any region (the stamp table is
    # the process's), before it is answered (the relay writes as it reads: its hook runs before the first byte;
    # the finally covers errors and timeouts)
    forget = None
    if not operation.is_read and service.cache.enabled:
        forget = functools.partial(service.cache.invalidate, operation.secret_ids)
    try:
        if keep is not None and output is not None and names_secrets(output):
            return await filtered_answer(service, ctx, operation, output, headers, payload, keep)
        return await relay(request, service, ctx, operation, headers, payload, AWS_JSON, answered=forget)
    finally:
        if forget is not None:
            forget()
