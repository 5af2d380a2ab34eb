"""The upstream client: keep-alive HTTP/1.1 over verified TLS, one write per request, answers parsed by
aiohttp's own HTTP parser.

Why not aiohttp's ``ClientSession`` here: on the development machine its ``request()`` costs ~300 µs of CPU a
call (a request and a response object, header multidicts merged and copied, a payload object, a writer task,
a timer context, traces, the connector's bookkeeping, two writes to the TLS transport): more than the rest of
a translated request together (docs/benchmarks.md). The proxy's upstream requests are simple: a POST of a
few hundred bytes with headers the proxy built and signed, to a URL from the configuration. This module
sends such a request in one write and reads the answer with the same parts aiohttp's client reads it with:

* **parsing** is aiohttp's ``HttpResponseParser`` (the C extension over llhttp that ``ClientSession`` uses,
  with its limits: 8190-byte lines and fields, 128 headers) -- no HTTP parsing code of our own. Its
  ``StreamReader`` holds the body, with aiohttp's flow control (the transport pauses above the read buffer);
* **framing** follows that parser as aiohttp's client does: ``Content-Length``, chunked (trailers read and
  dropped), or the body framed by the close; interim ``1xx`` answers skipped (not ``101``); ``204``, ``304``
  and ``1xx`` without a body; a body cut short is an error;
* **connections**: ``aiohappyeyeballs`` as aiohttp uses it (each resolved address tried in turn, IPv6 and
  IPv4), the resolver given (aiohttp's, or the tests' loopback table) with answers kept 60 s, TLS with the
  verifying context of :func:`proxy.upstream.ssl_context` (SNI and host name checked);
* **the pool**: at most ``pool_size`` connections in all (callers wait for one), idle ones kept 15 s
  (aiohttp's ``keepalive_timeout``). A connection goes back to the pool only when its answer was read to the
  end, the answer allowed keep-alive, and nothing else arrived on it: bytes that arrive on a pooled
  connection, or after the answer (a second answer nobody asked for, a body longer than its
  ``Content-Length``), close it. That is the case of aio-libs/aiohttp#13656, where aiohttp hands such bytes
  to the next request (:class:`proxy.upstream.InStepConnector`);
* **timeouts**: ``connect_timeout`` over the TCP connect and the TLS handshake (aiohttp's ``sock_connect``),
  ``read_timeout`` as the longest silence from the request written to the last byte of the answer, not
  counted while the reader holds the connection paused (aiohttp's ``sock_read``). The whole request's
  deadline is the caller's (:mod:`proxy.attempts`);
* **failures** are raised as the proxy's errors, as :func:`proxy.upstream.upstream_errors` maps aiohttp's:
  a name that does not resolve :class:`~proxy.errors.UpstreamUnresolvable`, a certificate that does not verify
  :class:`~proxy.errors.UpstreamCertificateInvalid`, refused, reset, TLS or framing failures
  :class:`~proxy.errors.BadGateway`, a timeout :class:`~proxy.errors.GatewayTimeout`. A connection that
  failed, timed out or was cancelled mid-answer is closed, never reused.

Requests through an outbound HTTP proxy (``HTTPS_PROXY`` / ``NO_PROXY``, looked up once per URL as aiohttp's
``trust_env`` and botocore do) go through :class:`proxy.upstream.AiohttpUpstream` instead: CONNECT tunnels
and proxy authentication stay aiohttp's. ``tests/integration/test_h1client_differential.py`` checks this
client against aiohttp's on generated answers: same status, headers and body, or the same error.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohappyeyeballs
import aiohttp
from aiohttp.base_protocol import BaseProtocol
from aiohttp.helpers import EMPTY_BODY_STATUS_CODES
from aiohttp.http import HttpResponseParser, RawResponseMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

from . import errors
from .models import SignedRequest, UpstreamResponse
from .upstream import (
    _DECODED_AWAY,
    CHUNK_BYTES,
    READ_BUFFER_BYTES,
    AiohttpUpstream,
    UpstreamStream,
    certificate_invalid,
    check_status,
    decode_body,
    proxy_for,
    ssl_context,
    unresolvable,
    upstream_errors,
)

KEEPALIVE_SECONDS = 15.0  # aiohttp's TCPConnector keepalive_timeout
DNS_TTL_SECONDS = 60.0  # ttl_dns_cache of AiohttpUpstream
HAPPY_EYEBALLS_DELAY = 0.25  # aiohttp's TCPConnector happy_eyeballs_delay
# aiohttp's client limits for an answer's head (ClientSession max_line_size, max_field_size, max_headers)
MAX_LINE_BYTES = 8190
MAX_FIELD_BYTES = 8190
MAX_HEADERS = 128

_Answer = tuple[RawResponseMessage, StreamReader]


@dataclass(frozen=True, slots=True)
class Route:
    """Where one upstream URL goes: ``key`` (scheme, host, port) names its connections in the pool, ``host``
    the name resolved and checked in the certificate (IPv6 without brackets), ``target`` the request target
    (path and query), ``tls`` whether the connection is HTTPS."""

    key: tuple[str, str, int]
    host: str
    port: int
    target: str
    tls: bool


def route_of(url: str) -> Route:
    """The :class:`Route` of an ``http://`` or ``https://`` URL. Raises ValueError for another scheme or no host."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {url[:200]!r}")
    port = parts.port or (443 if scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Route((scheme, parts.hostname, port), parts.hostname, port, target, scheme == "https")


def request_bytes(request: SignedRequest, target: str, user_agent: str) -> bytes:
    """The request as it goes on the wire, head and body in one piece: the request line, the signed headers in
    their order, then ``User-Agent``, ``Accept-Encoding: identity`` and ``Content-Length`` (what
    :class:`~proxy.upstream.AiohttpUpstream` adds). Raises ValueError for a header holding CR, LF or NUL."""
    lines = [f"{request.method} {target} HTTP/1.1\r\n"]
    for name, value in request.headers:
        lines.append(f"{name}: {value}\r\n")
    head = "".join(lines)
    # each line ends in the one CR LF written here: any other CR, LF (or a NUL) came inside a name or value,
    # which aiohttp's writer refuses too (ValueError)
    if head.count("\r") != len(lines) or head.count("\n") != len(lines) or "\x00" in head:
        raise ValueError("a header of the upstream request holds CR, LF or NUL")
    head += f"User-Agent: {user_agent}\r\nAccept-Encoding: identity\r\nContent-Length: {len(request.body)}\r\n\r\n"
    return head.encode() + request.body


class _Connection(BaseProtocol):
    """One keep-alive connection; one request at a time.

    A :class:`BaseProtocol` (aiohttp's), so that the parser's ``StreamReader`` can pause and resume reading.
    ``in_step`` turns False for good when the connection must not carry another request: bytes nobody asked
    for, an answer that said ``Connection: close`` (or HTTP/1.0), an upgrade, a failure, a timeout.
    """

    __slots__ = ("_pool", "key", "_read_timeout", "_waiter", "_body", "_answered", "_timer", "in_step", "idle_since")

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: _Pool, key: tuple[str, str, int], read_timeout: float):
        super().__init__(loop)
        self._pool = pool
        self.key = key
        self._read_timeout = read_timeout
        self._waiter: asyncio.Future[_Answer] | None = None
        self._body: StreamReader | None = None  # the final answer's body as the parser feeds it
        self._answered = False
        self._timer: asyncio.TimerHandle | None = None
        self.in_step = True
        self.idle_since = 0.0

    # -- one exchange

    def send(self, data: bytes, read_buffer: int) -> asyncio.Future[_Answer]:
        """Write ``data`` (a whole request); the future gets the final answer's head and its body stream."""
        assert self.transport is not None and self._parser is None
        self._parser = HttpResponseParser(
            self,
            self._loop,
            read_buffer,
            payload_exception=aiohttp.ClientPayloadError,
            response_with_body=True,
            read_until_eof=True,
            auto_decompress=False,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_FIELD_BYTES,
            max_headers=MAX_HEADERS,
        )
        self._waiter = waiter = self._loop.create_future()
        self._answered = False
        self._body = None
        self.transport.write(data)
        if not self._paused:  # else when the transport has taken the request (resume_writing)
            self._arm_timer()
        return waiter

    def finished(self) -> bool:
        """True when the answer was read to its end and nothing else arrived: the connection may be pooled.

        The parser is told the input ended (``feed_eof``): a message it had begun after the answer (bytes nobody
        asked for, in the same read as the answer's end) shows up there."""
        parser, body = self._parser, self._body
        if not self.in_step or parser is None or body is None or not body.is_eof() or body.exception() is not None:
            return False
        try:
            started = parser.feed_eof()
        except Exception:
            return False
        self._parser = None
        self._waiter = None
        self._body = None
        return started is None and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.in_step = False
        self._drop_timer()
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or (self._answered and self._body is not None and self._body.is_eof()):
            if data:  # bytes nobody asked for: on a pooled connection, or after the whole answer
                self.close()
            return
        try:
            messages, upgraded, _ = parser.feed_data(data)
        except Exception as exc:
            self._fail(errors.BadGateway(f"the upstream answer is not valid HTTP/1.1 ({type(exc).__name__})"))
            return
        for message, payload in messages:
            if self._answered:  # a second answer: nobody asked for it
                self.in_step = False
                continue
            if 100 <= message.code <= 199 and message.code != 101:
                continue  # interim: the final answer follows
            self._answered = True
            self._body = payload
            if message.should_close:
                self.in_step = False
            if message.code in EMPTY_BODY_STATUS_CODES:
                payload = EMPTY_PAYLOAD  # as aiohttp's client: no body, whatever the framing said
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result((message, payload))
        if upgraded:
            self.in_step = False
        if not self._awaiting():
            self._drop_timer()
        elif data and not self._reading_paused:
            self._arm_timer()  # the silence is counted from the last bytes received (not while the reader lags)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.in_step = False
        self._drop_timer()
        super().connection_lost(exc)  # transport None; wakes a writer waiting for the drain
        failure: Exception = errors.BadGateway(
            "the upstream closed the connection before the answer ended"
            if exc is None
            else f"the upstream connection failed: {type(exc).__name__}"
        )
        parser = self._parser
        if parser is not None:
            try:
                parser.feed_eof()  # ends a body framed by the close; raises for one cut short
            except Exception as cut:
                failure = errors.BadGateway(f"the upstream answer was cut short ({type(cut).__name__})")
        self._fail_waiters(failure)
        self._pool.lost(self)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def pause_reading(self) -> None:
        super().pause_reading()
        self._drop_timer()  # the reader is slow, not the upstream

    def resume_reading(self, resume_parser: bool = True) -> None:
        was_paused = self._reading_paused
        super().resume_reading(resume_parser)
        if was_paused and not self._reading_paused and self._awaiting():
            self._arm_timer()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._timer is None and self._awaiting():
            self._arm_timer()

    def _awaiting(self) -> bool:
        """An exchange is running and the rest of its answer is still to come."""
        body = self._body
        return self._waiter is not None and self.transport is not None and (body is None or not body.is_eof())

    # -- failures and the read timer

    def _fail(self, failure: Exception) -> None:
        self.close()
        self._fail_waiters(failure)

    def _fail_waiters(self, failure: Exception) -> None:
        waiter, body = self._waiter, self._body
        if waiter is not None and not waiter.done():
            waiter.set_exception(failure)
        if body is not None and not body.is_eof():
            body.set_exception(failure)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._read_timeout, self._timed_out)

    def _drop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(
            errors.GatewayTimeout(
                f"the upstream sent nothing for upstream.read_timeout_seconds ({self._read_timeout:g} s)"
            )
        )


