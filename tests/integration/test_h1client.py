"""What proxy/h1client.py keeps of aiohttp's client beyond the answers themselves (those are compared with
aiohttp's in test_h1client_differential.py): IPv6 upstreams, keep-alive reuse, the bounded pool, idle
connections closed after the keep-alive time and when bytes nobody asked for arrive, the read timeout
held off while the reader lags, the errors of a name that does not resolve or a certificate that does not
verify, and the request it writes. Real aiohttp fault servers over TLS on loopback."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from proxy import errors, h1client
from proxy.h1client import H1Upstream, request_bytes, route_of
from proxy.models import SignedRequest
from tests.faults import JSON_TYPE, FaultServer, LoopbackResolver, answer, delayed, ok, secret_value, stall_body
from tests.support import poll

HOST = "secretsmanager.upstream.test"


def post(url: str, host: str | None = None) -> SignedRequest:
    return SignedRequest(
        "POST",
        url + "/",
        (("Host", host or url.split("//")[1]), ("Content-Type", JSON_TYPE), ("X-Amz-Target", "secretsmanager.X")),
        b'{"SecretId": "app/db"}',
    )


def client(certs: Any, **kwargs: Any) -> H1Upstream:
    settings: dict[str, Any] = {
        "ca_bundle": certs.ca_file,
        "connect_timeout": 2,
        "read_timeout": 2,
        "max_response_bytes": 1 << 20,
    }
    return H1Upstream(**{**settings, **kwargs})


def ipv6_fault(certs: Any, behaviour: Any, *names: str) -> FaultServer:
    server = FaultServer(behaviour, certs.server_context(*(names or ("::1",))))
    server.host = "::1"
    return server.__enter__()


async def test_an_ipv6_literal_upstream(certs):
    server = ipv6_fault(certs, ok())
    try:
        assert server.url.startswith("https://[::1]:")
        upstream = client(certs)
        await upstream.start()
        try:
            answer = await upstream.send(post(server.url))
        finally:
            await upstream.aclose()
        assert answer.status == 200
        assert json.loads(answer.body) == secret_value()
        assert server.seen[0].header("Host") == server.url.split("//")[1]
    finally:
        server.__exit__(None, None, None)


async def test_a_name_that_resolves_to_an_ipv6_address(certs):
    server = ipv6_fault(certs, ok(), HOST)
    try:
        resolver = LoopbackResolver({HOST: "::1"})
        upstream = client(certs, resolver=resolver)
        await upstream.start()
        url = f"https://{HOST}:{server.port}"
        try:
            assert (await upstream.send(post(url))).status == 200
            assert (await upstream.send(post(url))).status == 200
        finally:
            await upstream.aclose()
        assert resolver.asked == [HOST]  # the answer is kept (60 s) and the connection reused
        assert server.handshakes == 1
    finally:
        server.__exit__(None, None, None)


async def test_a_name_that_does_not_resolve_and_a_certificate_for_another_host(certs, start_fault):
    fault = start_fault(ok(), ssl_context=certs.server_context("other.example"))
    upstream = client(certs, resolver=LoopbackResolver({HOST: "127.0.0.1"}))
    await upstream.start()
    try:
        with pytest.raises(errors.UpstreamUnresolvable, match="does not resolve"):
            await upstream.send(post(f"https://nowhere.test:{fault.port}"))
        with pytest.raises(errors.UpstreamCertificateInvalid, match=HOST):
            await upstream.send(post(f"https://{HOST}:{fault.port}"))
    finally:
        await upstream.aclose()
    assert fault.seen == []


async def test_sequential_requests_share_one_connection(certs, start_fault):
    fault = start_fault(ok())
    upstream = client(certs)
    await upstream.start()
    try:
        for _ in range(10):
            assert (await upstream.send(post(fault.url))).status == 200
    finally:
        await upstream.aclose()
    assert len(fault.seen) == 10
    assert fault.handshakes == 1


async def test_the_pool_is_bounded_and_waiters_get_connections_in_turn(certs, start_fault):
    fault = start_fault(delayed(0.1, ok()))
    upstream = client(certs, pool_size=3)
    await upstream.start()
    try:
        answers = await asyncio.gather(*(upstream.send(post(fault.url)) for _ in range(12)))
    finally:
        await upstream.aclose()
    assert [a.status for a in answers] == [200] * 12
    assert fault.peak_active <= 3
    assert fault.handshakes == 3


async def test_a_cancelled_request_closes_its_connection_and_frees_its_place(certs, start_fault):
    fault = start_fault(delayed(30, ok()))
    upstream = client(certs, pool_size=1, read_timeout=60)
    await upstream.start()
    try:
        task = asyncio.ensure_future(upstream.send(post(fault.url)))
        await asyncio.to_thread(poll, lambda: len(fault.seen) == 1, 5, "the request to arrive")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(poll, lambda: fault.open_connections() == 0, 5, "the connection to be closed")
        fault.behaviour = ok()
        assert (await upstream.send(post(fault.url))).status == 200  # the one place in the pool was given back
    finally:
        await upstream.aclose()
    assert fault.handshakes == 2


async def test_idle_connections_are_closed_after_the_keep_alive_time(certs, start_fault, monkeypatch):
    monkeypatch.setattr(h1client, "KEEPALIVE_SECONDS", 0.2)
    fault = start_fault(ok())
    upstream = client(certs)
    await upstream.start()
    try:
        assert (await upstream.send(post(fault.url))).status == 200
        await asyncio.to_thread(poll, lambda: fault.open_connections() == 0, 5, "the idle connection to be closed")
        assert (await upstream.send(post(fault.url))).status == 200
    finally:
        await upstream.aclose()
    assert fault.handshakes == 2


async def test_a_pooled_connection_that_receives_bytes_is_closed(certs, start_fault):
    """Bytes on an idle connection are an answer nobody asked for: the connection is closed at once, and the
    next request gets its own answer on a new one (the case of 16ce49f, below the listener)."""
    body = json.dumps(secret_value()).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: " + JSON_TYPE.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
    go = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def plant(request: Any, seen: Any) -> Any:
        request.transport.write(head + body)
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(go.wait(), loop))
        request.transport.write(head.replace(b"200 OK", b"200 Planted") + body)
        await asyncio.Event().wait()

    fault = start_fault(plant)
    upstream = client(certs)
    await upstream.start()
    try:
        assert (await upstream.send(post(fault.url))).status == 200
        go.set()
        await asyncio.to_thread(poll, lambda: fault.open_connections() == 0, 5, "the planted connection to close")
        fault.behaviour = ok()
        again = await upstream.send(post(fault.url))
        assert again.status == 200 and json.loads(again.body) == secret_value()
    finally:
        await upstream.aclose()
    assert fault.handshakes == 2


async def test_a_slow_reader_is_not_a_read_timeout(certs, start_fault):
    """The read timeout counts the upstream's silence, not the reader's: a streamed answer read slower than
    the upstream sends it (the transport paused by the flow control, so nothing arrives) outlives it."""
    fault = start_fault(answer(200, b"x" * 4_000_000))
    upstream = client(certs, read_timeout=0.4)
    await upstream.start()
    try:
        stream = await upstream.open(post(fault.url))
        got, reads = 0, 0
        chunks = stream.chunks()
        try:
            async for chunk in chunks:
                got, reads = got + len(chunk), reads + 1
                if reads <= 4:
                    await asyncio.sleep(0.5)  # longer than the read timeout, four times over
        finally:
            await chunks.aclose()
            stream.close()
    finally:
        await upstream.aclose()
    assert got == 4_000_000


async def test_an_upstream_that_goes_silent_mid_body_is_a_read_timeout(certs, start_fault):
    fault = start_fault(stall_body())
    upstream = client(certs, read_timeout=0.3)
    await upstream.start()
    try:
        with pytest.raises(errors.GatewayTimeout, match="read_timeout_seconds"):
            await upstream.send(post(fault.url))
    finally:
        await upstream.aclose()


def test_the_request_on_the_wire():
    request = SignedRequest("POST", "https://h/", (("Host", "h"), ("X-Amz-Target", "t")), b"{}")
    assert request_bytes(request, "/", "qsp/1") == (
        b"POST / HTTP/1.1\r\nHost: h\r\nX-Amz-Target: t\r\nUser-Agent: qsp/1\r\nAccept-Encoding: identity\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )


@pytest.mark.parametrize("value", ["a\r\nInjected: 1", "a\rb", "a\nb", "a\x00b"])
def test_a_header_holding_a_line_end_is_refused(value):
    request = SignedRequest("POST", "https://h/", (("Host", "h"), ("X-Amz-Target", value)), b"")
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        request_bytes(request, "/", "qsp/1")


@pytest.mark.parametrize(
    ("url", "key", "target"),
    [
        (
            "https://secretsmanager.us-east-1.amazonaws.com/",
            ("https", "secretsmanager.us-east-1.amazonaws.com", 443),
            "/",
        ),
        ("https://[::1]:8443/", ("https", "::1", 8443), "/"),
        ("http://127.0.0.1:4566", ("http", "127.0.0.1", 4566), "/"),
        ("https://Host.Example:444/a/b?x=1", ("https", "host.example", 444), "/a/b?x=1"),
    ],
)
def test_routes(url, key, target):
    route = route_of(url)
    assert (route.key, route.target) == (key, target)
    with pytest.raises(ValueError):
        route_of("ftp://host/")
