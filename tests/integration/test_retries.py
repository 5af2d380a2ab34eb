"""Retries (issue 5, item 2; docs/interface.md, "The upstream request"): botocore standard-mode semantics, only for reads and writes
carrying an idempotency token, each attempt signed afresh; the attempt count in the access line and metrics.
The retry budget (issue 13, item 5): one bucket of 500 tokens per process, through the real listeners
against a throttling fault server; bench/retry_budget.py measures it under open-loop load."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import aiohttp
import botocore.auth
import pytest

from proxy import attempts
from proxy.local import REGION
from tests.clocks import SigningClock
from tests.faults import (
    aiohttp_get,
    answer,
    fault_config,
    ok,
    reset_mid_body,
    sequence,
    signature_of,
    sigv4_valid,
    throttle,
    xml_error,
)
from tests.serving import Served
from tests.support import poll, raw_request

GET = "/?Action=GetSecretValue&SecretId=app%2Fdb&Version=2017-10-17"


def access_records(caplog: pytest.LogCaptureFixture, count: int = 1) -> list[logging.LogRecord]:
    """The access lines, once ``count`` are there (a line is written after the last byte of its answer)."""

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "proxy.access"]

    poll(lambda: len(lines()) >= count, 5, f"{count} access line(s)")
    return lines()


def metric(port: int, name: str, **labels: str) -> float:
    text = raw_request(port, "GET", "/metrics").body.decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    assert m, f"{name}{{{wanted}}} not in /metrics"
    return float(m.group(1))


@pytest.mark.parametrize("code", ["ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded"])
def test_throttled_twice_then_success_is_200_after_three_attempts(start_fault, start_fault_proxy, caplog, code):
    caplog.set_level(logging.INFO, logger="proxy.access")
    fault = start_fault(sequence(throttle(code), throttle(code), ok()))
    proxy = start_fault_proxy(fault.url, upstream={"total_timeout_seconds": 10})
    resp = raw_request(proxy.port, "GET", GET)
    assert resp.status == 200, resp.body
    assert b"<SecretString>s3cr3t</SecretString>" in resp.body
    assert len(fault.seen) == 3
    (line,) = access_records(caplog)
    assert line.attempts == 3  # type: ignore[attr-defined]
    assert line.status == 200  # type: ignore[attr-defined]
    labels = {"action": "GetSecretValue"}
    assert metric(proxy.port, "query_signing_proxy_upstream_attempts_sum", **labels) == 3
    assert metric(proxy.port, "query_signing_proxy_upstream_attempts_count", **labels) == 1


def test_every_attempt_is_signed_afresh(start_fault, start_fault_proxy, monkeypatch):
    clock = SigningClock()  # one second per signature: a reused signature would show as a repeated X-Amz-Date
    monkeypatch.setattr(botocore.auth, "get_current_datetime", clock)
    fault = start_fault(
        sequence(throttle(), answer(503, "<html><body>busy</body></html>", content_type="text/html"), ok())
    )
    proxy = start_fault_proxy(fault.url, upstream={"total_timeout_seconds": 10})
    assert raw_request(proxy.port, "GET", GET).status == 200
    assert len(fault.seen) == 3
    dates = [s.header("X-Amz-Date") for s in fault.seen]
    signatures = [signature_of(s) for s in fault.seen]
    assert len(set(dates)) == 3 and len(set(signatures)) == 3
    assert all(sigv4_valid(s) for s in fault.seen), "each attempt's signature matches its own X-Amz-Date"
    assert len({s.body for s in fault.seen}) == 1  # the same request, re-signed


def test_attempts_stop_at_max_attempts(start_fault, start_fault_proxy, caplog):
    caplog.set_level(logging.INFO, logger="proxy.access")
    fault = start_fault(throttle())
    proxy = start_fault_proxy(fault.url, upstream={"max_attempts": 2, "total_timeout_seconds": 10})
    resp = raw_request(proxy.port, "GET", GET)
    assert resp.status == 400
    assert xml_error(resp.body)[:2] == ("Sender", "ThrottlingException")
    assert len(fault.seen) == 2
    assert access_records(caplog)[0].attempts == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "target",
    [
        "/?Action=DeleteSecret&SecretId=app%2Fdb&Version=2017-10-17",
        "/?Action=TagResource&SecretId=app%2Fdb&Tags.member.1.Key=k&Tags.member.1.Value=v&Version=2017-10-17",
    ],
)
@pytest.mark.parametrize("fault_kind", ["503", "throttled", "reset"])
def test_a_write_without_idempotency_token_is_sent_once(start_fault, start_fault_proxy, caplog, target, fault_kind):
    caplog.set_level(logging.INFO, logger="proxy.access")
    behaviour = {
        "503": answer(503, "<html>Service Unavailable</html>", content_type="text/html"),
        "throttled": throttle(),
        "reset": reset_mid_body(),
    }[fault_kind]
    fault = start_fault(sequence(behaviour, ok()))
    proxy = start_fault_proxy(fault.url, upstream={"total_timeout_seconds": 10})
    resp = raw_request(proxy.port, "GET", target)
    assert resp.status in (400, 502, 503)
    xml_error(resp.body)
    assert len(fault.seen) == 1
    assert access_records(caplog)[0].attempts == 1  # type: ignore[attr-defined]


def test_a_write_with_an_idempotency_token_is_retried_with_the_same_token(start_fault, start_fault_proxy):
    fault = start_fault(sequence(answer(500, b""), throttle(), answer(200, {"ARN": "arn", "Name": "app/db"})))
    proxy = start_fault_proxy(fault.url, upstream={"total_timeout_seconds": 10})
    target = "/?Action=PutSecretValue&SecretId=app%2Fdb&SecretString=v2&Version=2017-10-17"
    resp = raw_request(proxy.port, "GET", target)
    assert resp.status == 200, resp.body
    assert len(fault.seen) == 3
    tokens = {s.json()["ClientRequestToken"] for s in fault.seen}
    assert len(tokens) == 1  # the proxy filled the token once; every attempt carries it


def test_a_final_error_is_not_retried(start_fault, start_fault_proxy):
    fault = start_fault(answer(400, {"__type": "ResourceNotFoundException", "message": "no such secret"}))
    proxy = start_fault_proxy(fault.url)
    resp = raw_request(proxy.port, "GET", GET)
    assert resp.status == 400
    assert xml_error(resp.body)[1] == "ResourceNotFoundException"
    assert len(fault.seen) == 1


# ---------------------------------------------------------------------------------------------------------
# the retry budget (issue 13, item 5): botocore standard mode's quota, one bucket of 500 tokens per process


@pytest.fixture
def instant_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """No backoff sleeps (the proxy runs in this process): the budget's arithmetic without the waiting."""
    monkeypatch.setattr(attempts, "backoff_seconds", lambda attempt: 0.0)


