"""Graceful shutdown (issue 5, item 5; docs/interface.md, "Signals and shutdown"): the real CLI in a child process, SIGTERM while
requests are in flight against an upstream that takes 2 s."""

from __future__ import annotations

import signal
import time
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.faults import MeasuredProxy, by_secret, delayed, never, ok, sequence
from tests.support import poll, raw_request

SLOW = "/?Action=GetSecretValue&SecretId=slow&Version=2017-10-17"
FAST = "/?Action=GetSecretValue&SecretId=fast&Version=2017-10-17"


def config(url: str, ca_file: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstream": {"region": "us-east-1", "endpoint_url": url, "ca_bundle": ca_file},
    }
    data.update(extra)
    return data


def status(port: int, target: str) -> int | None:
    """The status of ``GET target``, or None when the connection is refused, or (accepted in the instant the
    listener closed) closed without an answer. A hang is a failure: the client's timeout is short."""
    try:
        return raw_request(port, "GET", target, timeout=3).status
    except ConnectionError:
        return None


def assert_whole_answer(body: bytes) -> None:
    root = ElementTree.fromstring(body)
    assert root.findtext(".//{*}SecretString") == "s3cr3t"
    assert root.findtext(".//{*}RequestId")


def test_sigterm_lets_five_in_flight_requests_finish_and_exits_0(start_fault, certs, tmp_path):
    fault = start_fault(delayed(2.0, ok()))
    cfg = config(fault.url, certs.ca_file, admin={"host": "127.0.0.1", "port": 0}, shutdown_grace_seconds=20)
    with MeasuredProxy(tmp_path, cfg) as proxy:
        assert proxy.admin_port is not None
        poll(lambda: status(proxy.admin_port, "/readyz") == 200, 10, "the proxy to be ready")
        with ThreadPoolExecutor(5) as pool:
            answers = [pool.submit(raw_request, proxy.port, "GET", SLOW, timeout=30) for _ in range(5)]
            poll(lambda: len(fault.seen) == 5, 10, "five requests to reach the upstream")
            proxy.signal(signal.SIGTERM)
            signalled = time.monotonic()
            poll(lambda: status(proxy.admin_port, "/readyz") == 503, 1, "/readyz to turn 503")
            # no shutdown delay: the Query listener closes at once (a probe path answers 404 while it is open)
            poll(lambda: status(proxy.port, "/probe") is None, 1, "new connections to be refused")
            assert not any(a.done() for a in answers)  # still in flight while /readyz says 503
            results = [a.result() for a in answers]
        assert [r.status for r in results] == [200] * 5
        for r in results:
            assert int(r.header("Content-Length") or -1) == len(r.body)
            assert_whole_answer(r.body)
        assert proxy.wait(30) == 0
        assert time.monotonic() - signalled < 20
        statuses = [line["status"] for line in proxy.access_lines()]
        assert statuses.count(200) == 5
        assert set(statuses) <= {200, 404}  # and perhaps a probe made before the listener closed
        assert any(line.get("message") == "stopped" for line in proxy.lines())


def test_requests_are_still_accepted_during_shutdown_delay(start_fault, certs, tmp_path):
    delay = 1.5
    fault = start_fault(by_secret({"slow": delayed(2.5, ok())}, ok()))
    cfg = config(fault.url, certs.ca_file, shutdown_delay_seconds=delay)
    with MeasuredProxy(tmp_path, cfg) as proxy:
        poll(lambda: status(proxy.port, "/readyz") == 200, 10, "the proxy to be ready")
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(raw_request, proxy.port, "GET", SLOW, timeout=30)
            poll(lambda: len(fault.seen) == 1, 10, "the slow request to reach the upstream")
            signalled = time.monotonic()
            proxy.signal(signal.SIGTERM)
            poll(lambda: status(proxy.port, "/readyz") == 503, 1, "/readyz to turn 503")
            during = raw_request(proxy.port, "GET", FAST, timeout=10)  # new work, inside the delay
            assert during.status == 200
            assert_whole_answer(during.body)
            assert time.monotonic() - signalled < delay
            poll(lambda: status(proxy.port, "/readyz") is None, delay + 2, "the listener to close")
            assert time.monotonic() - signalled >= delay  # not before the delay
            result = slow.result()
        assert result.status == 200
        assert_whole_answer(result.body)
        assert proxy.wait(30) == 0


def test_in_flight_requests_are_cut_after_shutdown_grace_seconds(start_fault, certs, tmp_path):
    grace = 1.0
    fault = start_fault(never())
    cfg = config(
        fault.url,
        certs.ca_file,
        upstream={
            "region": "us-east-1",
            "endpoint_url": fault.url,
            "ca_bundle": certs.ca_file,
            "read_timeout_seconds": 60,
            "total_timeout_seconds": 60,
        },
        shutdown_grace_seconds=grace,
    )
    with MeasuredProxy(tmp_path, cfg) as proxy:
        poll(lambda: status(proxy.port, "/readyz") == 200, 10, "the proxy to be ready")
        with ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(raw_request, proxy.port, "GET", SLOW, timeout=30)
            poll(lambda: len(fault.seen) == 1, 10, "the request to reach the upstream")
            signalled = time.monotonic()
            proxy.signal(signal.SIGTERM)
            assert proxy.wait(30) == 0
            assert time.monotonic() - signalled < grace + 5
            try:
                stuck.result()
            except ConnectionError:
                pass  # the connection was closed without an answer: the grace period was over
        poll(lambda: fault.open_connections() == 0, 5, "the upstream connection to be closed")


def test_sigterm_with_a_cache_refresh_hanging_at_the_upstream(start_fault, certs, tmp_path):
    """Refresh-ahead (issue 16) has a GetSecretValue of its own in flight, which the upstream never answers:
    SIGTERM drains the requests (none here) and exits 0 at once, without waiting for that call."""
    fault = start_fault(sequence(ok(), never()))
    cfg = config(
        fault.url,
        certs.ca_file,
        upstream={
            "region": "us-east-1",
            "endpoint_url": fault.url,
            "ca_bundle": certs.ca_file,
            "read_timeout_seconds": 60,
            "total_timeout_seconds": 60,
        },
        cache={"enabled": True, "ttl_seconds": 2},
    )
    with MeasuredProxy(tmp_path, cfg) as proxy:
        poll(lambda: status(proxy.port, "/readyz") == 200, 10, "the proxy to be ready")
        read = "/?Action=GetSecretValue&SecretId=app%2Fdb&Version=2017-10-17"  # the secret ok() answers with
        assert raw_request(proxy.port, "GET", read, timeout=30).status == 200  # a miss: fetched and cached

        def refreshing() -> bool:  # hits (fresh for 2 s); the first one past 1.6 s starts the refresh
            if len(fault.seen) == 2:
                return True
            assert raw_request(proxy.port, "GET", read, timeout=30).status == 200
            return False

        poll(refreshing, 10, "a refresh to reach the upstream")
        signalled = time.monotonic()
        proxy.signal(signal.SIGTERM)
        assert proxy.wait(30) == 0
        assert time.monotonic() - signalled < 5  # the grace period (20 s) is for requests, not for refreshes
    poll(lambda: fault.open_connections() == 0, 5, "the refresh's upstream connection to be closed")
