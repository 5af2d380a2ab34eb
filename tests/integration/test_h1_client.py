"""The lean HTTP/1.1 client (proxy/h1.py) against a real TLS server on loopback that answers as each test
scripts it: framing (Content-Length in pieces, chunked with extensions and trailers, interim 100, 204, until
close), keep-alive and its limits, and every failure mapped to the aiohttp exception aiohttp's client raises."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp.client_exceptions import SocketTimeoutError

from proxy import h1
from tests.faults import Certs, LoopbackResolver

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]
"""Answers one request (its head and body given); returns False to stop serving the connection."""


@dataclass
class Server:
    port: int
    script: list[Script]
    connections: int = 0
    open_now: int = 0
    peak_open: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed_by_client: int = 0


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return head + body


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Server, Certs]]:
    certs = Certs(tmp_path)
    state = Server(0, [])

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        state.open_now += 1
        state.peak_open = max(state.peak_open, state.open_now)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    state.closed_by_client += 1
                    return
                state.requests.append(request)
                script = state.script.pop(0) if len(state.script) > 1 else state.script[0]
                if not await script(reader, writer, request):
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            state.open_now -= 1
            writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=certs.server_context())
    state.port = listener.sockets[0].getsockname()[1]
    try:
        yield state, certs
    finally:
        listener.close()


def answer(head: bytes, *pieces: bytes, pause: float = 0.0, keep: bool = True) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bool:
        writer.write(head)
        for piece in pieces:
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
            writer.write(piece)
        await writer.drain()
        return keep

    return script


def ok(body: bytes = b'{"Name": "x"}', extra: bytes = b"") -> Script:
    return answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body)


def pool(certs: Certs, **kw: object) -> h1.Pool:
    args: dict[str, object] = {
        "ssl_context": certs.client_context(),
        "resolver": None,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "limit": 10,
    }
    args.update(kw)
    return h1.Pool(**args)  # type: ignore[arg-type]


async def send(p: h1.Pool, port: int, host: str = "127.0.0.1", max_bytes: int = 1 << 20) -> h1.Answer:
    return await p.request(
        host=host,
        port=port,
        target="/",
        method="POST",
        headers=(("Host", f"{host}:{port}"), ("X-Amz-Target", "secretsmanager.GetSecretValue")),
        body=b'{"SecretId": "x"}',
        max_bytes=max_bytes,
    )


async def test_one_write_per_request_and_the_connection_is_kept(server: tuple[Server, Certs]) -> None:
    state, certs = server
    state.script = [ok()]
    p = pool(certs)
    for _ in range(3):
        got = await send(p, state.port)
        assert (got.status, got.body) == (200, b'{"Name": "x"}')
    await p.aclose()
    assert state.connections == 1
    first = state.requests[0]
    assert first.startswith(b"POST / HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nContent-Length: 17\r\n\r\n" in first and first.endswith(b'{"SecretId": "x"}')


async def test_framing_in_pieces_chunked_interim_and_empty(server: tuple[Server, Certs]) -> None:
    state, certs = server
    body = b'{"Name": "split"}'
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nx-amzn-RequestId: r-1\r\n\r\n" % len(body)
    state.script = [
        answer(head[:5], head[5:20], head[20:], *[bytes([b]) for b in body], pause=0.001),
        answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"4;ext=1\r\nab",
            b"cd\r\n3\r\nefg\r\n0\r\nTrailer: x\r\n\r\n",
        ),
        answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        answer(b"HTTP/1.1 204 No Content\r\n\r\n"),
        ok(b"last"),
    ]
    p = pool(certs)
    first = await send(p, state.port)
    assert first.body == body and ("x-amzn-RequestId", "r-1") in first.headers
    assert (await send(p, state.port)).body == b"abcdefg"
    assert (await send(p, state.port)).body == b"ok"
    no_content = await send(p, state.port)
    assert (no_content.status, no_content.body) == (204, b"")
    assert (await send(p, state.port)).body == b"last"
    await p.aclose()
    assert state.connections == 1  # every one of those answers left the connection reusable


async def test_connection_close_and_answers_without_framing_end_the_connection(server: tuple[Server, Certs]) -> None:
    state, certs = server
    state.script = [
        answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na", keep=False),
        answer(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", keep=False),
        ok(),
    ]
    p = pool(certs)
    assert (await send(p, state.port)).body == b"a"
    assert (await send(p, state.port)).body == b"until the end"
    assert (await send(p, state.port)).status == 200
    await p.aclose()
    assert state.connections == 3


async def test_too_large_declared_or_streamed_closes_the_connection(server: tuple[Server, Certs]) -> None:
    state, certs = server
    state.script = [
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100),
        answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"40\r\n" + b"y" * 64 + b"\r\n",
            b"40\r\n" + b"y" * 64 + b"\r\n0\r\n\r\n",
        ),
        ok(),
    ]
    p = pool(certs)
    with pytest.raises(h1.TooLarge) as declared:
        await send(p, state.port, max_bytes=99)
    assert declared.value.declared == 100
    with pytest.raises(h1.TooLarge) as streamed:
        await send(p, state.port, max_bytes=100)
    assert streamed.value.declared is None
    assert (await send(p, state.port)).status == 200
    await p.aclose()
    assert state.connections == 3


async def test_silence_is_a_read_timeout_and_the_connection_is_closed(server: tuple[Server, Certs]) -> None:
    state, certs = server

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bool:
        await reader.read()  # until the client closes
        state.closed_by_client += 1
        return False

    state.script = [answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", b"c", b"d", pause=0.2), silent, ok()]
    p = pool(certs, read_timeout=0.5)
    # data arriving every 0.2 s keeps a 0.5 s read timeout from firing (it is the longest silence)
    assert (await send(p, state.port)).body == b"abcd"
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(SocketTimeoutError):
        await send(p, state.port)
    assert 0.4 < loop.time() - started < 2
    assert (await send(p, state.port)).status == 200
    await p.aclose()
    assert state.connections == 2 and state.closed_by_client >= 1


async def test_a_server_that_breaks_off_is_server_disconnected(server: tuple[Server, Certs]) -> None:
    state, certs = server
    state.script = [answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", keep=False), ok()]
    p = pool(certs)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await send(p, state.port)
    assert (await send(p, state.port)).status == 200
    await p.aclose()


async def test_a_malformed_answer_is_a_payload_error(server: tuple[Server, Certs]) -> None:
    state, certs = server
    state.script = [answer(b"HTTP/1.1 OK\r\n\r\n"), ok()]
    p = pool(certs)
    with pytest.raises(aiohttp.ClientPayloadError):
        await send(p, state.port)
    assert (await send(p, state.port)).status == 200
    await p.aclose()
    assert state.connections == 2


async def test_a_cancelled_request_closes_its_connection(server: tuple[Server, Certs]) -> None:
    state, certs = server

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bool:
        await reader.read()  # until the client closes
        state.closed_by_client += 1
        return False

    state.script = [slow, ok()]
    p = pool(certs)
    task = asyncio.ensure_future(send(p, state.port))
    for _ in range(200):
        if state.requests:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):
        if state.closed_by_client:
            break
        await asyncio.sleep(0.01)
    assert state.closed_by_client == 1
    assert (await send(p, state.port)).status == 200
    await p.aclose()


async def test_the_pool_never_opens_more_than_its_limit(server: tuple[Server, Certs]) -> None:
    state, certs = server
    state.script = [answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok", pause=0.05)]
    p = pool(certs, limit=2)
    answers = await asyncio.gather(*(send(p, state.port) for _ in range(8)))
    await p.aclose()
    assert [a.body for a in answers] == [b"ok"] * 8
    assert state.peak_open <= 2 and state.connections == 2


async def test_an_idle_connection_the_server_closed_is_not_used(server: tuple[Server, Certs]) -> None:
    state, certs = server
    state.script = [answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", keep=False), ok()]
    p = pool(certs)
    assert (await send(p, state.port)).body == b"ok"  # the server closes after answering, without saying so
    for _ in range(200):
        if state.open_now == 0:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the close reaches the client's protocol
    assert (await send(p, state.port)).status == 200
    await p.aclose()
    assert state.connections == 2


async def test_connect_failures_are_aiohttps_exceptions(server: tuple[Server, Certs], tmp_path: Path) -> None:
    state, certs = server
    state.script = [ok()]
    other = Certs(tmp_path / "other") if (tmp_path / "other").mkdir() is None else None
    assert other is not None
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await send(pool(other), state.port)  # a CA that did not sign the server's certificate
    resolver = LoopbackResolver({"upstream.test": "127.0.0.1"})
    with pytest.raises(aiohttp.ClientConnectorDNSError) as unknown:
        await send(pool(certs, resolver=resolver), state.port, host="nowhere.test")
    assert unknown.value.host == "nowhere.test" and unknown.value.os_error.errno == socket.EAI_NONAME
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await send(pool(certs, resolver=resolver), state.port, host="upstream.test")  # resolved; not its name
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(aiohttp.ClientConnectorError):
        await send(pool(certs), port)


async def test_a_header_that_would_split_the_request_is_refused(server: tuple[Server, Certs]) -> None:
    state, certs = server
    p = pool(certs)
    with pytest.raises(ValueError):
        await p.request(
            host="127.0.0.1",
            port=state.port,
            target="/",
            method="POST",
            headers=(("X-A", "a\r\nX-B: b"),),
            body=b"",
            max_bytes=10,
        )
    assert state.connections == 0


def test_an_unverifiable_context_is_never_used() -> None:
    """The pool takes the transport's verifying context; check_hostname stays on."""
    from proxy.upstream import ssl_context

    ctx = ssl_context(None)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


async def test_an_answer_that_is_not_final_is_handed_on_without_its_body(server: tuple[Server, Certs]) -> None:
    """A redirect or a protocol switch is handed on (the transport refuses it) and its connection dropped."""
    state, certs = server
    state.script = [
        answer(b"HTTP/1.1 302 Found\r\nLocation: https://elsewhere/\r\nContent-Length: 999999999\r\n\r\npartial"),
        answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"),
        ok(),
    ]
    p = pool(certs)
    moved = await send(p, state.port, max_bytes=10)  # the body's size does not matter: it is not read
    assert (moved.status, moved.body) == (302, b"") and ("Location", "https://elsewhere/") in moved.headers
    switched = await send(p, state.port)
    assert switched.status == 101
    assert (await send(p, state.port)).status == 200
    await p.aclose()
    assert state.connections == 3