def family(port: int, name: str) -> float:
    """A metric without labels (``0`` when the counter has not been touched)."""
    text = raw_request(port, "GET", "/metrics").body.decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


REFUSED = "query_signing_proxy_retries_refused_total"
TOKENS = "query_signing_proxy_retry_quota_tokens"


def test_an_always_throttling_upstream_drains_the_budget_then_gets_one_call_per_request(
    start_fault, start_fault_proxy, instant_backoff
):
    fault = start_fault(throttle())
    proxy = start_fault_proxy(fault.url, upstream={"total_timeout_seconds": 10})
    assert family(proxy.port, TOKENS) == 500
    for i in range(60):
        resp = raw_request(proxy.port, "GET", GET)
        assert resp.status == 400 and xml_error(resp.body)[1] == "ThrottlingException"  # the upstream's error
        if i == 49:  # 50 requests x 2 retries x 5 tokens: the bucket is empty
            assert len(fault.seen) == 150 and family(proxy.port, TOKENS) == 0
    assert len(fault.seen) == 150 + 10  # after that: one call per request
    assert family(proxy.port, REFUSED) == 10
    # successes give a token back each; five pay for one more throttled retry
    fault.behaviour = ok()
    for _ in range(5):
        assert raw_request(proxy.port, "GET", GET).status == 200
    assert family(proxy.port, TOKENS) == 5
    fault.behaviour = throttle()
    seen = len(fault.seen)
    assert raw_request(proxy.port, "GET", GET).status == 400
    assert len(fault.seen) == seen + 2 and family(proxy.port, REFUSED) == 11


def test_concurrent_requests_share_the_budget(start_fault, start_fault_proxy, instant_backoff):
    fault = start_fault(throttle())
    proxy = start_fault_proxy(fault.url, upstream={"total_timeout_seconds": 10})

    async def burst() -> list[int]:
        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(*(aiohttp_get(session, f"{proxy.url}{GET}") for _ in range(100)))
        return [status for status, _ in results]

    assert asyncio.run(burst()) == [400] * 100
    # 100 first calls, and the 100 retries 500 tokens pay for (of the 200 that max_attempts 3 allows)
    assert len(fault.seen) == 200
    # each request is refused at most once (its first unpaid retry ends it): 50 to 100 refusals
    assert 50 <= family(proxy.port, REFUSED) <= 100


def test_transport_failures_cost_ten_tokens_and_end_in_bad_gateway(start_fault, start_fault_proxy, instant_backoff):
    fault = start_fault(reset_mid_body())
    proxy = start_fault_proxy(fault.url, upstream={"total_timeout_seconds": 10})
    assert raw_request(proxy.port, "GET", GET).status == 502
    assert len(fault.seen) == 3 and family(proxy.port, TOKENS) == 480
    for _ in range(24):  # 24 x 20 = 480
        assert raw_request(proxy.port, "GET", GET).status == 502
    assert family(proxy.port, TOKENS) == 0
    seen = len(fault.seen)
    resp = raw_request(proxy.port, "GET", GET)
    assert resp.status == 502 and xml_error(resp.body)[1] == "BadGateway"
    assert len(fault.seen) == seen + 1 and family(proxy.port, REFUSED) == 1


def test_sdk_calls_and_every_listener_of_the_process_draw_on_one_budget(
    certs, static_keys, start_fault, instant_backoff
):
    fault = start_fault(throttle())
    upstream = {"region": REGION, "endpoint_url": fault.url, "ca_bundle": certs.ca_file, "total_timeout_seconds": 10}
    cfg = fault_config(
        fault.url,
        certs.ca_file,
        upstream={"total_timeout_seconds": 10},
        routes=[{"port": 0, "upstream": upstream, "policy": {"allow_actions": ["GetSecretValue"]}}],
    )
    with Served(cfg) as served:
        sdk = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "secretsmanager.GetSecretValue"}
        body = b'{"SecretId": "app/db"}'
        for i in range(50):  # 25 Query requests on the main listener, 25 SDK calls on the route
            if i % 2:
                resp = raw_request(served.route_ports[0], "POST", "/", body, headers=sdk)
            else:
                resp = raw_request(served.port, "GET", GET)
            assert resp.status == 400
        assert len(fault.seen) == 150 and family(served.port, TOKENS) == 0
        resp = raw_request(served.port, "POST", "/", body, headers=sdk)
        assert resp.status == 400 and json.loads(resp.body)["__type"] == "ThrottlingException"  # relayed
        resp = raw_request(served.route_ports[0], "GET", GET)
        assert resp.status == 400 and xml_error(resp.body)[1] == "ThrottlingException"
        assert len(fault.seen) == 152 and family(served.port, REFUSED) == 2
