"""The prepared renderer (proxy/render.py) against its oracle, the generic path (botocore's JSONParser and the
generic walk of the output shape): the same document, or the same error, for generated answers of every
Secrets Manager operation, well-formed and broken, with and without the allow_secrets filter."""

from __future__ import annotations

import json
from typing import Any

import botocore.session
import pytest
from botocore.model import Shape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import errors
from proxy.models import UpstreamResponse
from proxy.render import Plan
from proxy.translate import Translator

TRANSLATOR = Translator(botocore.session.get_session().get_service_model("secretsmanager"))
OPERATIONS = sorted(TRANSLATOR.operation_names)
NAMES = ["a", "bb", "prod/db", "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf"]
_text = st.one_of(st.sampled_from(NAMES), st.text(max_size=12))
_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), _text)
_anything = st.recursive(
    _json_scalar, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(_text, inner, max_size=2), max_leaves=4
)


def value_for(shape: Shape, depth: int = 0) -> st.SearchStrategy[Any]:
    """JSON values for ``shape``: mostly well-typed, sometimes anything at all (a broken answer)."""
    kind = shape.type_name
    if depth > 4:
        return st.none()
    if kind == "structure":
        members = {name: value_for(member, depth + 1) for name, member in shape.members.items()}  # type: ignore[attr-defined]
        good: st.SearchStrategy[Any] = st.fixed_dictionaries({}, optional=members)
    elif kind == "list":
        good = st.lists(value_for(shape.member, depth + 1), max_size=3)  # type: ignore[attr-defined]
    elif kind == "map":
        good = st.dictionaries(_text, value_for(shape.value, depth + 1), max_size=2)  # type: ignore[attr-defined]
    elif kind == "string":
        good = _text
    elif kind in ("integer", "long"):
        good = st.integers(-(2**40), 2**40) | st.integers(-(2**70), 2**70)  # past 64 bits: orjson reads a float
    elif kind in ("float", "double"):
        good = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-100, 100)
    elif kind == "boolean":
        good = st.booleans()
    elif kind == "timestamp":
        good = st.integers(0, 4_000_000_000) | st.floats(0, 4_000_000_000) | st.just("2018-04-11T20:05:45.713Z")
    else:
        good = _text
    return st.one_of(good, good, good, _anything)


def outcome(render: Any) -> tuple[str, Any]:
    try:
        return "ok", render()
    except errors.ProxyError as exc:
        return type(exc).__name__, exc.message
    except Exception as exc:  # the generic path's own failures must be the prepared path's too
        return "exception", type(exc).__name__


@pytest.mark.parametrize("operation", OPERATIONS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), filtered=st.booleans())
def test_prepared_renderer_is_the_generic_path(operation: str, data: st.DataObject, filtered: bool) -> None:
    shape = TRANSLATOR.service_model.operation_model(operation).output_shape
    doc = data.draw(value_for(shape) if shape is not None else st.just({}))
    body = json.dumps(doc).encode() if doc is not None else b""
    response = UpstreamResponse(200, (("x-amzn-RequestId", "r-1"),), body)
    keep = (lambda v: v in ("a", "prod/db")) if filtered else None
    expected = outcome(lambda: TRANSLATOR.render_result_generic(operation, response, "r-1", keep=keep))
    assert outcome(lambda: TRANSLATOR.render_result(operation, response, "r-1", keep=keep)) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b" ",
        b"{}",
        b"{bad}",
        b"\xff{}",
        b'{"ARN": 5}',
        b'{"VersionStages": "abc"}',
        b'{"Name": "a\\u0001"}',
        b"[1]",
    ],
)
def test_odd_bodies_render_as_the_generic_path_does(body: bytes) -> None:
    response = UpstreamResponse(200, (), body)
    for keep in (None, lambda v: v == "a"):
        expected = outcome(lambda k=keep: TRANSLATOR.render_result_generic("GetSecretValue", response, "r", keep=k))
        assert outcome(lambda k=keep: TRANSLATOR.render_result("GetSecretValue", response, "r", keep=k)) == expected


@pytest.mark.parametrize(
    ("operation", "body"),
    [
        (
            "DescribeSecret",
            b'{"Name": "a", "RotationRules": {"AutomaticallyAfterDays": 123456789012345678901234567890}}',
        ),
        ("DescribeSecret", b'{"Name": "a", "RotationRules": {"AutomaticallyAfterDays": -9223372036854775809}}'),
        ("DescribeSecret", b'{"Name": "a", "LastChangedDate": NaN}'),
        ("DescribeSecret", b'{"Name": "a", "LastChangedDate": 1e400}'),
        ("GetSecretValue", b'{"Name": "a\\ud800", "SecretString": "x"}'),
        ("GetSecretValue", b'{"Name": "a", "Name": "b"}'),
        ("GetSecretValue", b'\xef\xbb\xbf{"Name": "a"}'),
    ],
    ids=["int-past-64-bits", "int-below-64-bits", "nan", "infinity", "lone-surrogate", "duplicate-key", "bom"],
)
def test_what_orjson_reads_otherwise_renders_as_the_generic_path_does(operation: str, body: bytes) -> None:
    """The prepared path parses with orjson, the generic path with json: where they differ, the result is the
    generic path's."""
    response = UpstreamResponse(200, (), body)
    expected = outcome(lambda: TRANSLATOR.render_result_generic(operation, response, "r"))
    assert outcome(lambda: TRANSLATOR.render_result(operation, response, "r")) == expected


def test_every_secrets_manager_operation_has_a_prepared_renderer() -> None:
    """The speed-up applies to the whole service, not just GetSecretValue."""
    model = TRANSLATOR.service_model
    with_output = [op for op in OPERATIONS if model.operation_model(op).output_shape is not None]
    missing = [op for op in with_output if Plan.compile(model.operation_model(op)) is None]
    assert len(with_output) > 20
    assert missing == []


def test_a_well_formed_answer_takes_the_prepared_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def generic(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("the generic path ran")

    monkeypatch.setattr(TRANSLATOR, "render_result_generic", generic)
    body = json.dumps({"ARN": NAMES[3], "Name": "prod/db", "SecretString": "x & <y>\r", "CreatedDate": 1523477145.713})
    document = TRANSLATOR.render_result("GetSecretValue", UpstreamResponse(200, (), body.encode()), "r")
    assert b"<SecretString>x &amp; &lt;y&gt;&#xD;</SecretString>" in document
    assert b"<CreatedDate>2018-04-11T20:05:45.713Z</CreatedDate>" in document
