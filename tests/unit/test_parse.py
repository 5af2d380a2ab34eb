"""proxy.parse: strict form decoding and the Query request it builds; the body bound is tested through the
listener (tests/integration/test_errors.py)."""

from __future__ import annotations

from urllib.parse import urlencode

import botocore.session
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import errors, parse
from proxy.parse import SIGNING_PARAMETERS, decode_form, query_request
from proxy.translate import InputLimits, decode_input


def test_plus_is_space_and_escaped_plus_is_plus() -> None:
    assert decode_form(b"a=x+y&b=x%2By&c=%20", "q") == [("a", "x y"), ("b", "x+y"), ("c", " ")]


def test_escapes_upper_or_lower_hex_and_utf8() -> None:
    assert decode_form(b"n=%2f%2F&u=%C3%A9", "q") == [("n", "//"), ("u", "é")]


def test_empty_parts_are_skipped_and_a_bare_name_has_the_empty_value() -> None:
    assert decode_form(b"&&a&b=&=c&", "q") == [("a", ""), ("b", ""), ("", "c")]


def test_value_may_hold_equals_signs() -> None:
    assert decode_form(b"a=b=c", "q") == [("a", "b=c")]


@pytest.mark.parametrize("raw", [b"a=%", b"a=%4", b"a=%zz", b"a%=1", b"a=%%41", b"a=%4g"])
def test_malformed_escape(raw: bytes) -> None:
    with pytest.raises(errors.MalformedQueryString, match="the body has a malformed percent-escape"):
        decode_form(raw, "body")


@pytest.mark.parametrize("raw", [b"a=%FF", b"a=%C3%28", b"%ED%A0%80=1", b"a=\xff", b"a=%C3"])
def test_not_utf8(raw: bytes) -> None:
    with pytest.raises(errors.MalformedQueryString, match="not UTF-8"):
        decode_form(raw, "query string")


@given(st.lists(st.tuples(st.text(min_size=1), st.text()), max_size=8))
@settings(max_examples=200, deadline=None)
def test_inverse_of_botocore_style_urlencode(pairs: list[tuple[str, str]]) -> None:
    """What ``urlencode`` (botocore's QuerySerializer) writes decodes back to the same pairs."""
    pairs = [(k, v) for k, v in pairs if not any(0xD800 <= ord(c) <= 0xDFFF for c in k + v)]
    assert decode_form(urlencode(pairs).encode(), "q") == pairs


def test_query_request_lifts_action_and_version_and_drops_signing_parameters() -> None:
    raw = "&".join(f"{name}=x" for name in sorted(SIGNING_PARAMETERS)).encode()
    q = query_request("POST", b"Action=GetSecretValue&" + raw, b"Version=2017-10-17&SecretId=a")
    assert (q.method, q.action, q.version, q.params) == ("POST", "GetSecretValue", "2017-10-17", (("SecretId", "a"),))


