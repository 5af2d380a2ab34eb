"""The transport to the upstream: one aiohttp ClientSession, verified TLS, bounded reads.

``Upstream`` is the seam (httpx's transport pattern): ``send(SignedRequest) -> UpstreamResponse`` and
``aclose()``. :class:`AiohttpUpstream` is the real one; unit tests of pure pipeline logic may pass another.
aiohttp's exceptions are translated here, where aiohttp is imported, into the proxy's error tree.

Compression: the upstream is asked for ``Accept-Encoding: identity`` and aiohttp's automatic decompression is
off, so the bytes read are the bytes sent. An upstream that answers ``gzip`` or ``deflate`` regardless is
decoded here (:func:`decode_body`, bounded by ``max_response_bytes`` after decoding, so a compression bomb is
ResponseTooLarge), and the response handed on carries neither ``Content-Encoding`` nor ``Content-Length``:
nothing downstream can label plain bytes as gzip. Any other coding is BadGateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import zlib
from collections.abc import AsyncGenerator, Iterator
from typing import Protocol

import aiohttp
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.helpers import get_env_proxy_for_url
from aiohttp.tracing import Trace
from yarl import URL

from . import errors
from .models import SignedRequest, UpstreamResponse

CHUNK_BYTES = 64 * 1024
# aiohttp pauses reading an answer once this much x2 is buffered (its default: 64 KiB): a smaller buffer per
# streamed answer keeps parallel pass-through answers from showing in RSS (docs/benchmarks.md).
READ_BUFFER_BYTES = 16 * 1024

_AIOHTTP_ERRORS: dict[type[BaseException], type[errors.ProxyError]] = {
    # most specific first in the MRO walk of map_exceptions; name resolution and certificate failures are
    # translated first, by upstream_errors()
    aiohttp.ServerTimeoutError: errors.GatewayTimeout,
    asyncio.TimeoutError: errors.GatewayTimeout,
    aiohttp.ClientSSLError: errors.BadGateway,
    aiohttp.ClientConnectorError: errors.BadGateway,
    aiohttp.ServerDisconnectedError: errors.BadGateway,
    aiohttp.ClientPayloadError: errors.BadGateway,
    aiohttp.ClientError: errors.BadGateway,
    ssl.SSLError: errors.BadGateway,
    ConnectionError: errors.BadGateway,
    OSError: errors.BadGateway,
}


def unresolvable(host: str) -> errors.UpstreamUnresolvable:
    """The error for an upstream host name that does not resolve (not a temporary failure)."""
    return errors.UpstreamUnresolvable(
        f"the upstream host {host} does not resolve; check upstream.endpoint_url and upstream.region"
    )


def certificate_invalid(host: str) -> errors.UpstreamCertificateInvalid:
    """The error for an upstream TLS certificate that does not verify."""
    return errors.UpstreamCertificateInvalid(
        f"the TLS certificate of the upstream host {host} does not verify "
        "(trusted CAs: upstream.ca_bundle, else AWS_CA_BUNDLE, else the system store)"
    )


@contextlib.contextmanager
def upstream_errors() -> Iterator[None]:
    """Translate aiohttp's exceptions (:data:`_AIOHTTP_ERRORS`). A host name that does not resolve and a
    certificate that does not verify get their own, final errors (another attempt would meet them again);
    a temporary resolver failure (EAI_AGAIN) stays a retryable BadGateway."""
    with errors.map_exceptions(_AIOHTTP_ERRORS, "the upstream request"):
        try:
            yield
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, OSError) and exc.os_error.errno == socket.EAI_AGAIN:
                raise errors.BadGateway(f"the upstream host {exc.host} did not resolve (temporary failure)") from exc
            raise unresolvable(exc.host) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise certificate_invalid(exc.host) from exc


def proxy_for(url: str) -> dict[str, object]:
    """The outbound proxy for ``url`` from ``HTTPS_PROXY`` / ``NO_PROXY`` (and ``~/.netrc`` for its
    credentials), as botocore and aiohttp's ``trust_env`` honour them: aiohttp's ``request()`` arguments
    (``proxy``, ``proxy_headers``), empty when no proxy applies."""
    found: dict[str, object] = {}
    try:
        proxy, auth = get_env_proxy_for_url(URL(url))
    except LookupError:
        return found
    found["proxy"] = proxy
    if auth is not None:
        found["proxy_headers"] = {"Proxy-Authorization": auth.encode()}
    return found


_DECODED_AWAY = frozenset({"content-encoding", "content-length"})


def check_status(status: int) -> None:
    """Only final answers are passed on: 2xx, 4xx and 5xx. Raises UpstreamUnexpectedStatus (502, not retried)
    for a redirect (3xx: never followed, the upstream comes from the configuration only, docs/interface.md, "The
    upstream request"), an interim or upgrade answer (1xx) and a status outside 100-599."""
    if 200 <= status < 300 or 400 <= status < 600:
        return
    raise errors.UpstreamUnexpectedStatus(
        f"the upstream answered HTTP {status}; the proxy follows no redirects or upgrades (check upstream.endpoint_url)"
    )


def decode_body(encoding: str | None, body: bytes, max_bytes: int) -> bytes:
    """``body`` decoded from its ``Content-Encoding`` (None or ``identity``: as is; ``gzip``, ``x-gzip``,
    ``deflate`` with or without the zlib wrapper), at most ``max_bytes`` bytes after decoding.

    Raises ResponseTooLarge past ``max_bytes``; BadGateway for another coding or a truncated or corrupt stream.
    """
    coding = (encoding or "identity").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding in ("gzip", "x-gzip"):
        attempts = [16 + zlib.MAX_WBITS]
    elif coding == "deflate":
        attempts = [zlib.MAX_WBITS, -zlib.MAX_WBITS]  # RFC 9110 says zlib-wrapped; some servers send it raw
    else:
        raise errors.BadGateway(f"the upstream answered in Content-Encoding {coding[:40]!r}; identity was asked for")
    for wbits in attempts:
        decoder = zlib.decompressobj(wbits)
        try:
            out = decoder.decompress(body, max_bytes + 1)
        except zlib.error:
            continue
        if len(out) > max_bytes or decoder.unconsumed_tail:
            raise errors.ResponseTooLarge(
                f"the upstream answer is over limits.max_response_bytes ({max_bytes}) once decompressed"
            )
        if decoder.eof:
            return out
    raise errors.BadGateway(f"the upstream answer is not valid {coding} data")


class UpstreamStream(Protocol):
    """An upstream answer whose body is still on the wire (the streaming path, :mod:`proxy.relay`).

    ``status`` and ``headers`` are known; the body is read once, by ``chunks()`` or ``read()``. ``close()``
    drops the connection (an unfinished body) and is safe to call more than once; a body read to its end
    leaves the connection to the pool.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    content_length: int | None

    def chunks(self) -> AsyncGenerator[bytes, None]: ...

    async def read(self, limit: int) -> bytes: ...

    def close(self) -> None: ...


class Upstream(Protocol):
    async def start(self) -> None: ...

    async def send(self, request: SignedRequest) -> UpstreamResponse: ...

    async def open(self, request: SignedRequest) -> UpstreamStream: ...

    async def aclose(self) -> None: ...


# Pooled connections found out of step (see InStepConnector) that one request closes before it gives up.
OUT_OF_STEP_TRIES = 4


class InStepConnector(aiohttp.TCPConnector):
    """aiohttp's connector, except that it never hands out a pooled connection holding bytes nobody asked for.

    aiohttp goes on reading a keep-alive connection while it sits in the pool: an answer the upstream sends
    unasked (or the surplus of a body longer than its Content-Length, arriving late) is parsed and queued,
    and read as *the answer to the next request* sent on that connection -- one request's answer (a secret)
    handed to another (so in aiohttp 3.14.5, aio-libs/aiohttp#13656). Such a connection's
    ``ResponseHandler.should_close`` is true (a queued answer, a body still arriving, an error): it is closed
    and another one taken, at most :data:`OUT_OF_STEP_TRIES` times, then ServerDisconnectedError
    (BadGateway). Bytes that arrive after the request was sent are its answer, as with any HTTP/1.1 client.
    """

    async def connect(self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout) -> Connection:
        for _ in range(OUT_OF_STEP_TRIES):
            conn = await super().connect(req, traces, timeout)
            protocol = conn.protocol
            if protocol is None or not protocol.should_close:
                return conn
            conn.close()
        raise aiohttp.ServerDisconnectedError("the upstream sent answers to requests it was not sent")


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """A verifying client TLS context: ``ca_bundle`` when given, else the system store. Never unverified."""
    ctx = ssl.create_default_context(cafile=ca_bundle)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class AiohttpUpstream:
    """Sends signed requests over one pooled aiohttp ClientSession.

    ``connect_timeout`` and ``read_timeout`` are seconds (``upstream.*_timeout_seconds``); the whole-request
    deadline is the caller's. ``max_response_bytes`` bounds how much of an answer is read (ResponseTooLarge
    above it). ``resolver`` is an aiohttp resolver (tests inject one so no DNS query leaves the machine).
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
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._pool_size = pool_size
        self._resolver = resolver
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._max_response_bytes = max_response_bytes
        self._proxies: dict[str, dict[str, object]] = {}

    async def start(self) -> None:
        """Open the pooled ClientSession (inside the running loop)."""
        connector = InStepConnector(
            ssl=ssl_context(self._ca_bundle),
            limit=self._pool_size,
            resolver=self._resolver,
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            read_bufsize=READ_BUFFER_BYTES,
            trust_env=False,  # HTTPS_PROXY / NO_PROXY are read once per URL instead (_proxy_args)
            cookie_jar=aiohttp.DummyCookieJar(),  # AWS APIs set no cookies; botocore keeps none either
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
            headers={"User-Agent": self._user_agent, "Accept-Encoding": "identity"},
        )
        self._proxies.clear()

    def _proxy_args(self, url: str) -> dict[str, object]:
        """:func:`proxy_for` ``url``, looked up once per URL: aiohttp's ``trust_env=True`` does the same lookup
        in a worker thread on every request (a thread hop, the environment and ``~/.netrc`` read each time);
        the upstream URLs are few and fixed at start-up."""
        found = self._proxies.get(url)
        if found is None:
            found = self._proxies[url] = proxy_for(url)
        return found

    async def send(self, request: SignedRequest) -> UpstreamResponse:
        """Send and read the whole answer (up to ``max_response_bytes``).

        Raises BadGateway (refused, reset, TLS handshake failure), UpstreamUnresolvable (the host name does
        not resolve), UpstreamCertificateInvalid, UpstreamUnexpectedStatus (1xx, 3xx), GatewayTimeout (connect
        or read deadline), ResponseTooLarge.
        On any failure, or when the caller's deadline cancels it, the connection is closed, not pooled.
        """
        assert self._session is not None, "start() first"
        with upstream_errors():
            return await self._exchange(self._session, request)

    async def _exchange(self, session: aiohttp.ClientSession, request: SignedRequest) -> UpstreamResponse:
        limit = self._max_response_bytes
        async with session.request(
            request.method,
            request.url,
            headers=list(request.headers),
            data=request.body,
            allow_redirects=False,
            **self._proxy_args(request.url),  # type: ignore[arg-type]
        ) as resp:
            check_status(resp.status)
            declared = resp.content_length
            if declared is not None and declared > limit:
                raise errors.ResponseTooLarge(
                    f"the upstream answer ({declared} bytes) is over limits.max_response_bytes ({limit})"
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise errors.ResponseTooLarge(f"the upstream answer is over limits.max_response_bytes ({limit})")
                chunks.append(chunk)
            body = b"".join(chunks)
            del chunks
            encoding = resp.headers.get("Content-Encoding")
            headers = tuple(resp.headers.items())
            if encoding is None:
                return UpstreamResponse(resp.status, headers, body)
            decoded = decode_body(encoding, body, limit)
            kept = tuple((k, v) for k, v in headers if k.lower() not in _DECODED_AWAY)
            return UpstreamResponse(resp.status, kept, decoded)

    async def open(self, request: SignedRequest) -> UpstreamStream:
        """Send and return once the status line and headers are in; the body stays on the wire.

        Raises BadGateway / GatewayTimeout as :meth:`send` does. The caller must ``close()`` the stream
        unless it reads the body to its end.
        """
        assert self._session is not None, "start() first"
        with upstream_errors():
            resp = await self._session.request(
                request.method,
                request.url,
                headers=list(request.headers),
                data=request.body,
                allow_redirects=False,
                **self._proxy_args(request.url),  # type: ignore[arg-type]
            )
        try:
            check_status(resp.status)
        except errors.ProxyError:
            resp.close()
            raise
        return _AiohttpStream(resp)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _AiohttpStream:
    """:class:`UpstreamStream` over an aiohttp ClientResponse; reads map aiohttp's errors like ``send``."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers = tuple(resp.headers.items())
        self.content_length = resp.content_length

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        with errors.map_exceptions(_AIOHTTP_ERRORS, "reading the upstream answer"):
            async for chunk in self._resp.content.iter_chunked(CHUNK_BYTES):
                yield chunk
        self._resp.release()

    async def read(self, limit: int) -> bytes:
        """The whole body, up to ``limit`` bytes (ResponseTooLarge above it); the connection is released."""
        body = bytearray()
        async for chunk in self.chunks():
            body += chunk
            if len(body) > limit:
                self.close()
                raise errors.ResponseTooLarge(f"the upstream answer is over limits.max_response_bytes ({limit})")
        return bytes(body)

    def close(self) -> None:
        self._resp.close()
