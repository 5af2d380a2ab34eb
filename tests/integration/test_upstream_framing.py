"""How the upstream frames its answers, through the real listener against real aiohttp fault servers over TLS
(aiohttp's client on every upstream path): pooled connections reused under load and never handed out with
an answer nobody asked for, ``Connection: close``, interim 1xx answers, bodies cut short by a clean close
or framed by it, ``limits.max_response_bytes`` at its boundary and once decompressed. Resets, redirects,
upgrades, stalls and chunked or declared answers over the limit are in test_upstream_faults.py,
test_attacks.py and test_deadlines.py."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiohttp import web

from tests.faults import JSON_TYPE, answer, ok, raw_answer, secret_value, xml_error
from tests.support import poll, raw_request

GET = "/?Action=GetSecretValue&SecretId=app%2Fdb&Version=2017-10-17"
BODY = json.dumps(secret_value()).encode()
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: " + JSON_TYPE.encode() + b"\r\nx-amzn-RequestId: fault-raw\r\n"


def query(proxy: Any) -> tuple[int, bytes]:
    resp = raw_request(proxy.port, "GET", GET, timeout=30)
    return resp.status, resp.body


def answer_then_plant(data: bytes, planted: bytes, go: threading.Event, sent: threading.Event) -> Any:
    """Write ``data`` as the answer and keep the connection; once ``go`` is set (the test has that answer, so
    the proxy has put the connection back in its pool) write ``planted``, set ``sent`` and wait for ever."""

    async def behave(request: web.Request, seen: Any) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        transport.write(data)
        assert await asyncio.to_thread(go.wait, 10)
        transport.write(planted)
        sent.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return behave


def test_connections_are_reused_under_load(start_fault: Any, start_fault_proxy: Any) -> None:
    fault = start_fault(ok())
    proxy = start_fault_proxy(fault.url, upstream={"max_attempts": 1})
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: query(proxy)[0], range(80)))
    assert statuses == [200] * 80
    assert len(fault.seen) == 80
    assert fault.handshakes <= 8  # one TLS connection per request in flight at most, not one per request


def test_an_upstream_that_closes_every_connection(start_fault: Any, start_fault_proxy: Any) -> None:
    fault = start_fault(answer(200, secret_value(), headers={"Connection": "close"}))
    proxy = start_fault_proxy(fault.url, upstream={"max_attempts": 1})  # no retry hides a reused dead socket
    statuses = [query(proxy)[0] for _ in range(5)]
    with ThreadPoolExecutor(4) as pool:
        statuses += list(pool.map(lambda _: query(proxy)[0], range(20)))
    assert statuses == [200] * 25
    assert fault.handshakes == 25
    poll(lambda: fault.open_connections() == 0, 5, "the closed connections to be gone")


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
    ],
    ids=["100", "102", "103"],
)
def test_interim_answers_before_the_final_one_are_skipped(
    start_fault: Any, start_fault_proxy: Any, interim: bytes
) -> None:
    fault = start_fault(raw_answer(interim + HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY))
    proxy = start_fault_proxy(fault.url, upstream={"max_attempts": 1})
    status, body = query(proxy)
    assert status == 200, body[:300]
    assert b"<SecretString>s3cr3t</SecretString>" in body


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:20], 502, "BadGateway"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n10\r\n" + BODY[:16] + b"\r\n", 502, "BadGateway"),
        (HEAD + b"\r\n" + BODY[:20], 502, "BadGateway"),  # framed by the close: cut short, not JSON
        (HEAD + b"Connection: close\r\n\r\n" + BODY[:-1] + b" " * 5000 + b"}", 502, "ResponseTooLarge"),
        (HEAD + b"\r\n" + BODY, 200, None),  # framed by the close (RFC 9112 6.3): complete
    ],
    ids=["content-length-short", "chunked-no-last-chunk", "close-framed-short", "close-framed-over", "close-framed"],
)
def test_a_clean_close_ends_the_body(
    start_fault: Any, start_fault_proxy: Any, data: bytes, status: int, code: str | None
) -> None:
    fault = start_fault(raw_answer(data))
    proxy = start_fault_proxy(fault.url, upstream={"max_attempts": 1}, limits={"max_response_bytes": 4096})
    got, body = query(proxy)
    assert got == status, body[:300]
    if code is not None:
        assert xml_error(body)[:2] == ("Receiver", code)
        assert b"s3cr3t" not in body


@pytest.mark.parametrize(("size", "status"), [(4096, 200), (4097, 502)])
def test_max_response_bytes_is_the_largest_answer_read(
    start_fault: Any, start_fault_proxy: Any, size: int, status: int
) -> None:
    document = BODY[:-1] + b" " * (size - len(BODY)) + b"}"
    assert len(document) == size
    fault = start_fault(answer(200, document))
    proxy = start_fault_proxy(fault.url, upstream={"max_attempts": 1}, limits={"max_response_bytes": 4096})
    got, body = query(proxy)
    assert got == status, body[:300]


def test_a_gzip_answer_over_max_response_bytes_once_decompressed(start_fault: Any, start_fault_proxy: Any) -> None:
    bomb = gzip.compress(json.dumps(secret_value(value="a" * 5_000_000)).encode())  # 5 MB in about 5 KB
    fault = start_fault(answer(200, bomb, headers={"Content-Encoding": "gzip"}))
    proxy = start_fault_proxy(fault.url, upstream={"max_attempts": 1}, limits={"max_response_bytes": 65536})
    status, body = query(proxy)
    assert status == 502
    assert xml_error(body)[:2] == ("Receiver", "ResponseTooLarge")
    assert b"once decompressed" in body


def test_an_answer_nobody_asked_for_is_never_given_to_the_next_request(
    start_fault: Any, start_fault_proxy: Any
) -> None:
    """After its answer the upstream sends a second one unasked on the kept-alive connection (or the rest of a
    body longer than its Content-Length arrives late). aiohttp queues it on the pooled connection; the next
    request sent there would get it -- one request's secret handed to another. The connection is closed
    instead and the next request gets its own answer on a new one."""
    planted = json.dumps(secret_value(value="planted")).encode()
    go, sent = threading.Event(), threading.Event()
    fault = start_fault(
        answer_then_plant(
            HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY,
            HEAD + b"Content-Length: %d\r\n\r\n" % len(planted) + planted,
            go,
            sent,
        )
    )
    proxy = start_fault_proxy(fault.url, upstream={"max_attempts": 1})
    status, body = query(proxy)
    assert status == 200 and b"<SecretString>s3cr3t</SecretString>" in body
    go.set()
    assert sent.wait(10)
    for _ in range(3):  # the planted bytes are in the proxy's socket buffer: a few turns of its loop read them
        proxy.call(asyncio.sleep(0))
    fault.behaviour = ok()
    status, body = query(proxy)
    assert status == 200, body[:300]
    assert b"planted" not in body and b"<SecretString>s3cr3t</SecretString>" in body
    assert len(fault.seen) == 2  # the second request reached the upstream
    assert fault.handshakes == 2  # on a new connection
