"""proxy/listing.py as pure logic: the allow-list pushed into the name filter, the sealed token, and the
paging rule checked against an oracle on generated listings (an upstream call seam that pages a list the
test holds, as Secrets Manager does)."""

from __future__ import annotations

import json
import os
from typing import Any

import botocore.session
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import errors
from proxy.config import PolicyConfig
from proxy.listing import Listings, NothingVisible, PageTokens, Position, listing_of, push_down
from proxy.models import UpstreamResponse
from proxy.policy import Policy, name_prefix
from proxy.translate import Translator

MODEL = botocore.session.get_session().get_service_model("secretsmanager")
TRANSLATOR = Translator(MODEL)
OPS = {n: MODEL.operation_model(n) for n in MODEL.operation_names}


def test_the_listings_are_found_in_the_model() -> None:
    found = {n for n, op in OPS.items() if listing_of(op) is not None}
    assert {"ListSecrets", "BatchGetSecretValue"} <= found
    assert "GetSecretValue" not in found and "DescribeSecret" not in found
    secrets, values = listing_of(OPS["ListSecrets"]), listing_of(OPS["BatchGetSecretValue"])
    assert secrets is not None and values is not None
    assert [n for n, _ in secrets.items] == ["SecretList"] and secrets.page_max == 100
    assert [n for n, _ in values.items] == ["SecretValues", "Errors"] and values.page_max == 20


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("prod/app/*", "prod/app/"),
        ("prod/*/db", "prod/"),
        ("prod/app/db", "prod/app/db"),
        ("pr?d/*", "pr"),
        ("pr[oa]d/*", "pr"),
        ("*", None),
        ("*/db", None),
        ("arn:aws:secretsmanager:*:secret:prod/*", None),
        ("a,b", None),
        ("!x*", None),
    ],
)
def test_name_prefix(pattern: str, prefix: str | None) -> None:
    assert name_prefix(pattern) == prefix


def test_policy_prefixes_need_every_pattern_and_drop_the_redundant() -> None:
    def prefixes(*patterns: str) -> tuple[str, ...] | None:
        return Policy.compile(PolicyConfig(allow_secrets=patterns), ()).name_prefixes

    assert prefixes("prod/app/*", "prod/app/db/*", "dev/*") == ("dev/", "prod/app/")
    assert prefixes("prod/*", "*") is None
    assert prefixes() == ()
    assert Policy.compile(PolicyConfig(), ()).name_prefixes is None


NAME = "name"


def f(key: str, *values: str) -> dict[str, Any]:
    return {"Key": key, "Values": list(values)}


def test_push_down_adds_a_name_filter_or_narrows_the_callers() -> None:
    assert push_down(None, ("p/app/",)) == [f(NAME, "p/app/")]
    assert push_down([f("tag-key", "t")], ("p/app/", "q/")) == [f("tag-key", "t"), f(NAME, "p/app/", "q/")]
    assert push_down([f(NAME, "p/app/a", "p/")], ("p/app/",)) == [f(NAME, "p/app/", "p/app/a")]
    assert push_down([f(NAME, "p/app/a", "x/")], ("p/app/",)) == [f(NAME, "p/app/a")]
    with pytest.raises(NothingVisible):
        push_down([f(NAME, "p/hidden/")], ("p/app/",))
    with pytest.raises(NothingVisible):
        push_down(None, ())


def test_push_down_leaves_what_it_cannot_express() -> None:
    assert push_down([f(NAME, "x")], None) == [f(NAME, "x")]
    assert push_down(None, None) is None
    negated = [f(NAME, "p/app/a", "!p/app/b")]
    assert push_down(negated, ("p/app/",)) == negated
    twice = [f(NAME, "p/"), f(NAME, "p/app/a")]
    assert push_down(twice, ("p/app/",)) == twice
    full = [f("tag-key", str(i)) for i in range(10)]
    assert push_down(full, ("p/",)) == full
    many = tuple(f"p{i}/" for i in range(11))
    assert push_down(None, many) is None


