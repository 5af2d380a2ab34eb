"""The JSON 1.1 answer -> Query XML renderer, prepared once per operation from botocore's output shape.

:meth:`proxy.translate.Translator.render_result` reads an answer with botocore's ``JSONParser`` and walks the
output shape generically; per request that costs ~50 µs on the development machine (a handler looked up by
name for every value, the serialization names read again at every member). A :class:`Plan` does the same
walk compiled once per operation: for each structure the members in model order with their wire names and
renderers, for each list its item renderer, for each scalar its formatter. It renders straight from the
parsed JSON (botocore's JSON parser is the identity on well-formed Secrets Manager answers: it keeps
members of the shape that are not null, and timestamps and blobs are kept as sent), and applies
``policy.allow_secrets``' filter (:func:`proxy.translate.visible_output`) as it goes. The JSON is parsed by
``orjson`` (~1.3 µs for a 1 KiB answer against ~4 µs with ``json``); where the two could differ -- an
integer past 64 bits (orjson gives a float: an integer member then falls back), ``NaN``, a lone surrogate
(orjson refuses them) -- the answer goes to the generic path, which parses with ``json`` as before.

It answers only what it is sure of. Anything botocore's parser would read differently or refuse (a value of
another type than the shape's, a null list item or map value, a tagged union, a document), a character XML
cannot carry, or JSON that does not decode raises :class:`Fallback`, and the caller renders with the
generic path, so errors and their order stay exactly what they were. ``tests/unit/test_render.py`` compares
both on generated answers of every operation of the model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import orjson
from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape

from . import errors
from .shapes import OUTPUT_SECRET_ID_SHAPES, iso8601, xml_text

Keep = Callable[[str], bool] | None
Render = Callable[[Any, str, list[str], Keep], None]


class Fallback(Exception):
    """This answer is not one the prepared renderer is sure of: render it with the generic path."""


class _Unsupported(Exception):
    """The shape has something the prepared renderer does not handle (compile time)."""


def _fallback(*_: object) -> None:
    raise Fallback


class Plan:
    """The prepared renderer of one operation's output shape. Build with :meth:`compile` (None when the shape
    holds something only the generic path renders)."""

    def __init__(self, members: Render, secret_keys: tuple[str, ...]) -> None:
        self._members = members
        self._secret_keys = secret_keys

    @classmethod
    def compile(cls, operation: OperationModel) -> Plan | None:
        shape = operation.output_shape
        if shape is None or operation.has_event_stream_output or not isinstance(shape, StructureShape):
            return None
        try:
            members, secret_keys = _Compiler().structure_members(shape)
        except _Unsupported:
            return None
        return cls(members, secret_keys)

    def render(self, body: bytes, keep: Keep, xml_text: Callable[[str, str], str]) -> list[str]:
        """The XML of the output members (without the wrapping ``<OpResult>``), as string pieces.

        Raises Fallback (render with the generic path instead) or SecretNotFound (the answer is about a secret
        ``keep`` refuses; decided after the whole answer rendered, as the generic path decides it after
        parsing the whole answer).
        """
        try:
            doc = orjson.loads(body) if body else {}
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; RecursionError: nested too deeply
            raise Fallback from None
        if type(doc) is not dict:
            raise Fallback
        out: list[str] = []
        try:
            self._members(doc, "", out, keep)
        except errors.UnrepresentableValue:
            raise Fallback from None  # the generic path decides which error comes first
        if keep is not None:
            named = [doc[k] for k in self._secret_keys if type(doc.get(k)) is str]
            if named and not any(keep(v) for v in named):
                raise errors.SecretNotFound
        return out


class _Compiler:
    def __init__(self) -> None:
        self._structures: dict[str, list[Render]] = {}  # shape name -> holder (recursive shapes)

    def render(self, shape: Shape) -> Render:
        kind = shape.type_name
        if kind == "structure":
            assert isinstance(shape, StructureShape)
            return self.structure(shape)
        if kind == "list":
            assert isinstance(shape, ListShape)
            return self.list(shape)
        if kind == "map":
            assert isinstance(shape, MapShape)
            return self.map(shape)
        return _scalar(shape)

    def structure(self, shape: StructureShape) -> Render:
        holder = self._structures.get(shape.name)
        if holder is None:
            holder = self._structures[shape.name] = [_fallback]
            holder[0] = self.structure_members(shape)[0]
        members_of = holder

        def render(value: Any, name: str, out: list[str], keep: Keep) -> None:
            if type(value) is not dict:
                raise Fallback
            out.append(f"<{name}>")
            members_of[0](value, name, out, keep)
            out.append(f"</{name}>")

        return render

    def structure_members(self, shape: StructureShape) -> tuple[Render, tuple[str, ...]]:
        if shape.is_document_type or shape.is_tagged_union:
            raise _Unsupported(shape.name)
        plan: list[tuple[str, Render]] = []
        secret_keys: list[str] = []
        for member_name, member in shape.members.items():
            wire = member.serialization.get("name", member_name)
            if wire != member_name:
                raise _Unsupported(shape.name)  # the filter reads parsed (member) names: keep it generic
            plan.append((wire, self.render(member)))
            if member.name in OUTPUT_SECRET_ID_SHAPES:
                secret_keys.append(wire)
        members = tuple(plan)

        def render_members(value: dict[str, Any], _: str, out: list[str], keep: Keep) -> None:
            for wire, render in members:
                item = value.get(wire)
                if item is not None:
                    render(item, wire, out, keep)

        return render_members, tuple(secret_keys)

    def list(self, shape: ListShape) -> Render:
        member = shape.member
        item_name = member.serialization.get("name", "member")
        flattened = bool(shape.serialization.get("flattened"))
        render_item = self.render(member)
        secret_keys: tuple[str, ...] = ()
        if isinstance(member, StructureShape):
            secret_keys = tuple(n for n, m in member.members.items() if m.name in OUTPUT_SECRET_ID_SHAPES)

        def render(value: Any, name: str, out: list[str], keep: Keep) -> None:
            if type(value) is not list:
                raise Fallback
            if not flattened:
                out.append(f"<{name}>")
            for item in value:
                if item is None:
                    raise Fallback
                if keep is not None and secret_keys and type(item) is dict:
                    named = [item[k] for k in secret_keys if type(item.get(k)) is str]
                    if named and not any(keep(v) for v in named):
                        render_item(item, name if flattened else item_name, [], keep)  # checked, not shown
                        continue
                render_item(item, name if flattened else item_name, out, keep)
            if not flattened:
                out.append(f"</{name}>")

        return render

    def map(self, shape: MapShape) -> Render:
        key_name = shape.key.serialization.get("name", "key")
        value_name = shape.value.serialization.get("name", "value")
        render_key, render_value = self.render(shape.key), self.render(shape.value)

        def render(value: Any, name: str, out: list[str], keep: Keep) -> None:
            if type(value) is not dict:
                raise Fallback
            out.append(f"<{name}>")
            for k, v in value.items():
                if v is None:
                    raise Fallback
                out.append("<entry>")
                render_key(k, key_name, out, keep)
                render_value(v, value_name, out, keep)
                out.append("</entry>")
            out.append(f"</{name}>")

        return render


@functools.lru_cache(maxsize=1024)
def _epoch_iso(value: float) -> str:
    """:func:`proxy.shapes.iso8601` of epoch seconds, remembered: answers repeat the same few timestamps
    (a secret version's CreatedDate), and formatting one costs more than the rest of its member."""
    return iso8601(value)


def _scalar(shape: Shape) -> Render:
    kind = shape.type_name
    if kind in ("string", "blob"):  # a blob is base64 text in JSON 1.1 and the same text in Query XML

        def render(value: Any, name: str, out: list[str], keep: Keep) -> None:
            if type(value) is not str:
                raise Fallback
            out.append(f"<{name}>{xml_text(value, name)}</{name}>")

    elif kind == "boolean":

        def render(value: Any, name: str, out: list[str], keep: Keep) -> None:
            if type(value) is not bool:
                raise Fallback
            out.append(f"<{name}>{'true' if value else 'false'}</{name}>")

    elif kind in ("integer", "long"):

        def render(value: Any, name: str, out: list[str], keep: Keep) -> None:
            if type(value) is not int:
                raise Fallback
            out.append(f"<{name}>{value}</{name}>")

    elif kind in ("float", "double"):

        def render(value: Any, name: str, out: list[str], keep: Keep) -> None:
            if type(value) is not float and type(value) is not int:
                raise Fallback
            out.append(f"<{name}>{float(value)!r}</{name}>")

    elif kind == "timestamp":

        def render(value: Any, name: str, out: list[str], keep: Keep) -> None:
            if type(value) is not int and type(value) is not float:
                raise Fallback  # ISO strings too: the generic path parses those
            try:
                text = _epoch_iso(value)
            except (ValueError, OverflowError, OSError):
                raise Fallback from None
            out.append(f"<{name}>{text}</{name}>")

    else:
        raise _Unsupported(kind)
    return render
