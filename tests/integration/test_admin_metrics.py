"""The admin listener (docs/interface.md, "HTTP endpoints", ``admin``) and the metrics, through the real listeners.

The proxy runs as it does in a pod: :func:`proxy.app.serve` with the Query API on one port and the admin
listener (/healthz, /readyz, /metrics) on another, against moto's server with signature checking on.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from proxy.local import DEMO_SECRET, DEMO_SECRET_VALUE
from proxy.metrics import Metrics
from tests.conftest import Emulator
from tests.serving import Served
from tests.support import ServerThread, legacy_client, poll, proxy_config, raw_request, sdk_client

QUERY = f"/?Action=GetSecretValue&SecretId={DEMO_SECRET.replace('/', '%2F')}&Version=2017-10-17"


def get(port: int, target: str, method: str = "GET") -> tuple[int, str]:
    resp = raw_request(port, method, target)
    return resp.status, resp.body.decode("utf-8", "replace")


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample of /metrics, keyed by (name, labels), parsed with prometheus-client's own parser."""
    resp = raw_request(port, "GET", "/metrics")
    assert resp.status == 200
    assert (resp.header("Content-Type") or "").startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def served(emulator: Emulator, demo_env: None) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(**sections: Any) -> Served:
        cfg = proxy_config(emulator.server, admin={"host": "127.0.0.1", "port": 0}, **sections)
        server = Served(cfg).__enter__()
        started.append(server)
        admin_port = server.admin_port
        assert admin_port is not None, "serve() reported no admin listener"
        poll(lambda: get(admin_port, "/readyz")[0] == 200, 30, "/readyz to turn 200")
        return server

    yield start
    for server in reversed(started):
        server.__exit__(None, None, None)


def test_requests_are_labelled_by_the_error_code_on_both_paths(
    served: Callable[..., Served], tmp_path_factory: Any
) -> None:
    """One dashboard query serves Query and SDK callers: a relayed upstream error is counted under its code (the
    JSON ``__type``), and so is each of the proxy's own errors, as the caller saw it."""
    proxy = served(policy={"allow_actions": ["GetSecretValue"]})
    url = f"http://127.0.0.1:{proxy.port}"
    legacy, sdk = legacy_client(url, str(tmp_path_factory.getbasetemp())), sdk_client(url)
    before = scrape(proxy.admin_port)
    for client in (legacy, sdk):
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.get_secret_value(SecretId="demo/no-such-secret")
        with pytest.raises(ClientError):
            client.describe_secret(SecretId=DEMO_SECRET)  # denied by the policy
        with pytest.raises(ClientError):
            client.get_secret_value(SecretId=DEMO_SECRET, VersionStage="x" * 257)  # over the model's max
    after = scrape(proxy.admin_port)

    def moved(action: str, code: str) -> float:
        labels = {"action": action, "code": code}
        return value(after, "query_signing_proxy_requests_total", **labels) - value(
            before, "query_signing_proxy_requests_total", **labels
        )

    assert moved("GetSecretValue", "ResourceNotFoundException") == 2  # not "404" for the SDK call
    assert moved("GetSecretValue", "InvalidParameterException") == 2
    assert moved("DescribeSecret", "AccessDenied") == 1  # the Query caller's code ...
    assert moved("DescribeSecret", "AccessDeniedException") == 1  # ... and the SDK caller's
    assert not any(
        name == "query_signing_proxy_requests_total" and dict(labels)["code"].isdigit() for name, labels in after
    )


def test_admin_listener_serves_only_admin_and_query_port_serves_no_admin(served: Callable[..., Served]) -> None:
    proxy = served(policy={"allow_actions": ["*"]})
    assert proxy.admin_port != proxy.port
    # the Query API answers on its port ...
    status, body = get(proxy.port, QUERY)
    assert status == 200 and DEMO_SECRET_VALUE in body
    # ... and not on the admin port, whatever the method
    for method in ("GET", "POST"):
        status, body = get(proxy.admin_port, QUERY, method)
        assert status in (404, 405), (method, status)
        assert DEMO_SECRET_VALUE not in body and "GetSecretValueResponse" not in body
    # the admin endpoints answer on the admin port ...
    assert get(proxy.admin_port, "/healthz")[0] == 200
    assert get(proxy.admin_port, "/readyz")[0] == 200
    assert "query_signing_proxy_requests_total" in get(proxy.admin_port, "/metrics")[1]
    # ... and are not served on the Query port: there they are Query paths, answered 404 NotFound in XML
    for path in ("/healthz", "/readyz", "/metrics"):
        status, body = get(proxy.port, path)
        assert status == 404, (path, status)
        assert "<Code>NotFound</Code>" in body
        assert "query_signing_proxy_" not in body


