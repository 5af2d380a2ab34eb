"""Listings under ``policy.allow_secrets`` are no oracle (issue 13, section 3; docs/security.md, "Listings"):
through the real listener against moto (signature checking on), for Query and SDK callers alike.

The attack: ``MaxResults=1`` and a filter holding what matches an allowed secret plus a guess. Whatever the
guess, the whole paginated answer (entries, page lengths, whether a ``NextToken`` comes back, errors) must be
the same as for a guess that matches nothing, with the allow-list pushed into the upstream filter
(``prefix/*``) and without (``*prefix/*``, which no name filter can stand for).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
import yaml

from proxy.local import DEMO_ROLE_ARN, REGION
from tests.integration.test_sdk import sdk_client
from tests.integration.test_workers import listening, metric_sum
from tests.process import ProxyProcess
from tests.support import legacy_client, poll, raw_request

MAX_PAGES = 30


@pytest.fixture(scope="module")
def world(emulator: Any) -> Iterator[str]:
    """Under a fresh prefix ``p``: two allowed secrets ``p/app/a`` and ``p/app/b`` and three hidden ones
    ``p/hidden/x1..3``, with descriptions and tags to filter on. Created hidden first, so that in the
    upstream's order (moto: creation) hidden entries stand before and between the allowed ones."""
    p = f"lst-{uuid.uuid4().hex[:8]}"
    direct = emulator.direct()
    made = []
    for name, description, tag in (
        ("hidden/x1", "zulu hidden one", "zulu"),
        ("app/a", "alpha app", "alpha"),
        ("hidden/x2", "zulu hidden two", "zulu"),
        ("hidden/x3", "zulu hidden three", "zulu"),
        ("app/b", "alpha app bee", "alpha"),
    ):
        made.append(f"{p}/{name}")
        direct.create_secret(
            Name=f"{p}/{name}",
            SecretString=f"value-of-{name}",
            Description=description,
            Tags=[{"Key": f"team-{tag}", "Value": f"owner-{tag}"}],
        )
    yield p
    for name in made:
        direct.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


POLICIES = {"pushed down": "{p}/app/*", "not pushable": "*{p}/app/*"}


@pytest.fixture(params=sorted(POLICIES))
def clients(request: pytest.FixtureRequest, start_proxy: Any, world: str, tmp_path: Path) -> dict[str, Any]:
    """The Query (legacy) and SDK clients of a proxy that allows ``p/app/*``, written so that the allow-list
    can be pushed into the upstream filter, or so that it cannot."""
    pattern = POLICIES[request.param].format(p=world)
    proxy = start_proxy(policy={"allow_secrets": [pattern]})
    return {"query": legacy_client(proxy.url, str(tmp_path)), "sdk": sdk_client(proxy.url), "proxy": proxy}


def observe(call: Callable[..., Any], items: tuple[str, ...], **params: Any) -> list[tuple[list[str], bool]]:
    """Every page of a listing, following its tokens: (the names of its entries, whether it had a NextToken)."""
    pages: list[tuple[list[str], bool]] = []
    token = None
    for _ in range(MAX_PAGES):
        out = call(**params, **({"NextToken": token} if token else {}))
        names = [entry.get("Name") or entry.get("SecretId") for item in items for entry in out.get(item, [])]
        token = out.get("NextToken")
        pages.append((names, token is not None))
        if token is None:
            return pages
    raise AssertionError(f"more than {MAX_PAGES} pages: {pages}")


def name_filter(*values: str) -> list[dict[str, Any]]:
    return [{"Key": "name", "Values": list(values)}]


# (filter key, the value that matches the allowed p/app/a, a guess matching hidden ones, a guess matching none)
GUESSES = {
    "name": ("{p}/app/a", "{p}/hidden/", "{p}/nothing/"),
    "description": ("alpha", "zulu", "yankee"),
    "tag-key": ("team-alpha", "team-zulu", "team-yankee"),
    "tag-value": ("owner-alpha", "owner-zulu", "owner-yankee"),
}


@pytest.mark.parametrize("caller", ["query", "sdk"])
@pytest.mark.parametrize("key", sorted(GUESSES))
def test_list_secrets_answers_the_same_whatever_the_guess(clients: dict[str, Any], world: str, caller: str, key: str) -> None:
    allowed, hit, miss = (v.format(p=world) for v in GUESSES[key])
    call = clients[caller].list_secrets
    by_guess = [
        observe(call, ("SecretList",), Filters=[{"Key": key, "Values": [allowed, guess]}], MaxResults=1)
        for guess in (hit, miss)
    ]
    assert by_guess[0] == by_guess[1]
    names = [name for page, _ in by_guess[0] for name in page]
    assert all(name.startswith(f"{world}/app/") for name in names)
    if key == "name":  # a name prefix matches p/app/a alone
        assert by_guess[0] == [([f"{world}/app/a"], True), ([], False)]


