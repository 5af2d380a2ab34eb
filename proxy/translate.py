"""Translation between the awsQuery wire form and AWS JSON 1.1, driven by botocore's service model.

There is no per-operation code: every operation of the loaded model works, and new operations work when
botocore's model gains them.

Request direction (docs/interface.md, "Query requests" and "The upstream request")::

    [("SecretIdList.member.1", "a"), ...]  --decode_input-->  {"SecretIdList": ["a"], ...}
        --botocore JSONSerializer-->  POST / X-Amz-Target: secretsmanager.Op, JSON body

:func:`decode_input` is the inverse of botocore's ``QuerySerializer`` (``botocore/serialize.py``): structures
``A.B``, lists ``A.member.N``, maps ``A.entry.N.key`` / ``A.entry.N.value``, booleans ``true``/``false``, blobs
base64, timestamps ISO 8601 or epoch seconds. Values are typed from the operation's input shape.

Response direction (docs/interface.md, "Success answers"): the JSON body is read with botocore's ``JSONParser`` against
the output shape (timestamps and blobs kept as sent), then :func:`render_result` writes the Query XML that botocore's
``QueryParser`` reads: members in model order, lists as ``<member>``, maps as ``<entry><key/><value/></entry>``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from xml.etree import ElementTree

from botocore.model import ListShape, MapShape, OperationModel, ServiceModel, Shape, StructureShape
from botocore.parsers import JSONParser, ResponseParserError
from botocore.serialize import JSONSerializer
from botocore.utils import parse_to_aware_datetime

from . import errors
from .models import Operation, UpstreamResponse
from .parse import too_many_parameters
from .render import Fallback, Plan
from .shapes import OUTPUT_SECRET_ID_SHAPES, SECRET_ID_SHAPES, is_read_operation, iso8601, xml_text

# ---------------------------------------------------------------------------------------------------------
# awsQuery parameters -> typed input


@dataclass(frozen=True, slots=True)
class InputLimits:
    """``limits.max_parameters`` and ``limits.max_list_members`` (docs/interface.md, "Query requests")."""

    max_parameters: int = 1000
    max_list_members: int = 1000


class _Node:
    """One level of the dotted parameter names: ``A.member.1`` is A -> member -> 1."""

    __slots__ = ("value", "children")

    def __init__(self) -> None:
        self.value: str | None = None
        self.children: dict[str, _Node] = {}


_INDEX = re.compile(r"[1-9][0-9]{0,8}")
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_SHAPE_KIND = {"list": "a list", "map": "a map", "structure": "a structure"}


def _tree(params: Iterable[tuple[str, str]], limits: InputLimits) -> _Node:
    root = _Node()
    count = 0
    for name, value in params:
        count += 1
        if count > limits.max_parameters:
            raise too_many_parameters(limits.max_parameters)
        node = root
        for part in name.split("."):
            if not part:
                raise errors.UnknownParameter(f"parameter name {name!r} has an empty part")
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = _Node()
            node = child
        if node.value is not None:
            raise errors.InvalidParameterValue(f"parameter {name} is given more than once")
        node.value = value
    return root


def decode_input(
    params: Iterable[tuple[str, str]], operation: OperationModel, limits: InputLimits = InputLimits()
) -> dict[str, Any]:
    """Decode awsQuery ``(name, value)`` pairs into the operation's input as botocore-typed data.

    Returns ``{member: value}`` with str, int, float, bool, bytes (blobs), datetime (timestamps), list and
    dict values, ready for botocore's JSONSerializer. Missing idempotency tokens (members marked
    ``idempotencyToken``, e.g. ``ClientRequestToken``) get a fresh UUID, as botocore's
    ``generate_idempotent_uuid`` handler does.

    Raises the Query wire form's errors: UnknownParameter (a name the input shape lacks), InvalidParameterValue
    (an index gap, a name given twice, a value on a list or structure, over a ``limits`` count), MissingParameter
    (a map entry without its key or value); and ValidationError for what the model constrains (a wrong type, out
    of the model's min/max, a required member absent), docs/interface.md, "Errors".
    """
    root = _tree(params, limits)
    shape = operation.input_shape
    if shape is None:
        if root.children:
            first = next(iter(root.children))
            raise errors.UnknownParameter(f"{operation.name} takes no parameters; got {first}")
        return {}
    result: dict[str, Any] = _decode_structure(shape, root, "", limits)
    for member in operation.idempotent_members:
        if member not in result:
            result[member] = str(uuid.uuid4())
    return result


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _decode(shape: Shape, node: _Node, path: str, limits: InputLimits) -> Any:
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(shape, StructureShape)
        return _decode_structure(shape, node, path, limits)
    if kind == "list":
        assert isinstance(shape, ListShape)
        return _decode_list(shape, node, path, limits)
    if kind == "map":
        assert isinstance(shape, MapShape)
        return _decode_map(shape, node, path, limits)
    if node.children:
        child = next(iter(node.children))
        raise errors.UnknownParameter(f"{_join(path, child)}: {path} is a single value and has no members")
    assert node.value is not None
    return _decode_scalar(shape, node.value, path)


# How a bound reads for each kind of measure, in Secrets Manager's own words ("ClientRequestToken must be 32-64
# characters long.", "RotationRules.AutomaticallyAfterDays must be within 1-1000."): (verb, unit).
RANGE_WORDS = {
    "value": ("be", ""),
    "length": ("be", " characters long"),
    "bytes": ("be", " bytes long"),
    "items": ("have", " items"),
    "entries": ("have", " entries"),
}


def check_range(shape: Shape, measure: float, path: str, what: str) -> None:
    """The model's ``min``/``max`` for ``shape``, applied to ``measure``: a value, a length in characters or
    bytes, a number of items or entries (``what``, a key of :data:`RANGE_WORDS`).

    Raises ValidationError naming ``path`` in the service's wording (``Name must be 1-512 characters long.``)."""
    lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
    if (lo is None or measure >= lo) and (hi is None or measure <= hi):
        return
    verb, unit = RANGE_WORDS[what]
    if lo is not None and hi is not None:
        bound = f"within {lo}-{hi}" if what == "value" else f"{lo}-{hi}"
    else:
        bound = f"at least {lo}" if lo is not None else f"at most {hi}"
    raise errors.ValidationError(f"{path} must {verb} {bound}{unit}.")


def _no_direct_value(node: _Node, path: str, kind: str, hint: str) -> None:
    if node.value is not None and node.value != "":
        raise errors.InvalidParameterValue(f"{path} is {kind}: send it as {hint}")


def _decode_structure(shape: StructureShape, node: _Node, path: str, limits: InputLimits) -> dict[str, Any]:
    if path:
        _no_direct_value(node, path, "a structure", f"{path}.<Member>=value")
    by_wire_name = _wire_members(shape)
    out: dict[str, Any] = {}
    for wire, child in node.children.items():
        found = by_wire_name.get(wire)
        if found is None:
            raise errors.UnknownParameter(f"{_join(path, wire)} is not a parameter of {shape.name}")
        name, member_shape = found
        out[name] = _decode(member_shape, child, _join(path, wire), limits)
    for required in shape.required_members:
        if required not in out:
            raise errors.ValidationError(f"{_join(path, required)} is required")
    return out


def _wire_members(shape: StructureShape) -> dict[str, tuple[str, Shape]]:
    return {m.serialization.get("name", name): (name, m) for name, m in shape.members.items()}


def _indexed(node: _Node, path: str, limits: InputLimits) -> list[_Node]:
    items: dict[int, _Node] = {}
    for key, child in node.children.items():
        if not _INDEX.fullmatch(key):
            raise errors.InvalidParameterValue(f"{_join(path, key)}: list and map indices are 1, 2, 3 ...")
        items[int(key)] = child
    highest = max(items) if items else 0
    if highest > limits.max_list_members:
        raise errors.InvalidParameterValue(
            f"{path}: index {highest} is over limits.max_list_members ({limits.max_list_members})"
        )
    if highest != len(items):
        missing = min(set(range(1, highest + 1)) - set(items))
        raise errors.InvalidParameterValue(f"{path}: index {missing} is missing; indices start at 1 with no gaps")
    return [items[i] for i in range(1, highest + 1)]


def _decode_list(shape: ListShape, node: _Node, path: str, limits: InputLimits) -> list[Any]:
    flattened = shape.serialization.get("flattened", False)
    list_name = shape.member.serialization.get("name", "member")
    _no_direct_value(node, path, "a list", f"{path}.{list_name}.1=value" if not flattened else f"{path}.1=value")
    if flattened:
        container = node
    else:
        for key in node.children:
            if key != list_name:
                raise errors.UnknownParameter(f"{_join(path, key)}: list items are {path}.{list_name}.N")
        container = node.children.get(list_name, _Node())
    base = path if flattened else f"{path}.{list_name}"
    items = _indexed(container, base, limits)
    out = [_decode(shape.member, item, f"{base}.{i}", limits) for i, item in enumerate(items, 1)]
    check_range(shape, len(out), path, "items")
    return out


def _decode_map(shape: MapShape, node: _Node, path: str, limits: InputLimits) -> dict[Any, Any]:
    flattened = shape.serialization.get("flattened", False)
    key_name = shape.key.serialization.get("name", "key")
    value_name = shape.value.serialization.get("name", "value")
    _no_direct_value(node, path, "a map", f"{path}.entry.1.{key_name}=k&{path}.entry.1.{value_name}=v")
    if flattened:
        container = node
    else:
        for key in node.children:
            if key != "entry":
                raise errors.UnknownParameter(f"{_join(path, key)}: map entries are {path}.entry.N.{key_name}")
        container = node.children.get("entry", _Node())
    base = path if flattened else f"{path}.entry"
    out: dict[Any, Any] = {}
    for i, entry in enumerate(_indexed(container, base, limits), 1):
        where = f"{base}.{i}"
        for key in entry.children:
            if key not in (key_name, value_name):
                raise errors.UnknownParameter(f"{where}.{key}: a map entry has {key_name} and {value_name}")
        if entry.value is not None or key_name not in entry.children:
            raise errors.MissingParameter(f"{where}.{key_name} is required")
        if value_name not in entry.children:
            raise errors.MissingParameter(f"{where}.{value_name} is required")
        k = _decode(shape.key, entry.children[key_name], f"{where}.{key_name}", limits)
        out[k] = _decode(shape.value, entry.children[value_name], f"{where}.{value_name}", limits)
    check_range(shape, len(out), path, "entries")
    return out


def _decode_scalar(shape: Shape, value: str, path: str) -> Any:
    kind = shape.type_name
    if kind == "string":
        check_range(shape, len(value), path, "length")
        return value
    if kind in ("integer", "long"):
        if not _INTEGER.fullmatch(value):
            raise errors.ValidationError(f"{path}: must be an integer, got {_show(value)}")
        number = int(value)
        check_range(shape, number, path, "value")
        return number
    if kind in ("float", "double"):
        try:
            real = float(value)
        except ValueError:
            raise errors.ValidationError(f"{path}: must be a number, got {_show(value)}") from None
        if real != real or real in (float("inf"), float("-inf")):
            raise errors.ValidationError(f"{path}: must be a finite number")
        return real
    if kind == "boolean":
        lowered = value.lower()
        if lowered not in ("true", "false"):
            raise errors.ValidationError(f"{path}: must be true or false, got {_show(value)}")
        return lowered == "true"
    if kind == "blob":
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise errors.ValidationError(f"{path}: must be base64 (RFC 4648, with padding)") from None
        check_range(shape, len(raw), path, "bytes")
        return raw
    if kind == "timestamp":
        try:
            return utc_timestamp(value)
        except ValueError:
            raise errors.ValidationError(
                f"{path}: must be an ISO 8601 timestamp such as 2018-04-11T20:05:45.713Z"
            ) from None
    raise errors.ValidationError(f"{path}: values of type {kind} cannot be sent")  # pragma: no cover


def utc_timestamp(value: str) -> datetime.datetime:
    """A timestamp parameter (ISO 8601 or epoch seconds) as a UTC datetime, the form botocore's serializers
    write without failing. A timestamp without a zone is UTC, as botocore's ``parse_to_aware_datetime`` (which
    the serializers use) reads it, whatever the host's zone. Raises ValueError for anything else, including
    what botocore gives up on with a RuntimeError (``1e400``, ``inf``) and a date that leaves datetime's range
    once moved to UTC (``0001-01-01T00:00:00+01:00``)."""
    try:
        return parse_to_aware_datetime(value).astimezone(datetime.UTC)
    except (ValueError, TypeError, OverflowError, OSError, RuntimeError):
        raise ValueError("not a timestamp that can be sent") from None


def _show(value: str) -> str:
    """A short, quoted echo of a non-secret scalar for messages (types that never carry secrets)."""
    return repr(value[:40] + ("..." if len(value) > 40 else ""))


# ---------------------------------------------------------------------------------------------------------
# typed output -> Query XML


def _render(shape: Shape, value: Any, name: str, out: list[str]) -> None:
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(shape, StructureShape)
        out.append(f"<{name}>")
        _render_members(shape, value, out)
        out.append(f"</{name}>")
    elif kind == "list":
        assert isinstance(shape, ListShape)
        item_name = shape.member.serialization.get("name", "member")
        if shape.serialization.get("flattened"):
            for item in value:
                _render(shape.member, item, name, out)
        else:
            out.append(f"<{name}>")
            for item in value:
                _render(shape.member, item, item_name, out)
            out.append(f"</{name}>")
    elif kind == "map":
        assert isinstance(shape, MapShape)
        key_name = shape.key.serialization.get("name", "key")
        value_name = shape.value.serialization.get("name", "value")
        out.append(f"<{name}>")
        for k, v in value.items():
            out.append("<entry>")
            _render(shape.key, k, key_name, out)
            _render(shape.value, v, value_name, out)
            out.append("</entry>")
        out.append(f"</{name}>")
    else:
        out.append(f"<{name}>{_scalar_text(shape, value, name)}</{name}>")


def _scalar_text(shape: Shape, value: Any, name: str) -> str:
    kind = shape.type_name
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "timestamp":
        return iso8601(value)
    if kind == "blob":
        if isinstance(value, (bytes, bytearray)):
            return base64.b64encode(value).decode("ascii")
        return xml_text(str(value), name)
    if kind in ("integer", "long"):
        return str(int(value))
    if kind in ("float", "double"):
        return repr(float(value))
    return xml_text(str(value), name)


def _render_members(shape: StructureShape, value: dict[str, Any], out: list[str]) -> None:
    for member_name, member_shape in shape.members.items():
        if member_name in value:
            _render(member_shape, value[member_name], member_shape.serialization.get("name", member_name), out)


# ---------------------------------------------------------------------------------------------------------
# one service's translator, prepared once


class StrictJSONParser(JSONParser):
    """botocore's JSONParser, except that a body that is not JSON raises ValueError (RecursionError when nested
    too deeply) instead of parsing as ``{"message": body}``, which would render as an empty success."""

    def _parse_body_as_json(self, body_contents: bytes) -> Any:
        return json.loads(body_contents) if body_contents else {}


def operation_of(op: OperationModel, data: dict[str, Any]) -> Operation:
    """The :class:`~proxy.models.Operation` for ``op`` with its decoded input ``data`` (from the Query
    parameters or an SDK call's JSON body alike): the secret ids it names, whether it is a read, whether it
    may be retried (docs/interface.md, "The upstream request": a read, or a write whose input has an idempotency
    token), and whether its answer names the secret it is about at its top level (``ARN``/``Name``: a read the
    policy can check on its answer)."""
    output = op.output_shape
    names_itself = isinstance(output, StructureShape) and any(
        m.name in OUTPUT_SECRET_ID_SHAPES for m in output.members.values()
    )
    return Operation(
        name=op.name,
        input=data,
        secret_ids=tuple(secret_ids(op.input_shape, data)),
        is_read=is_read_operation(op.name),
        retryable=is_read_operation(op.name) or bool(op.idempotent_members),
        checked_on_answer=is_read_operation(op.name) and names_itself,
    )


# The error shapes a service model may name for a request the model's constraints refuse, in order of preference.
VALIDATION_SHAPES = ("InvalidParameterException", "ValidationException")
# Without one: what AWS services of the protocol answer (awsQuery services: ValidationError; JSON: ValidationException).
VALIDATION_DEFAULTS = {"query": "ValidationError", "json": "ValidationException"}


def validation_code(service_model: ServiceModel) -> str:
    """The code of the service's own validation error (docs/interface.md, "Errors"): the wire code of its
    ``InvalidParameterException`` error shape (Secrets Manager: ``InvalidParameterException``; SNS:
    ``InvalidParameter``), else of its ``ValidationException``, else the protocol's usual
    (:data:`VALIDATION_DEFAULTS`)."""
    shapes = {shape.name: shape for shape in service_model.error_shapes}
    for name in VALIDATION_SHAPES:
        shape = shapes.get(name)
        if shape is not None:
            code: str = shape.metadata.get("error", {}).get("code", name)
            return code
    return VALIDATION_DEFAULTS.get(service_model.protocol, "ValidationException")


class Translator:
    """awsQuery <-> AWS JSON 1.1 for one service model; built once at start-up, shared by all requests.

    ``service_model`` is botocore's (``Session.get_service_model``). Operation models, the serializer and the
    parser are prepared once; per request only the decode, the serialize and the render run.
    """

    def __init__(self, service_model: ServiceModel, limits: InputLimits = InputLimits()) -> None:
        self.service_model = service_model
        self.limits = limits
        self.api_version: str = service_model.api_version
        self.validation_code = validation_code(service_model)
        prefix = service_model.endpoint_prefix
        self.xmlns = f"https://{prefix}.amazonaws.com/doc/{self.api_version}/"
        self._serializer = JSONSerializer()
        # timestamps and blobs are kept as the upstream wrote them: the renderer formats them once.
        self._parser = StrictJSONParser(timestamp_parser=lambda v: v, blob_parser=lambda v: v)
        self._operations: dict[str, OperationModel] = {
            name: service_model.operation_model(name) for name in service_model.operation_names
        }
        self._plans: dict[str, Plan | None] = {}  # prepared renderers, compiled on first use (proxy.render)

    @cached_property
    def operation_names(self) -> frozenset[str]:
        return frozenset(self._operations)

    def operation_model(self, action: str, version: str | None) -> OperationModel:
        """The model of ``Action``; raises MissingAction, InvalidAction or NoSuchVersion (docs/interface.md,
        "Errors")."""
        if not action:
            raise errors.MissingAction("the request has no Action parameter (e.g. Action=GetSecretValue)")
        op = self._operations.get(action)
        if op is None:
            raise errors.InvalidAction(f"{_show(action)} is not an operation of {self.service_model.service_name}")
        if version is not None and version != self.api_version:
            raise errors.NoSuchVersion(f"Version {_show(version)} is not supported; use Version={self.api_version}")
        return op

    def decode(self, action: str, version: str | None, params: Iterable[tuple[str, str]]) -> Operation:
        """Validate ``Action``/``Version`` and decode the parameters (see :func:`decode_input`; a ValidationError
        carries :attr:`validation_code`)."""
        op = self.operation_model(action, version)
        with self.validating():
            return operation_of(op, decode_input(params, op, self.limits))

    @contextlib.contextmanager
    def validating(self) -> Iterator[None]:
        """Give a ValidationError raised inside the service's own code (:func:`validation_code`)."""
        try:
            yield
        except errors.ValidationError as exc:
            exc.code = self.validation_code
            raise

    def json_request(self, operation: Operation) -> tuple[dict[str, str], bytes]:
        """The AWS JSON 1.1 request (headers ``X-Amz-Target`` and ``Content-Type``, body) for an operation."""
        req = self._serializer.serialize_to_request(operation.input, self._operations[operation.name])
        body = req["body"]
        return dict(req["headers"]), body if isinstance(body, bytes) else body.encode("utf-8")

    def render_result(
        self,
        operation_name: str,
        response: UpstreamResponse,
        request_id: str,
        keep: Callable[[str], bool] | None = None,
    ) -> bytes:
        """A successful JSON 1.1 answer as the Query XML document of docs/interface.md, "Success answers" (UTF-8 bytes).

        ``keep`` (``policy.allow_secrets``' test, None for any secret) filters the answer with
        :func:`visible_output` before it is rendered. Raises BadGateway when the body is not the JSON the model
        describes, UnrepresentableValue when a string holds a character XML 1.0 cannot carry, SecretNotFound when
        the answer is about a secret ``keep`` refuses.
        """
        op = self._operations[operation_name]
        stripped = response.body.strip()
        if stripped and not (stripped.startswith(b"{") and stripped.endswith(b"}")):
            raise errors.BadGateway(f"the upstream answered {operation_name} with a body that is not JSON 1.1")
        if operation_name not in self._plans:
            self._plans[operation_name] = Plan.compile(op)
        plan = self._plans[operation_name]
        if plan is not None:
            try:
                pieces = plan.render(response.body, keep, xml_text)
            except Fallback:
                pass
            else:
                return self._document(operation_name, pieces, request_id)
        return self.render_result_generic(operation_name, response, request_id, keep)

    def render_result_generic(
        self,
        operation_name: str,
        response: UpstreamResponse,
        request_id: str,
        keep: Callable[[str], bool] | None = None,
    ) -> bytes:
        """:meth:`render_result` through botocore's ``JSONParser`` and the generic walk of the output shape:
        every answer the prepared renderer (:mod:`proxy.render`) is not sure of, and its oracle in tests."""
        op = self._operations[operation_name]
        shape = op.output_shape
        parsed: dict[str, Any] = {}
        stripped = response.body.strip()
        if stripped and not (stripped.startswith(b"{") and stripped.endswith(b"}")):
            raise errors.BadGateway(f"the upstream answered {operation_name} with a body that is not JSON 1.1")
        if shape is not None:
            try:
                parsed = self._parser.parse(
                    {
                        "status_code": response.status,
                        "headers": dict(response.headers),
                        "body": response.body,
                    },
                    shape,
                )
            except (ResponseParserError, ValueError, TypeError, AttributeError, RecursionError):
                raise errors.BadGateway(
                    f"the upstream answered {operation_name} with a body that is not JSON 1.1"
                ) from None
            if keep is not None:
                parsed = visible_output(shape, parsed, keep)
        out: list[str] = []
        if shape is not None:
            assert isinstance(shape, StructureShape)
            _render_members(shape, parsed, out)
        return self._document(operation_name, out, request_id)

    def _document(self, operation_name: str, members: list[str], request_id: str) -> bytes:
        out = [f'<{operation_name}Response xmlns="{self.xmlns}"><{operation_name}Result>', *members]
        out.append(
            f"</{operation_name}Result><ResponseMetadata><RequestId>{xml_text(request_id, 'RequestId')}"
            f"</RequestId></ResponseMetadata></{operation_name}Response>"
        )
        return "".join(out).encode("utf-8")


def secret_ids(shape: Shape | None, value: Any) -> Iterable[str]:
    """Every secret a decoded input names: values of the model's secret-id shapes (``SecretIdType``,
    ``NameType``), wherever they sit (``SecretId``, ``Name``, ``SecretIdList`` members ...)."""
    if shape is None:
        return
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(shape, StructureShape)
        for name, member in shape.members.items():
            if name in value:
                yield from secret_ids(member, value[name])
    elif kind == "list":
        assert isinstance(shape, ListShape)
        for item in value:
            yield from secret_ids(shape.member, item)
    elif kind == "string" and shape.name in SECRET_ID_SHAPES:
        yield value


def _named_secrets(shape: StructureShape, value: dict[str, Any]) -> list[str]:
    return [
        value[name]
        for name, member in shape.members.items()
        if member.name in OUTPUT_SECRET_ID_SHAPES and isinstance(value.get(name), str)
    ]


def visible_output(shape: Shape, value: Any, keep: Callable[[str], bool]) -> Any:
    """The parsed output ``value`` of ``shape`` with every secret ``keep`` refuses taken out (docs/interface.md,
    "Policy": no secret value or metadata outside ``allow_secrets`` reaches the client).

    Model-driven, no per-operation code: a structure names a secret when it has members of the secret-id
    shapes (:data:`OUTPUT_SECRET_ID_SHAPES`: ``ARN``, ``Name``, ``SecretId``), and it is visible when ``keep``
    accepts at least one of them. Items of a list that are not visible are dropped (ListSecrets'
    ``SecretList``, BatchGetSecretValue's ``SecretValues`` and ``Errors``); an output structure that is not
    visible itself raises SecretNotFound (an answer about another secret than the one asked for, through an ARN
    that AWS resolved as a partial ARN: answered as if that secret did not exist, so that the answer does not
    tell whether it does). Other values are returned as they are.
    """
    if shape.type_name == "structure":
        assert isinstance(shape, StructureShape)
        named = _named_secrets(shape, value)
        if named and not any(keep(v) for v in named):
            raise errors.SecretNotFound
    return _filter(shape, value, keep)


def _filter(shape: Shape, value: Any, keep: Callable[[str], bool]) -> Any:
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        assert isinstance(shape, StructureShape)
        members = shape.members
        return {k: _filter(members[k], v, keep) if k in members else v for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        assert isinstance(shape, ListShape)
        member = shape.member
        if isinstance(member, StructureShape):
            value = [
                item
                for item in value
                if not isinstance(item, dict) or not (named := _named_secrets(member, item)) or any(map(keep, named))
            ]
        return [_filter(member, item, keep) for item in value]
    if kind == "map" and isinstance(value, dict):
        assert isinstance(shape, MapShape)
        return {k: _filter(shape.value, v, keep) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------------------
# upstream error bodies

_FALLBACK_CODES = {503: "ServiceUnavailable", 403: "AccessDenied"}


def upstream_error(response: UpstreamResponse) -> errors.UpstreamError:
    """The error an upstream answer carries, per docs/interface.md, "Errors", "Errors from the upstream".

    Code is the JSON ``__type`` (or ``code``) without namespace (``...#``) or ``:`` suffix, else the
    ``X-Amzn-ErrorType`` header the same way, the awsQuery-compatible ``x-amzn-query-error`` header when present,
    or the ``<Code>`` of an XML error body; with none (HTML, empty)
    ``ServiceUnavailable`` for 503, ``AccessDenied`` for 403, ``InternalFailure`` for other 5xx and
    ``BadRequest`` for other 4xx. The status is the upstream's.
    """
    code: str | None = None
    message: str | None = None
    body = response.body
    stripped = body.lstrip()
    if stripped.startswith(b"{"):
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested past the interpreter's limit
            doc = None
        if isinstance(doc, dict):
            raw = doc.get("__type") or doc.get("code") or doc.get("Code")
            if isinstance(raw, str) and raw:
                code = _bare_code(raw)
            msg = doc.get("message") or doc.get("Message")
            if isinstance(msg, str):
                message = msg
    elif stripped.startswith(b"<"):
        code, message = _xml_error(body)
    error_type = response.header("X-Amzn-ErrorType")
    if not code and error_type:
        code = _bare_code(error_type)
    query_error = response.header("x-amzn-query-error")
    if query_error:
        code = query_error.split(";", 1)[0] or code
    if not code:
        status = response.status
        code = _FALLBACK_CODES.get(status) or ("InternalFailure" if status >= 500 else "BadRequest")
    if not message:
        message = f"the upstream answered HTTP {response.status}"
    return errors.UpstreamError(response.status, code, message)


def answer_error(response: UpstreamResponse, ambiguous: bool) -> errors.UpstreamError:
    """:func:`upstream_error`, except that for a request whose secret id may name a hidden secret
    (:meth:`proxy.policy.Policy.ambiguous`) a ``ResourceNotFoundException`` is answered as
    :class:`~proxy.errors.SecretNotFound`, exactly as an answer about the hidden secret is: the app cannot tell
    the two apart (the upstream's own status, message and body would differ in form from the proxy's)."""
    error = upstream_error(response)
    if ambiguous and error.code == "ResourceNotFoundException":
        return errors.SecretNotFound()
    return error


def _bare_code(raw: str) -> str | None:
    """``aws.protocols#ThrottlingException:http://...`` -> ``ThrottlingException`` (botocore's JSON parser's
    reading of ``__type`` and ``X-Amzn-ErrorType``)."""
    return raw.split(":", 1)[0].rsplit("#", 1)[-1].strip() or None


def _xml_error(body: bytes) -> tuple[str | None, str | None]:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None, None
    code = message = None
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "Code" and code is None:
            code = (el.text or "").strip() or None
        elif tag == "Message" and message is None:
            message = (el.text or "").strip() or None
    return code, message