def test_every_series_moves_with_traffic(
    served: Callable[..., Served], tmp_path_factory: Any, emulator: Emulator
) -> None:
    proxy = served(policy={"allow_actions": ["*"]}, cache={"enabled": True})
    legacy = legacy_client(f"http://127.0.0.1:{proxy.port}", str(tmp_path_factory.getbasetemp()))
    before = scrape(proxy.admin_port)

    assert legacy.get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == DEMO_SECRET_VALUE
    assert legacy.describe_secret(SecretId=DEMO_SECRET)["Name"] == DEMO_SECRET
    with pytest.raises(legacy.exceptions.ResourceNotFoundException):
        legacy.get_secret_value(SecretId="demo/no-such-secret")
    assert get(proxy.port, "/?Action=NoSuchAction&Version=2017-10-17")[0] == 400

    after = scrape(proxy.admin_port)
    p = "query_signing_proxy_"

    def moved(name: str, **labels: str) -> float:
        return value(after, p + name, **labels) - value(before, p + name, **labels)

    assert moved("requests_total", action="GetSecretValue", code="OK") == 1
    assert moved("requests_total", action="DescribeSecret", code="OK") == 1
    assert moved("requests_total", action="GetSecretValue", code="ResourceNotFoundException") == 1
    assert moved("requests_total", action="-", code="InvalidAction") == 1
    assert moved("request_duration_seconds_count", action="GetSecretValue") == 2
    assert moved("request_duration_seconds_sum", action="GetSecretValue") > 0
    assert moved("request_duration_seconds_bucket", action="GetSecretValue", le="+Inf") == 2
    assert moved("upstream_duration_seconds_count", action="GetSecretValue") == 2
    assert moved("upstream_duration_seconds_sum", action="GetSecretValue") > 0
    assert moved("upstream_attempts_count", action="GetSecretValue") == 2
    assert moved("upstream_attempts_sum", action="GetSecretValue") == 2  # one attempt each, no retries
    assert moved("upstream_attempts_count", action="DescribeSecret") == 1
    # the in-flight gauge went up and came back (held in flight: test_in_flight_gauge_counts_held_requests)
    assert value(after, p + "requests_in_flight") == 0
    # credentials: fetched once at start (AssumeRole at the emulator), valid for the role session's hour
    assert value(after, p + "credential_refreshes_total", result="success") >= 1
    assert value(after, p + "credential_refreshes_total", result="error") == 0
    assert 0 < value(after, p + "credential_expiry_seconds") <= 3600
    # the admin endpoints are not Query requests: scraping does not count
    assert moved("requests_total", action="-", code="OK") == 0
    # the secret cache (on here): both GetSecretValue reads missed, one value is held; a repeat read is a hit
    # without an upstream call (evictions: tests/unit/test_cache.py)
    assert moved("cache_misses_total") == 2
    assert value(after, p + "cache_entries") == 1
    assert legacy.get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == DEMO_SECRET_VALUE
    again = scrape(proxy.admin_port)
    assert (
        value(again, p + "cache_hits_total", freshness="fresh")
        - value(after, p + "cache_hits_total", freshness="fresh")
        == 1
    )
    assert value(again, p + "upstream_attempts_count", action="GetSecretValue") == value(
        after, p + "upstream_attempts_count", action="GetSecretValue"
    )
    # the held answer's bytes; no refresh or version check came due (their movements: tests/unit/test_cache_refresh.py)
    size = len(json.dumps(emulator.direct().get_secret_value(SecretId=DEMO_SECRET)["SecretString"]))
    assert value(again, p + "cache_bytes") > size
    for result in ("fetched", "unchanged", "adopted", "failed", "discarded"):
        assert (p + "cache_refreshes_total", frozenset({("result", result)})) in again
        assert value(again, p + "cache_refreshes_total", result=result) == 0
    for result in ("unchanged", "changed", "error"):
        assert value(again, p + "cache_version_checks_total", result=result) == 0
    # the retry budget: no retry was due, the bucket stays full (its movements: tests/integration/test_retries.py)
    assert value(again, p + "retry_quota_tokens") == 500
    assert value(again, p + "retries_refused_total") == 0
    # and nothing the proxy exports was left out above
    checked = {"requests", "request_duration_seconds", "upstream_duration_seconds", "upstream_attempts"}
    checked |= {"requests_in_flight", "credential_refreshes", "credential_expiry_seconds"}
    checked |= {"cache_hits", "cache_misses", "cache_evictions", "cache_entries", "cache_bytes"}
    checked |= {"cache_refreshes", "cache_version_checks"}
    checked |= {"retries_refused", "retry_quota_tokens"}
    assert {family.name.removeprefix(p) for family in Metrics.create().registry.collect()} == checked


def test_in_flight_gauge_counts_held_requests(
    served: Callable[..., Served], emulator: Emulator, tmp_path_factory: Any
) -> None:
    """A real aiohttp upstream that holds the request until released: the gauge shows it while it is held."""
    release = threading.Event()
    arrived = threading.Event()

    async def held(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 30)
        body = {"ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:held-AbCdEf", "Name": "held"}
        return web.Response(
            body=json.dumps(body).encode(),
            content_type="application/x-amz-json-1.1",
            headers={"x-amzn-RequestId": "held-request-1"},
        )

    def upstream_app() -> web.Application:
        app = web.Application()
        app.router.add_post("/", held)
        return app

    with ServerThread(upstream_app) as upstream:
        proxy = served(
            upstream={"endpoint_url": upstream.url, "allow_insecure_http": True},
            policy={"allow_actions": ["*"]},
        )
        result: list[int] = []
        client = threading.Thread(
            target=lambda: result.append(get(proxy.port, "/?Action=DescribeSecret&SecretId=held&Version=2017-10-17")[0])
        )
        client.start()
        try:
            assert arrived.wait(30)
            poll(
                lambda: value(scrape(proxy.admin_port), "query_signing_proxy_requests_in_flight") == 1,
                30,
                "in-flight 1",
            )
        finally:
            release.set()
            client.join(30)
        assert result == [200]
        assert value(scrape(proxy.admin_port), "query_signing_proxy_requests_in_flight") == 0