@pytest.mark.parametrize("caller", ["query", "sdk"])
def test_batch_get_by_filters_answers_the_same_whatever_the_guess(clients: dict[str, Any], world: str, caller: str) -> None:
    call = clients[caller].batch_get_secret_value
    by_guess = [
        observe(call, ("SecretValues", "Errors"), Filters=name_filter(f"{world}/app/a", guess), MaxResults=1)
        for guess in (f"{world}/hidden/x", f"{world}/nothing")
    ]
    assert by_guess[0] == by_guess[1] == [([f"{world}/app/a"], True), ([], False)]


@pytest.mark.parametrize("caller", ["query", "sdk"])
def test_pages_hold_every_allowed_secret_once_in_order(clients: dict[str, Any], world: str, caller: str) -> None:
    client = clients[caller]
    for max_results in (1, 2, 3):
        pages = observe(client.list_secrets, ("SecretList",), Filters=name_filter(world), MaxResults=max_results)
        assert [n for page, _ in pages for n in page] == [f"{world}/app/a", f"{world}/app/b"]
        assert all(len(page) == max_results and token for page, token in pages[:-1])  # full pages, with tokens
        assert not pages[-1][1]
    values = observe(client.batch_get_secret_value, ("SecretValues",), Filters=name_filter(world), MaxResults=1)
    assert [n for page, _ in values for n in page] == [f"{world}/app/a", f"{world}/app/b"]
    everything = client.list_secrets()  # no filter, no MaxResults: one page of up to 100
    assert [s["Name"] for s in everything["SecretList"]] == [f"{world}/app/a", f"{world}/app/b"]
    assert "NextToken" not in everything


def error_code(call: Callable[..., Any], **params: Any) -> tuple[str, int]:
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        call(**params)
    return exc.value.response["Error"]["Code"], exc.value.response["ResponseMetadata"]["HTTPStatusCode"]