def names_matching(filters: list[dict[str, Any]] | None, names: list[str]) -> list[str]:
    """Secrets Manager's name filter: a case-sensitive prefix match, values ORed, filters ANDed (other keys
    are not generated here)."""
    return [n for n in names if all(any(n.startswith(v) for v in flt["Values"]) for flt in filters or ())]


NAMES = st.lists(st.text("ab/", min_size=1, max_size=5), max_size=12, unique=True)
VALUES = st.lists(st.text("ab/", max_size=4), min_size=1, max_size=4)
PREFIXES = st.lists(st.text("ab/", min_size=1, max_size=3), max_size=3, unique=True)


@settings(max_examples=300, deadline=None)
@given(names=NAMES, values=VALUES, prefixes=PREFIXES)
def test_push_down_selects_exactly_the_allowed_names_the_caller_asked_for(
    names: list[str], values: list[str], prefixes: list[str]
) -> None:
    wanted = [n for n in names_matching([f(NAME, *values)], names) if any(n.startswith(p) for p in prefixes)]
    try:
        pushed = push_down([f(NAME, *values)], tuple(prefixes))
    except NothingVisible:
        assert wanted == []
        return
    got = names_matching(pushed, names)
    assert [n for n in got if any(n.startswith(p) for p in prefixes)] == wanted
    assert set(got) <= set(names_matching([f(NAME, *values)], names))


# ---------------------------------------------------------------------------------------------------------
# the token


def test_a_token_opens_only_under_its_key_and_scope() -> None:
    tokens = PageTokens(os.urandom(32))
    position = Position("upstream-token", 7)
    token = tokens.seal(position, b"scope")
    assert tokens.open(token, b"scope") == position
    assert "upstream" not in token
    for bad_scope, bad_key, bad_token in (
        (b"other", None, token),
        (b"scope", os.urandom(32), token),
        (b"scope", None, token[:-1]),
        (b"scope", None, token + "A"),
        (b"scope", None, ""),
        (b"scope", None, "!!!"),
        (b"scope", None, "AA" + token[2:]),
    ):
        opener = PageTokens(bad_key) if bad_key else tokens
        with pytest.raises(errors.InvalidNextToken):
            opener.open(bad_token, bad_scope)


def test_token_length_says_nothing_of_the_position() -> None:
    tokens = PageTokens(os.urandom(32))
    lengths = {len(tokens.seal(Position(u, s), b"x")) for u in (None, "1", "1000", "x" * 300) for s in (0, 9, 99)}
    assert len(lengths) == 1
    assert len(tokens.seal(Position("x" * 2900), b"x")) <= 4096
    with pytest.raises(errors.BadGateway):
        tokens.seal(Position("x" * 3000), b"x")


# ---------------------------------------------------------------------------------------------------------
# paging against an oracle


class Upstream:
    """ListSecrets over ``names`` in order, pages of ``MaxResults``, offsets as tokens (moto's way)."""

    def __init__(self, names: list[str], fail_after: int | None = None) -> None:
        self.names = names
        self.calls = 0
        self.fail_after = fail_after

    async def call(self, data: dict[str, Any]) -> UpstreamResponse:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            return UpstreamResponse(503, (), b'{"__type":"ServiceUnavailable"}')
        matching = names_matching(data.get("Filters"), self.names)
        start = int(data.get("NextToken", 0))
        end = start + data["MaxResults"]
        doc: dict[str, Any] = {"SecretList": [{"Name": n, "ARN": f"arn:{n}"} for n in matching[start:end]]}
        if end < len(matching):
            doc["NextToken"] = str(end)
        return UpstreamResponse(200, (), json.dumps(doc).encode())


def listings(patterns: tuple[str, ...], max_pages: int) -> tuple[Listings, Policy]:
    policy = Policy.compile(PolicyConfig(allow_secrets=patterns), ())
    return Listings.of_model(OPS, PageTokens(os.urandom(32)), policy.name_prefixes, b"test", max_pages), policy


