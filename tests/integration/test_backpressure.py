"""Backpressure (issue 5, item 3): the concurrency cap answers 503 at once, the upstream pool is bounded, a
client that goes away releases its upstream connection, and later requests are not stuck."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from proxy.models import SignedRequest
from proxy.upstream import AiohttpUpstream
from tests.faults import delayed, never, ok, xml_error
from tests.support import poll, raw_request

GET = "/?Action=GetSecretValue&SecretId=app%2Fdb&Version=2017-10-17"
SDK_HEADERS = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "secretsmanager.ListSecrets"}


def send_and_leave(port: int, target: str = GET) -> socket.socket:
    """Send a request on a raw socket and return it unread (the caller closes it: a client going away)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def test_over_the_concurrency_cap_is_503_with_retry_after_at_once(start_fault, start_fault_proxy):
    fault = start_fault(never())
    proxy = start_fault_proxy(
        fault.url,
        limits={"max_concurrent_requests": 2},
        upstream={"read_timeout_seconds": 5, "total_timeout_seconds": 5},
    )
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(raw_request, proxy.port, "GET", GET) for _ in range(2)]
        poll(lambda: len(fault.seen) == 2, 5, "two requests to reach the upstream")
        started = time.monotonic()
        over = raw_request(proxy.port, "GET", GET)
        elapsed = time.monotonic() - started
        assert over.status == 503
        assert over.header("Retry-After") == "1"
        assert xml_error(over.body)[:2] == ("Receiver", "ServiceUnavailable")
        assert elapsed < 5  # not queued behind the two held requests (they end only at the 5 s deadline)
        # an SDK caller gets the code SDKs back off on, still a 503 (docs/interface.md, "SDK callers")
        sdk_over = raw_request(proxy.port, "POST", "/", b"{}", headers=SDK_HEADERS)
        assert (sdk_over.status, sdk_over.header("Retry-After")) == (503, "1")
        assert json.loads(sdk_over.body)["__type"] == "ThrottlingException"
        assert len(fault.seen) == 2  # the refused requests never reached the upstream
        # the admin endpoints are not Query requests: never refused by the cap
        assert raw_request(proxy.port, "GET", "/healthz").status == 200
        assert [f.result().status for f in held] == [504, 504]
    fault.behaviour = ok()
    assert raw_request(proxy.port, "GET", GET).status == 200  # the slots were given back


async def test_the_upstream_pool_is_bounded(start_fault, certs):
    fault = start_fault(delayed(0.2, ok()))
    upstream = AiohttpUpstream(
        ca_bundle=certs.ca_file, connect_timeout=2, read_timeout=5, max_response_bytes=1 << 20, pool_size=2
    )
    await upstream.start()
    try:
        request = SignedRequest("POST", fault.url + "/", (("Content-Type", "application/x-amz-json-1.1"),), b"{}")
        answers = await asyncio.gather(*(upstream.send(request) for _ in range(8)))
    finally:
        await upstream.aclose()
    assert [a.status for a in answers] == [200] * 8
    assert len(fault.seen) == 8
    assert fault.peak_active <= 2
    assert fault.peak_connections <= 2


def test_a_client_that_goes_away_releases_its_upstream_connection(start_fault, start_fault_proxy, caplog):
    caplog.set_level(logging.INFO, logger="proxy.access")
    fault = start_fault(never())
    # a long total deadline: only the clients leaving can end these upstream requests in time
    proxy = start_fault_proxy(
        fault.url,
        limits={"max_concurrent_requests": 4},
        upstream={"read_timeout_seconds": 30, "total_timeout_seconds": 60},
    )
    clients = [send_and_leave(proxy.port) for _ in range(4)]
    poll(lambda: len(fault.seen) == 4, 5, "four requests to reach the upstream")
    for sock in clients:
        sock.close()
    poll(lambda: fault.open_connections() == 0, 5, "the proxy to close the four upstream connections")
    assert fault.cancelled == 4
    poll(lambda: len([r for r in caplog.records if r.name == "proxy.access"]) == 4, 5, "four access lines")
    assert {r.status for r in caplog.records if r.name == "proxy.access"} == {499}  # type: ignore[attr-defined]
    # later requests are neither refused by the cap nor stuck behind leaked connections
    fault.behaviour = ok()
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: raw_request(proxy.port, "GET", GET, timeout=10).status, range(4)))
    assert statuses == [200] * 4