def tampered(token: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[len(raw) // 2] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


@pytest.mark.parametrize("caller", ["query", "sdk"])
def test_a_token_works_only_for_the_listing_it_was_made_for(clients: dict[str, Any], world: str, caller: str) -> None:
    client = clients[caller]
    first = client.list_secrets(Filters=name_filter(world), MaxResults=1)
    token = first["NextToken"]
    assert world not in token and "hidden" not in token
    again = client.list_secrets(Filters=name_filter(world), MaxResults=1, NextToken=token)
    assert [s["Name"] for s in again["SecretList"]] == [f"{world}/app/b"]  # replay for the same listing: fine
    for params in (
        {"Filters": name_filter(world), "MaxResults": 1, "NextToken": tampered(token)},
        {"Filters": name_filter(world), "MaxResults": 1, "NextToken": token[:-4]},
        {"Filters": name_filter(world), "MaxResults": 2, "NextToken": token},
        {"Filters": name_filter(f"{world}/app"), "MaxResults": 1, "NextToken": token},
        {"Filters": name_filter(world), "MaxResults": 1, "NextToken": token, "SortOrder": "desc"},
        {"MaxResults": 1, "NextToken": token},
        {"Filters": name_filter(world), "MaxResults": 1, "NextToken": "1"},  # what moto's own tokens look like
        {"Filters": name_filter(world), "MaxResults": 1, "NextToken": "x" * 4096},
    ):
        assert error_code(client.list_secrets, **params) == ("InvalidNextTokenException", 400), params
    batch = client.batch_get_secret_value(Filters=name_filter(world), MaxResults=1)
    params = {"Filters": name_filter(world), "MaxResults": 1, "NextToken": token}  # a ListSecrets token
    assert error_code(client.batch_get_secret_value, **params) == ("InvalidNextTokenException", 400)
    params["NextToken"] = batch["NextToken"]
    assert client.batch_get_secret_value(**params)["SecretValues"][0]["Name"] == f"{world}/app/b"


def test_a_token_from_another_proxy_is_refused(start_proxy: Any, world: str) -> None:
    """Two proxies with the same policy: each makes its own key at start-up."""
    one, two = (sdk_client(start_proxy(policy={"allow_secrets": [f"{world}/app/*"]}).url) for _ in range(2))
    token = one.list_secrets(Filters=name_filter(world), MaxResults=1)["NextToken"]
    params = {"Filters": name_filter(world), "MaxResults": 1, "NextToken": token}
    assert error_code(two.list_secrets, **params) == ("InvalidNextTokenException", 400)


def test_a_query_caller_gets_the_error_document(clients: dict[str, Any], world: str) -> None:
    proxy = clients["proxy"]
    target = "/?Action=ListSecrets&Version=2017-10-17&MaxResults=1&NextToken=bm90LWEtdG9rZW4"
    resp = raw_request(proxy.port, "GET", target)
    assert resp.status == 400 and b"<Code>InvalidNextTokenException</Code>" in resp.body
    assert b"<Type>Sender</Type>" in resp.body


def test_a_caller_filter_outside_the_allow_list_lists_nothing_and_calls_nothing(start_proxy: Any, world: str) -> None:
    proxy = start_proxy(policy={"allow_secrets": [f"{world}/app/*"]})
    sdk = sdk_client(proxy.url)
    for values in ([f"{world}/hidden/"], [f"{world}/hid", "other"]):
        out = sdk.list_secrets(Filters=name_filter(*values), MaxResults=1)
        assert out["SecretList"] == [] and "NextToken" not in out
        assert out["ResponseMetadata"]["HTTPHeaders"]["content-type"] == "application/x-amz-json-1.1"
    text = raw_request(proxy.port, "GET", "/metrics").body.decode()
    assert 'query_signing_proxy_upstream_attempts_count{action="ListSecrets"}' not in text


# ---------------------------------------------------------------------------------------------------------
# the bound: limits.max_upstream_pages


@pytest.fixture(scope="module")
def crowd(emulator: Any) -> Iterator[str]:
    """``p/app/a``, then 250 hidden secrets ``p/hidden/NNN``, then ``p/app/b`` (moto lists in creation order):
    more hidden entries between the two allowed ones than two upstream pages of 100 hold."""
    p = f"crowd-{uuid.uuid4().hex[:8]}"
    direct = emulator.direct()
    names = [f"{p}/app/a", *(f"{p}/hidden/{i:03}" for i in range(250)), f"{p}/app/b"]
    for name in names:
        direct.create_secret(Name=name, SecretString="v")
    yield p
    for name in names:
        direct.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


def test_at_the_bound_the_page_stops_with_a_token_that_resumes(start_proxy: Any, crowd: str) -> None:
    proxy = start_proxy(policy={"allow_secrets": [f"*{crowd}/app/*"]}, limits={"max_upstream_pages": 2})
    sdk = sdk_client(proxy.url)
    pages = observe(sdk.list_secrets, ("SecretList",), Filters=name_filter(crowd), MaxResults=2)
    # a + 99 hidden, then 100 hidden: the bound; then 51 hidden + b, and the end
    assert pages == [([f"{crowd}/app/a"], True), ([f"{crowd}/app/b"], False)]
    pushed = start_proxy(policy={"allow_secrets": [f"{crowd}/app/*"]}, limits={"max_upstream_pages": 1})
    pages = observe(sdk_client(pushed.url).list_secrets, ("SecretList",), Filters=name_filter(crowd), MaxResults=2)
    assert pages == [([f"{crowd}/app/a", f"{crowd}/app/b"], True), ([], False)]  # no hidden entry came back


def test_the_bound_is_a_config_key(start_proxy: Any) -> None:
    from proxy.config import ConfigError

    for bad in (0, 1001, "ten"):
        with pytest.raises(ConfigError, match="limits.max_upstream_pages"):
            start_proxy(limits={"max_upstream_pages": bad})


# ---------------------------------------------------------------------------------------------------------
# --workers 2: a token made by one worker works on the other


def test_a_token_works_on_every_worker(emulator: Any, demo_env: None, world: str, tmp_path: Path) -> None:
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstream": {"region": REGION, "endpoint_url": emulator.url, "ca_bundle": emulator.ca_file},
        "credentials": {"role_arn": DEMO_ROLE_ARN, "role_session_name": "listing-workers"},
        "policy": {"allow_secrets": [f"{world}/app/*"]},
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    with ProxyProcess(["--config", str(path), "--workers", "2"], tmp_path) as proxy:
        lines = poll(lambda: len(listening(proxy)) == 2 and listening(proxy), 60, "two workers to listen")
        port, admins = lines[0]["port"], [line["admin_port"] for line in lines]
        for admin in admins:
            proxy.wait_status(f"http://127.0.0.1:{admin}/readyz", 200)
        sdk = sdk_client(f"http://127.0.0.1:{port}")  # botocore opens new connections as it likes
        token = sdk.list_secrets(Filters=name_filter(world), MaxResults=1)["NextToken"]

        def both_answered() -> bool:
            target = f"/?Action=ListSecrets&Version=2017-10-17&MaxResults=1&Filters.member.1.Key=name&Filters.member.1.Values.member.1={world}&NextToken={token}"
            resp = raw_request(port, "GET", target, headers={"Connection": "close"})
            assert resp.status == 200, resp.body
            assert f"<Name>{world}/app/b</Name>".encode() in resp.body
            counts = [metric_sum(a, 'query_signing_proxy_requests_total{action="ListSecrets",code="OK"}') for a in admins]
            return all(c > 0 for c in counts)

        poll(both_answered, 60, "both workers to answer the token", interval=0)
        assert proxy.stop() == 0