async def every_page(listings: Listings, policy: Policy, upstream: Upstream, **params: str) -> list[tuple[list[str], bool]]:
    pages, token = [], None
    for _ in range(200):
        query = {**params, **({"NextToken": token} if token else {})}
        operation = TRANSLATOR.decode("ListSecrets", None, list(query.items()))
        listing = listings.pages(operation)
        assert listing is not None and policy.answer_filter is not None
        response = await listings.answer(listing, operation, policy.answer_filter, upstream.call)
        doc = json.loads(response.body)
        token = doc.get("NextToken")
        pages.append(([e["Name"] for e in doc["SecretList"]], token is not None))
        if token is None:
            return pages
    raise AssertionError("the listing does not end")


HIDDEN_AND_ALLOWED = st.lists(st.sampled_from(["app/", "hid/"]), max_size=40).map(
    lambda kinds: [f"{k}{i:02}" for i, k in enumerate(kinds)]
)


@settings(max_examples=100, deadline=None)
@given(names=HIDDEN_AND_ALLOWED, max_results=st.integers(1, 5), pattern=st.sampled_from(["app/*", "*app/*"]))
async def test_pages_are_those_of_the_allowed_names_alone(names: list[str], max_results: int, pattern: str) -> None:
    """Within the bound, the whole paginated answer equals paging the allowed names with hidden ones absent:
    pages of MaxResults, a token on every full page, none on the last."""
    lst, policy = listings((pattern,), max_pages=1000)
    got = await every_page(lst, policy, Upstream(names), MaxResults=str(max_results))
    allowed = [n for n in names if n.startswith("app/")]
    chunks = [allowed[i : i + max_results] for i in range(0, len(allowed), max_results)]
    expected = [(c, True) for c in chunks if len(c) == max_results]
    expected.append((chunks[-1], False) if chunks and len(chunks[-1]) < max_results else ([], False))
    assert got == expected
    alone, _ = listings((pattern,), max_pages=1000)
    assert await every_page(alone, policy, Upstream(allowed), MaxResults=str(max_results)) == expected


async def test_at_the_bound_and_after_an_upstream_error_the_page_ends_with_a_token() -> None:
    names = ["app/a", *(f"hid/{i:03}" for i in range(250)), "app/b"]
    lst, policy = listings(("*app/*",), max_pages=2)
    upstream = Upstream(names)
    pages = await every_page(lst, policy, upstream, MaxResults="2")
    assert pages == [(["app/a"], True), (["app/b"], False)]
    assert upstream.calls == 3
    failing = Upstream(names, fail_after=1)
    lst, policy = listings(("*app/*",), max_pages=10)
    operation = TRANSLATOR.decode("ListSecrets", None, [("MaxResults", "2")])
    listing = lst.pages(operation)
    assert listing is not None and policy.answer_filter is not None
    first = await lst.answer(listing, operation, policy.answer_filter, failing.call)
    doc = json.loads(first.body)
    assert [e["Name"] for e in doc["SecretList"]] == ["app/a"] and "NextToken" in doc
    again = TRANSLATOR.decode("ListSecrets", None, [("MaxResults", "2"), ("NextToken", doc["NextToken"])])
    assert (await lst.answer(listing, again, policy.answer_filter, failing.call)).status == 503  # first call


async def test_a_later_page_that_is_not_json_ends_the_page_with_a_token() -> None:
    names = ["app/a", *(f"hid/{i:03}" for i in range(150)), "app/b"]
    upstream = Upstream(names)
    real = upstream.call

    async def call(data: dict[str, Any]) -> UpstreamResponse:
        answer = await real(data)
        return answer if upstream.calls == 1 else UpstreamResponse(200, (), b"<html>proxy error</html>")

    lst, policy = listings(("*app/*",), max_pages=10)
    operation = TRANSLATOR.decode("ListSecrets", None, [("MaxResults", "2")])
    listing = lst.pages(operation)
    assert listing is not None and policy.answer_filter is not None
    doc = json.loads((await lst.answer(listing, operation, policy.answer_filter, call)).body)
    assert [e["Name"] for e in doc["SecretList"]] == ["app/a"] and "NextToken" in doc
