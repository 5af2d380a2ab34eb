"""Retries (issue 5, item 2; docs/interface.md, "The upstream request"): botocore standard-mode semantics, only for reads and writes
carrying an idempotency token, each attempt signed afresh; the attempt count in the access line and metrics."""

from __future__ import annotations

import logging
import re

import botocore.auth
import pytest

from tests.clocks import SigningClock
from tests.faults import (
    answer,
    ok,
    reset_mid_body,
    sequence,
    signature_of,
    sigv4_valid,
    throttle,
    xml_error,
)
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
