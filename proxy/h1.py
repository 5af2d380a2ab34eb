"""A lean HTTP/1.1 client for bounded upstream answers: keep-alive connections over verified TLS, one write per
request, the answer read whole.

Why not aiohttp's client here: on the development machine its ``ClientSession.request`` costs ~250 µs of CPU
per request (a request and a response object, a payload, a writer task, timers, header multidicts, two
writes to the TLS transport), more than everything else the proxy does for a translated request together
(bench/README.md). The translated path needs far less: a POST of a few hundred bytes and an answer of a few
KiB read whole. This module does only that, as an ``asyncio.Protocol`` per connection; aiohttp's client keeps
everything else (streamed pass-through and SDK answers, outbound HTTP proxies).

Behaviour kept from the aiohttp transport it stands in for (:class:`proxy.upstream.AiohttpUpstream`):
the same ``ssl.SSLContext`` (verified, SNI and host name checked), the same injected resolver (tests use one
so that no DNS query leaves the machine) with results cached 60 s, ``connect_timeout`` over TCP connect and
TLS handshake, ``read_timeout`` as the longest silence while an answer is awaited (aiohttp's ``sock_read``),
at most ``limit`` connections (callers wait for a free one), idle connections closed after 15 s (aiohttp's
``keepalive_timeout``), and a connection that failed, timed out or was cancelled mid-answer is closed, never
reused. Failures are raised as the aiohttp exceptions the same failure raises there
(``ClientConnectorDNSError``, ``ClientConnectorCertificateError``, ``ClientConnectorSSLError``,
``ClientConnectorError``, ``ConnectionTimeoutError``, ``SocketTimeoutError``, ``ServerDisconnectedError``,
``ClientPayloadError``), so :mod:`proxy.upstream` maps them to the proxy's errors in one place.

Framing read: ``Content-Length``, ``Transfer-Encoding: chunked`` (trailers skipped), or none (until close);
``1xx`` interim answers are skipped; 204 and 304 have no body; an answer that is not 2xx, 4xx or 5xx (101,
a redirect) is handed on with its head only and its connection closed. ``Connection: close`` and HTTP/1.0 answers
are not kept alive. Answers over ``max_bytes`` raise :class:`TooLarge` (the connection is closed).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp.client_exceptions import SocketTimeoutError
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.helpers import is_ip_address

KEEPALIVE_SECONDS = 15.0
DNS_TTL_SECONDS = 60.0
MAX_HEAD_BYTES = 64 * 1024


class TooLarge(Exception):
    """The answer is over ``max_bytes``; ``declared`` is its Content-Length when that said so first."""

    def __init__(self, declared: int | None) -> None:
        super().__init__(declared)
        self.declared = declared


class Answer:
    """One HTTP answer: ``status``, ``headers`` as received (name case kept), ``body`` (decoded framing)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self.loop = loop
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Answer] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.max_bytes = 0
        self.idle_since = 0.0
        self.reusable = True
        self.closed = False
        # the answer being read
        self._head: tuple[int, tuple[tuple[str, str], ...], int | None, bool, bool] | None = None
        self._body = bytearray()
        self._chunk_left = -1  # chunked: bytes left in the current chunk (+2 for its CRLF); -1: at a size line

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._cancel_timer()
        if self.waiter is not None and not self.waiter.done():
            if self._head is not None and self._head[2] is None and not self._head[3]:
                self._finish()  # no framing: the answer ends with the connection
            else:
                self._fail(aiohttp.ServerDisconnectedError())

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.reusable = False  # bytes nobody asked for: the connection is out of step
            self.close()
            return
        self.buffer += data
        try:
            self._parse()
        except TooLarge as exc:
            self._fail(exc)
        except (ValueError, IndexError) as exc:
            self._fail(aiohttp.ClientPayloadError(f"malformed HTTP answer: {type(exc).__name__}"))
        else:
            if self.waiter is not None and not self.waiter.done() and self.timer is not None:
                self._arm_timer()

    # -- one exchange
    def send(self, data: bytes, max_bytes: int) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self.max_bytes = max_bytes
        self.waiter = self.loop.create_future()
        self._head, self._body, self._chunk_left = None, bytearray(), -1
        self.transport.write(data)
        self._arm_timer()
        return self.waiter

    def _arm_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(self.read_timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        self._fail(SocketTimeoutError("Timeout on reading data from socket"))

    def _fail(self, exc: BaseException) -> None:
        self.reusable = False
        self._cancel_timer()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def _parse(self) -> None:
        while self._head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    raise ValueError("answer head too long")
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            lines = head.split("\r\n")
            version, status_text = lines[0].split(" ", 2)[:2]
            status = int(status_text)
            if 100 <= status < 200 and status != 101:
                continue  # an interim answer (100 Continue): the real one follows
            headers = []
            length: int | None = None
            chunked = False
            close = version == "HTTP/1.0"
            for line in lines[1:]:
                name, _, value = line.partition(":")
                value = value.strip()
                headers.append((name.strip(), value))
                lname = name.strip().lower()
                if lname == "content-length":
                    length = int(value)
                    if length < 0:
                        raise ValueError("negative Content-Length")
                elif lname == "transfer-encoding":
                    chunked = "chunked" in value.lower()
                elif lname == "connection":
                    tokens = value.lower()
                    close = "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens)
            if not (200 <= status < 300 or 400 <= status < 600):
                # not a final answer the caller takes (101, 3xx, out of range): handed on at once, without
                # its body, and the connection is not reused (as aiohttp's client does)
                self._head = (status, tuple(headers), 0, False, True)
                self._finish()
                return
            if status in (204, 304):
                length, chunked = 0, False
            if chunked:
                length = None
            if length is not None and length > self.max_bytes:
                raise TooLarge(length)
            self._head = (status, tuple(headers), length, chunked, close)
        _, _, length, chunked, _ = self._head
        if chunked:
            self._read_chunks()
        elif length is not None:
            if len(self.buffer) >= length:
                self._body += self.buffer[:length]
                del self.buffer[:length]
                self._finish()
        else:
            self._body += self.buffer
            self.buffer.clear()
            if len(self._body) > self.max_bytes:
                raise TooLarge(None)

    def _read_chunks(self) -> None:
        buffer = self.buffer
        while True:
            if self._chunk_left == -1:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buffer[:end]).split(b";", 1)[0].strip(), 16)
                del buffer[: end + 2]
                if size == 0:
                    self._chunk_left = -2  # trailers until an empty line
                else:
                    if len(self._body) + size > self.max_bytes:
                        raise TooLarge(None)
                    self._chunk_left = size + 2
            if self._chunk_left == -2:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                del buffer[: end + 2]
                if end == 0:
                    self._finish()
                    return
                continue
            take = min(self._chunk_left, len(buffer))
            if take == 0:
                return
            self._body += buffer[:take]
            del buffer[:take]
            self._chunk_left -= take
            if self._chunk_left == 0:
                if bytes(self._body[-2:]) != b"\r\n":
                    raise ValueError("chunk without its CRLF")
                del self._body[-2:]
                self._chunk_left = -1

    def _finish(self) -> None:
        assert self._head is not None and self.waiter is not None
        status, headers, length, _, close = self._head
        self._cancel_timer()
        if close or self.buffer or length is None and not self._head[3]:
            self.reusable = False
        body = bytes(self._body)
        self._head, self._body = None, bytearray()
        if not self.waiter.done():
            self.waiter.set_result(Answer(status, headers, body))