def test_signing_parameters_are_exactly_specs() -> None:
    assert SIGNING_PARAMETERS == {
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


def test_query_string_comes_before_the_body() -> None:
    q = query_request("POST", b"A=1", b"B=2&Action=ListSecrets")
    assert q.params == (("A", "1"), ("B", "2")) and q.action == "ListSecrets" and q.version is None


@pytest.mark.parametrize("name", ["Action", "Version"])
def test_action_or_version_twice(name: str) -> None:
    with pytest.raises(errors.InvalidParameterValue, match=name):
        query_request("POST", f"{name}=a".encode(), f"{name}=a".encode())


def test_empty_action_is_empty_and_empty_version_absent() -> None:
    q = query_request("GET", b"Action=&Version=", None)
    assert q.action == "" and q.version is None


def test_malformed_body_names_the_body() -> None:
    with pytest.raises(errors.MalformedQueryString, match="request body"):
        query_request("POST", b"Action=ListSecrets", b"x=%")


# limits.max_parameters, counted before decoding


def rule_error(params: tuple[tuple[str, str], ...], max_parameters: int) -> errors.InvalidParameterValue:
    """The error the existing rule (decode_input, after decoding) gives for ``params``."""
    op = botocore.session.get_session().get_service_model("secretsmanager").operation_model("ListSecrets")
    with pytest.raises(errors.InvalidParameterValue) as info:
        decode_input(params, op, InputLimits(max_parameters=max_parameters))
    return info.value


def test_100000_pairs_are_refused_before_any_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[bytes] = []
    real = parse.decode_form
    monkeypatch.setattr(parse, "decode_form", lambda raw, where: decoded.append(raw) or real(raw, where))
    body = b"Action=ListSecrets&Version=2017-10-17&" + b"a=&" * 100_000
    with pytest.raises(errors.InvalidParameterValue) as info:
        query_request("POST", b"", body, max_parameters=1000)
    assert (info.value.status, info.value.code) == (400, "InvalidParameterValue")
    assert decoded == []  # neither the query string nor the body was decoded
    distinct = tuple((f"a{i}", "") for i in range(1001))
    assert (
        info.value.message
        == rule_error(distinct, 1000).message
        == ("more than limits.max_parameters (1000) parameters in one request")
    )


def test_the_count_before_decoding_is_the_rules_count() -> None:
    """Action, Version, signing parameters (also percent-encoded) and empty parts are not parameters."""
    uncounted = "Act%69on=ListSecrets&Version=2017-10-17&" + "&".join(f"{n}=x" for n in sorted(SIGNING_PARAMETERS))
    names = [f"Filters.member.{i}.Key" for i in range(1, 6)]
    at_limit = "&&&".join(f"{n}=name" for n in names) + "&&&"
    q = query_request("POST", uncounted.encode(), at_limit.encode(), max_parameters=5)
    assert q.action == "ListSecrets" and len(q.params) == 5
    over = at_limit + "Signature%3D=x"  # a name that only looks like a signing parameter counts
    with pytest.raises(errors.InvalidParameterValue) as info:
        query_request("POST", uncounted.encode(), over.encode(), max_parameters=5)
    params = tuple((n, "name") for n in names) + (("Signature=", "x"),)
    assert info.value.message == rule_error(params, 5).message
    assert len(query_request("POST", uncounted.encode(), over.encode()).params) == 6  # no limit given: no count


def test_over_the_count_wins_over_a_decoding_error() -> None:
    with pytest.raises(errors.InvalidParameterValue, match=r"max_parameters \(2\)"):
        query_request("GET", b"a=%&b=%C3%28&c=", None, max_parameters=2)
    with pytest.raises(errors.MalformedQueryString):
        query_request("GET", b"a=%&b=%C3%28", None, max_parameters=2)


# the same count as the rule after decoding, on any raw input; the bound on pairs in all

_RAW_PIECES = [
    *(b"a", b"b=1", b"Filters.member.1.Key", b"x", b"=", b"+", b";", b"%", b"%41", b"%2B", b"%26", b"%3D"),
    *(b"Action", b"%41ction", b"Act%69on", b"Action+", b"+Action", b"Version", b"Versio%6E", b"Signature"),
    *(b"Sig%6eature", b"Signature%3D", b"X-Amz-Date", b"x-amz-date", b"%C3%A9", b"%C3", b"\xff", b"\xc3\xa9"),
    *(b"&", b"&&", b"=&", b"&Signature=&" * 6),
]
_RAW = st.lists(st.sampled_from(_RAW_PIECES), max_size=24).map(b"".join)


@settings(max_examples=1500, deadline=None)
@given(_RAW, _RAW, st.integers(1, 8), st.booleans())
def test_the_early_count_never_refuses_what_the_rule_accepts(query: bytes, body: bytes, limit: int, post: bool) -> None:
    """Percent-encoded names (``%41ction``), ``+``, ``;`` (not a separator), bare keys, empty parts, escaped
    separators, non-UTF-8 bytes, in the query string and the body: the count before decoding refuses what the
    rule after it refuses, with its message, and besides only more than ``max_raw_pairs`` pairs in all. A
    decoding error or a repeated Action/Version may be found first by either."""
    method, form = ("POST", body) if post else ("GET", None)
    pairs = sum(1 for raw in (query, form or b"") for part in raw.split(b"&") if part)
    try:
        later = query_request(method, query, form)
    except (errors.MalformedQueryString, errors.InvalidParameterValue):
        later = None  # undecodable, or Action/Version twice: the count may win, nothing else may be accepted
    try:
        early = query_request(method, query, form, max_parameters=limit)
    except errors.InvalidParameterValue as exc:
        if later is not None:
            assert len(later.params) > limit or pairs > parse.max_raw_pairs(limit), (query, form, limit)
            assert exc.message == parse.too_many_parameters(limit).message
        return
    except errors.MalformedQueryString:
        assert later is None
        return
    assert later is not None and early == later
    assert len(early.params) <= limit and pairs <= parse.max_raw_pairs(limit)


def test_pairs_in_all_are_bounded_whatever_their_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """23,000 ``Signature=&`` (dropped after decoding) are refused unread; up to the bound they are dropped as
    before: every parameter, Action, Version and each signing parameter once, and as many again."""
    decoded: list[bytes] = []
    real = parse.decode_form
    monkeypatch.setattr(parse, "decode_form", lambda raw, where: decoded.append(raw) or real(raw, where))
    assert parse.max_raw_pairs(5) == 2 * 5 + len(SIGNING_PARAMETERS) + 2
    head = b"Action=ListSecrets&Version=2017-10-17&" + b"&".join(f"{n}=x".encode() for n in sorted(SIGNING_PARAMETERS))
    params = b"&".join(b"Filters.member.%d.Key=name" % i for i in range(1, 6))
    at_bound = head + b"&" + params + b"&" + b"Signature=&" * 5
    q = query_request("POST", b"", at_bound, max_parameters=5)
    assert q.action == "ListSecrets" and len(q.params) == 5
    with pytest.raises(errors.InvalidParameterValue) as info:
        query_request("POST", b"", at_bound + b"X-Amz-Date=", max_parameters=5)
    assert info.value.message == parse.too_many_parameters(5).message
    decoded.clear()
    with pytest.raises(errors.InvalidParameterValue) as info:
        query_request("POST", b"Action=ListSecrets", b"Signature=&" * 23_000, max_parameters=1000)
    assert info.value.message == "more than limits.max_parameters (1000) parameters in one request"
    assert decoded == []
    # split over the query string and the body, the pairs of both count
    with pytest.raises(errors.InvalidParameterValue):
        query_request("POST", b"Signature=&" * 1008, b"Signature=&" * 1009, max_parameters=1000)
    assert len(query_request("POST", b"Signature=&" * 1008, b"Signature=&" * 1008, max_parameters=1000).params) == 0