class _Pool:
    """Connections by route key: at most ``limit`` open in all; idle ones kept ``KEEPALIVE_SECONDS``.

    ``take`` hands out an idle connection (no await); ``acquire`` also waits for room and connects. A
    connection handed out comes back by ``release`` (pooled when it finished cleanly, else closed); ``lost``
    (its transport closed) stops counting it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self._limit = limit
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._connecting = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweep: asyncio.TimerHandle | None = None

    def take(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.in_step and conn.transport is not None and not conn.transport.is_closing():
                return conn
            conn.close()
        return None

    async def acquire(self, key: tuple[str, str, int], connect: Callable[[], Awaitable[_Connection]]) -> _Connection:
        """An idle connection for ``key``, else a new one from ``connect()`` once there is room for it (an idle
        connection to another route is closed to make room); waits while ``limit`` connections are busy."""
        while True:
            conn = self.take(key)
            if conn is not None:
                return conn
            if len(self._open) + self._connecting < self._limit or self._close_oldest_idle():
                self._connecting += 1
                try:
                    conn = await connect()
                except BaseException:
                    self._connecting -= 1
                    self._wake()
                    raise
                self._connecting -= 1
                self._open.add(conn)
                return conn
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # the turn it was given goes to the next one
                else:
                    self._waiters.remove(waiter)
                raise

    def release(self, conn: _Connection) -> None:
        """Give back a connection whose exchange is over: pooled if it finished cleanly, else closed."""
        if conn not in self._open:
            return
        if conn.finished():
            conn.idle_since = self._loop.time()
            self._idle.setdefault(conn.key, []).append(conn)
            if self._sweep is None:
                self._sweep = self._loop.call_later(KEEPALIVE_SECONDS, self._close_stale)
            self._wake()
        else:
            conn.close()  # lost() follows

    def lost(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            idle = self._idle.get(conn.key)
            if idle and conn in idle:
                idle.remove(conn)
            self._wake()

    def close_all(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _close_oldest_idle(self) -> bool:
        oldest: _Connection | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is None:
            return False
        self._idle[oldest.key].remove(oldest)
        oldest.close()
        self._open.discard(oldest)
        return True

    def _close_stale(self) -> None:
        self._sweep = None
        horizon = self._loop.time() - KEEPALIVE_SECONDS
        remaining = False
        for idle in self._idle.values():
            while idle and idle[0].idle_since <= horizon:
                idle.pop(0).close()
            remaining = remaining or bool(idle)
        if remaining:
            self._sweep = self._loop.call_later(KEEPALIVE_SECONDS / 2, self._close_stale)


class H1Upstream:
    """The :class:`~proxy.upstream.Upstream` of the proxy: this module's client, or aiohttp's for URLs that go
    through an outbound proxy.

    ``connect_timeout`` and ``read_timeout`` are seconds (``upstream.*_timeout_seconds``); the whole-request
    deadline is the caller's. ``max_response_bytes`` bounds how much of an answer ``send`` reads
    (ResponseTooLarge above it, before decompression and after). ``pool_size`` bounds the connections open at
    once. ``resolver`` is an aiohttp resolver (tests inject one so no DNS query leaves the machine).
    """

    def __init__(
        self,
        *,
        ca_bundle: str | None,
        connect_timeout: float,
        read_timeout: float,
        max_response_bytes: int,
        pool_size: int = 100,
        resolver: aiohttp.abc.AbstractResolver | None = None,
        user_agent: str = "query-signing-proxy",
    ) -> None:
        self._ca_bundle = ca_bundle
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_response_bytes = max_response_bytes
        self._pool_size = pool_size
        self._given_resolver = resolver
        self._resolver: aiohttp.abc.AbstractResolver | None = None
        self._user_agent = user_agent
        self._ssl: ssl.SSLContext | None = None
        self._pool: _Pool | None = None
        self._routes: dict[str, Route | None] = {}  # None: through an outbound proxy (aiohttp's client)
        self._dns: dict[tuple[str, int], tuple[float, list[aiohappyeyeballs.AddrInfoType]]] = {}
        self._fallback = AiohttpUpstream(
            ca_bundle=ca_bundle,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_response_bytes=max_response_bytes,
            pool_size=pool_size,
            resolver=resolver,
            user_agent=user_agent,
        )
        self._fallback_started = False

    async def start(self) -> None:
        """Make the TLS context, the resolver and the pool (inside the running loop)."""
        self._ssl = ssl_context(self._ca_bundle)
        self._resolver = self._given_resolver or aiohttp.DefaultResolver()
        self._pool = _Pool(asyncio.get_running_loop(), self._pool_size)
        self._routes.clear()
        self._dns.clear()

    async def aclose(self) -> None:
        """Close every connection (an exchange still running fails with BadGateway) and aiohttp's session."""
        if self._pool is not None:
            self._pool.close_all()
            self._pool = None
        if self._resolver is not None and self._given_resolver is None:
            await self._resolver.close()
        self._resolver = None
        if self._fallback_started:
            await self._fallback.aclose()
            self._fallback_started = False

    # -- the Upstream protocol

    async def send(self, request: SignedRequest) -> UpstreamResponse:
        """Send and read the whole answer (up to ``max_response_bytes``, decoded from gzip or deflate).

        Raises BadGateway (refused, reset, TLS failure, a malformed or cut-short answer), UpstreamUnresolvable,
        UpstreamCertificateInvalid, UpstreamUnexpectedStatus (1xx, 3xx), GatewayTimeout (connect or read
        timeout), ResponseTooLarge. On any failure, or when the caller's deadline cancels it, the connection
        is closed, not pooled.
        """
        route = self._route(request.url)
        if route is None:
            return await (await self._via_proxy()).send(request)
        limit = self._max_response_bytes
        with upstream_errors():
            conn, message, body = await self._exchange(route, request, CHUNK_BYTES)
            pool = self._pool
            try:
                check_status(message.code)
                headers = message.headers
                declared = headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise errors.ResponseTooLarge(
                        f"the upstream answer ({declared} bytes) is over limits.max_response_bytes ({limit})"
                    )
                data = await _read_body(body, limit)
            except BaseException:
                conn.close()
                raise
            if pool is not None:
                pool.release(conn)
        encoding = headers.get("Content-Encoding")
        if encoding is None:
            return UpstreamResponse(message.code, tuple(headers.items()), data)
        decoded = decode_body(encoding, data, limit)
        kept = tuple((k, v) for k, v in headers.items() if k.lower() not in _DECODED_AWAY)
        return UpstreamResponse(message.code, kept, decoded)

    async def open(self, request: SignedRequest) -> UpstreamStream:
        """Send and return once the status line and headers are in; the body stays on the wire.

        Raises what :meth:`send` raises, before the body. The caller must ``close()`` the stream unless it reads
        the body to its end (the connection then goes back to the pool).
        """
        route = self._route(request.url)
        if route is None:
            return await (await self._via_proxy()).open(request)
        with upstream_errors():
            conn, message, body = await self._exchange(route, request, READ_BUFFER_BYTES)
        try:
            check_status(message.code)
        except errors.ProxyError:
            conn.close()
            raise
        return _H1Stream(self._pool, conn, message, body)

    # -- internals

    def _route(self, url: str) -> Route | None:
        try:
            return self._routes[url]
        except KeyError:
            pass
        route = None if proxy_for(url) else route_of(url)
        self._routes[url] = route
        return route

    async def _via_proxy(self) -> AiohttpUpstream:
        if not self._fallback_started:
            await self._fallback.start()
            self._fallback_started = True
        return self._fallback

    async def _exchange(
        self, route: Route, request: SignedRequest, read_buffer: int
    ) -> tuple[_Connection, RawResponseMessage, StreamReader]:
        pool = self._pool
        assert pool is not None, "start() first"
        data = request_bytes(request, route.target, self._user_agent)
        conn = pool.take(route.key) or await pool.acquire(route.key, lambda: self._connect(route))
        try:
            message, body = await conn.send(data, read_buffer)
        except BaseException:
            conn.close()
            raise
        return conn, message, body

    async def _connect(self, route: Route) -> _Connection:
        loop = asyncio.get_running_loop()
        addresses = await self._addresses(route)
        server_hostname = route.host.rstrip(".") if route.tls else None
        pool = self._pool
        assert pool is not None
        last: Exception | None = None
        while addresses:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    sock = await aiohappyeyeballs.start_connection(
                        addresses, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, loop=loop
                    )
                    _, conn = await loop.create_connection(
                        lambda: _Connection(loop, pool, route.key, self._read_timeout),
                        sock=sock,
                        ssl=self._ssl if route.tls else None,
                        server_hostname=server_hostname,
                    )
                return conn
            except ssl.SSLCertVerificationError as exc:
                last = certificate_invalid(route.host)
                last.__cause__ = exc
            except ssl.SSLError as exc:
                last = errors.BadGateway(f"the TLS handshake with the upstream failed: {type(exc).__name__}")
                last.__cause__ = exc
            except TimeoutError as exc:
                last = errors.GatewayTimeout(
                    f"the upstream did not accept a connection within upstream.connect_timeout_seconds "
                    f"({self._connect_timeout:g} s)"
                )
                last.__cause__ = exc
            except OSError as exc:
                last = errors.BadGateway(f"the upstream connection failed: {type(exc).__name__}")
                last.__cause__ = exc
            aiohappyeyeballs.pop_addr_infos_interleave(addresses, None)
        assert last is not None
        raise last

    async def _addresses(self, route: Route) -> list[aiohappyeyeballs.AddrInfoType]:
        """The addresses to try for ``route``: the host itself when it is an IP address, else the resolver's
        answer (kept ``DNS_TTL_SECONDS``). Raises UpstreamUnresolvable, or BadGateway for a temporary failure."""
        host, port = route.host, route.port
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", _sockaddr(host, port))]
        now = time.monotonic()
        cached = self._dns.get((host, port))
        if cached is not None and cached[0] > now:
            return list(cached[1])
        assert self._resolver is not None
        try:
            hosts = await self._resolver.resolve(host, port, family=socket.AF_UNSPEC)
        except OSError as exc:
            if exc.errno == socket.EAI_AGAIN:
                raise errors.BadGateway(f"the upstream host {host} did not resolve (temporary failure)") from exc
            raise unresolvable(host) from exc
        found: list[aiohappyeyeballs.AddrInfoType] = [
            (
                socket.AF_INET6 if ":" in h["host"] else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                _sockaddr(h["host"], h["port"]),
            )
            for h in hosts
        ]
        if not found:
            raise unresolvable(host)
        self._dns[(host, port)] = (now + DNS_TTL_SECONDS, found)
        return list(found)