class Pool:
    """Keep-alive connections to upstream origins (``https://host:port``), at most ``limit`` open at once.

    ``ssl_context`` verifies the upstream; ``resolver`` is the aiohttp resolver of the aiohttp transport (None:
    aiohttp's default); timeouts are seconds.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        resolver: aiohttp.abc.AbstractResolver | None,
        connect_timeout: float,
        read_timeout: float,
        limit: int,
    ) -> None:
        self._ssl = ssl_context
        self._resolver = resolver
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._limit = limit
        self._open = 0
        self._idle: dict[tuple[str, int], list[_Connection]] = collections.defaultdict(list)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._dns: dict[tuple[str, int], tuple[float, list[dict[str, Any]]]] = {}
        self._closed = False

    async def request(
        self,
        *,
        host: str,
        port: int,
        target: str,
        method: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        max_bytes: int,
    ) -> Answer:
        """Send one request (``headers`` as given, plus ``Content-Length``) and read its answer whole.

        Raises the aiohttp exceptions named in the module docstring, TooLarge, or ValueError for a header that
        holds CR or LF (it would split the request).
        """
        lines = [f"{method} {target} HTTP/1.1"]
        for name, value in headers:
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                raise ValueError(f"header {name!r} cannot be sent")
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        data = "\r\n".join(lines).encode("latin-1") + body
        conn = await self._acquire(host, port)
        try:
            answer = await conn.send(data, max_bytes)
        except BaseException:
            conn.close()  # failed, timed out or cancelled mid-answer: never reused
            self._release(host, port, conn)
            raise
        self._release(host, port, conn)
        return answer

    async def _acquire(self, host: str, port: int) -> _Connection:
        idle = self._idle[(host, port)]
        while True:
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < KEEPALIVE_SECONDS:
                    return conn
                conn.close()  # closed by the server, or idle too long
                self._open -= 1
            if self._open < self._limit:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: pass the turn on
                raise
        self._open += 1
        try:
            return await self._connect(host, port)
        except BaseException:
            self._open -= 1
            self._wake()
            raise

    def _release(self, host: str, port: int, conn: _Connection) -> None:
        conn.waiter = None
        if conn.reusable and not conn.closed and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle[(host, port)].append(conn)
        else:
            conn.close()
            self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _resolve(self, host: str, port: int, key: ConnectionKey) -> list[dict[str, Any]]:
        if is_ip_address(host):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return [{"host": host, "port": port, "family": family, "proto": 0, "flags": 0}]
        cached = self._dns.get((host, port))
        now = time.monotonic()
        if cached is not None and now - cached[0] < DNS_TTL_SECONDS:
            return cached[1]
        resolver = self._resolver or aiohttp.ThreadedResolver()
        try:
            hosts = [dict(h) for h in await resolver.resolve(host, port, family=socket.AF_UNSPEC)]
        except OSError as exc:
            raise aiohttp.ClientConnectorDNSError(key, exc) from exc
        if not hosts:
            raise aiohttp.ClientConnectorDNSError(key, OSError(f"{host} has no address"))
        self._dns[(host, port)] = (now, hosts)
        return hosts

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        key = ConnectionKey(host, port, True, self._ssl, None, None, None)
        try:
            async with asyncio.timeout(self._connect_timeout):
                addresses = await self._resolve(host, port, key)
                last: OSError | None = None
                for address in addresses:
                    try:
                        _, conn = await loop.create_connection(
                            lambda: _Connection(loop, self._read_timeout),
                            address["host"],
                            address["port"],
                            ssl=self._ssl,
                            server_hostname=host,
                            family=address["family"],
                            proto=address["proto"],
                            flags=address["flags"],
                        )
                        return conn
                    except ssl.CertificateError as exc:
                        raise aiohttp.ClientConnectorCertificateError(key, exc) from exc
                    except ssl.SSLError as exc:
                        raise aiohttp.ClientConnectorSSLError(key, exc) from exc
                    except OSError as exc:
                        last = exc
                assert last is not None
                raise aiohttp.ClientConnectorError(key, last) from last
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ServerTimeoutError):
                raise
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host https://{host}:{port}") from exc

    async def aclose(self) -> None:
        """Close every idle connection; connections in use are closed as they are released."""
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
