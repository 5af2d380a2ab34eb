"""Deadlines (issue 5, item 1): connect, read and total deadlines against upstreams that stall, and the
upstream socket released afterwards. Real aiohttp fault servers over TLS on loopback."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.faults import (
    ScriptedServer,
    SilentServer,
    drip,
    http_answer,
    never,
    read_http_request,
    secret_value,
    stall_body,
    xml_error,
)
from tests.support import poll, raw_request

GET = "/?Action=GetSecretValue&SecretId=app%2Fdb&Version=2017-10-17"
SLACK = 1.0  # seconds past a deadline the answer may take


def timed(port: int, target: str = GET) -> tuple[float, int, bytes]:
    started = time.monotonic()
    resp = raw_request(port, "GET", target, timeout=30)
    return time.monotonic() - started, resp.status, resp.body


def test_accept_and_never_answer_is_504_within_the_total_deadline(start_fault, start_fault_proxy):
    fault = start_fault(never())
    proxy = start_fault_proxy(fault.url, upstream={"read_timeout_seconds": 1, "total_timeout_seconds": 2})
    elapsed, status, body = timed(proxy.port)
    assert status == 504
    assert xml_error(body)[:2] == ("Receiver", "GatewayTimeout")
    assert elapsed <= 2 + SLACK
    assert len(fault.seen) >= 1
    # every upstream connection the proxy opened is closed again, and the fault server's handlers ended
    poll(lambda: fault.open_connections() == 0, 5, "the proxy to close its upstream connections")
    assert fault.cancelled == len(fault.seen)
    # an SDK caller gets 504 too, with a code the SDKs retry on (docs/interface.md, "SDK callers")
    sdk = raw_request(
        proxy.port,
        "POST",
        "/",
        b'{"SecretId": "app/db"}',
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "secretsmanager.GetSecretValue"},
    )
    assert (sdk.status, json.loads(sdk.body)["__type"]) == (504, "RequestTimeoutException")


def test_read_timeout_applies_per_attempt_and_retries_within_the_total_deadline(start_fault, start_fault_proxy):
    fault = start_fault(never())
    proxy = start_fault_proxy(fault.url, upstream={"read_timeout_seconds": 0.5, "total_timeout_seconds": 6})
    elapsed, status, body = timed(proxy.port)
    assert status == 504
    assert xml_error(body)[1] == "GatewayTimeout"
    # three attempts (max_attempts), each cut by the read deadline, so well before the total deadline
    assert len(fault.seen) == 3
    assert elapsed < 6
    poll(lambda: fault.open_connections() == 0, 5, "the proxy to close its upstream connections")


def test_tls_handshake_that_never_completes_hits_the_connect_deadline(start_fault_proxy):
    with SilentServer() as silent:
        proxy = start_fault_proxy(
            f"https://127.0.0.1:{silent.port}",
            upstream={"connect_timeout_seconds": 0.5, "read_timeout_seconds": 5, "total_timeout_seconds": 5},
        )
        elapsed, status, body = timed(proxy.port)
        assert status == 504
        assert xml_error(body)[1] == "GatewayTimeout"
        assert silent.accepted == 3  # one connection per attempt, each given up after connect_timeout_seconds
        assert elapsed < 5
        poll(lambda: silent.open == 0, 5, "the proxy to close the half-open connections")


def test_headers_then_stalled_body_ends_within_the_deadline(start_fault, start_fault_proxy):
    fault = start_fault(stall_body())
    proxy = start_fault_proxy(fault.url, upstream={"read_timeout_seconds": 1, "total_timeout_seconds": 2})
    elapsed, status, body = timed(proxy.port)
    assert status == 504
    assert xml_error(body)[1] == "GatewayTimeout"
    assert elapsed <= 2 + SLACK
    poll(lambda: fault.open_connections() == 0, 5, "the proxy to close its upstream connections")
    assert fault.cancelled == len(fault.seen)


def test_a_body_that_drips_inside_the_read_deadline_is_cut_by_the_total_deadline(start_fault, start_fault_proxy):
    fault = start_fault(drip(0.2))
    proxy = start_fault_proxy(fault.url, upstream={"read_timeout_seconds": 1, "total_timeout_seconds": 2})
    elapsed, status, body = timed(proxy.port)
    assert status == 504
    assert xml_error(body)[1] == "GatewayTimeout"
    assert elapsed <= 2 + SLACK
    assert len(fault.seen) == 1  # the read deadline never fired: one attempt, ended by the total deadline
    poll(lambda: fault.open_connections() == 0, 5, "the proxy to close its upstream connection")


def test_a_timed_out_connection_to_a_quiet_upstream_does_not_hold_the_pool(certs, start_fault_proxy):
    """The first connection reads the request and goes quiet (no answer, no FIN, no TLS ``close_notify``). With
    one upstream connection allowed (``limits.max_concurrent_requests: 1``), the request after the 504 gets a
    connection of its own at once, rather than waiting for the dropped one's TLS shutdown (30 s)."""

    def script(conn: Any, n: int) -> None:
        while read_http_request(conn) is not None and n > 1:
            conn.sendall(http_answer(json.dumps(secret_value()).encode()))

    with ScriptedServer(certs.server_context(), script) as server:
        proxy = start_fault_proxy(
            server.url,
            upstream={"read_timeout_seconds": 0.5, "total_timeout_seconds": 3, "max_attempts": 1},
            limits={"max_concurrent_requests": 1},
        )
        elapsed, status, body = timed(proxy.port)
        assert (status, xml_error(body)[1]) == (504, "GatewayTimeout")
        elapsed, status, body = timed(proxy.port)
        assert status == 200, body
        assert b"<SecretString>s3cr3t</SecretString>" in body
        assert server.accepted == 2 and server.errors == []