def _sockaddr(host: str, port: int) -> tuple[Any, ...]:
    return (host, port, 0, 0) if ":" in host else (host, port)


async def _read_body(body: StreamReader, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (ResponseTooLarge above it)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await body.readany():
        size += len(chunk)
        if size > limit:
            raise errors.ResponseTooLarge(f"the upstream answer is over limits.max_response_bytes ({limit})")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _H1Stream:
    """:class:`~proxy.upstream.UpstreamStream` over one of this module's connections."""

    def __init__(self, pool: _Pool | None, conn: _Connection, message: RawResponseMessage, body: StreamReader):
        self._pool = pool
        self._conn: _Connection | None = conn
        self._body = body
        self.status = message.code
        self.headers = tuple(message.headers.items())
        declared = message.headers.get("Content-Length")
        self.content_length = int(declared) if declared is not None and declared.isdigit() else None

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        with upstream_errors():
            async for chunk in self._body.iter_chunked(CHUNK_BYTES):
                yield chunk
        conn, self._conn = self._conn, None
        if conn is not None and self._pool is not None:
            self._pool.release(conn)

    async def read(self, limit: int) -> bytes:
        """The whole body, up to ``limit`` bytes (ResponseTooLarge above it); the connection is released."""
        try:
            with upstream_errors():
                data = await _read_body(self._body, limit)
        except BaseException:
            self.close()
            raise
        conn, self._conn = self._conn, None
        if conn is not None and self._pool is not None:
            self._pool.release(conn)
        return data

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
