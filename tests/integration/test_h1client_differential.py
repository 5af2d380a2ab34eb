"""The proxy's upstream client (proxy/h1client.py) against aiohttp's (proxy/upstream.py's AiohttpUpstream), on
the same answers from a real aiohttp fault server over TLS.

Hypothesis writes HTTP/1.1 answers byte by byte: framed by Content-Length (exact, short, or with bytes after
the body), chunked (any chunk sizes, extensions, trailers, the last chunk missing, a bad size), or by the
close; with interim 1xx answers first; any status (2xx-5xx, redirects, 101, 204, 304); odd headers (repeated,
empty, obs-folded, non-ASCII, NUL, over-long lines, too many), bad status lines and bare LF line ends; gzip,
deflate and unknown codings. Each answer is sent to both clients, through ``send`` (the whole answer,
bounded by max_response_bytes) and through ``open`` (the streamed body). Both must give the same status,
headers (names, values and order) and body, or the same class of the proxy's errors.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from proxy import errors
from proxy.h1client import H1Upstream
from proxy.models import SignedRequest
from proxy.upstream import AiohttpUpstream, Upstream
from tests.faults import JSON_TYPE, Certs, FaultServer, raw_answer

LIMIT = 4096  # max_response_bytes: some generated bodies are over it
BUDGET = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)

# -- answers -----------------------------------------------------------------------------------------------

STATUSES = [200, 200, 200, 201, 204, 299, 301, 302, 304, 400, 403, 404, 429, 500, 502, 503, 599, 101, 199]
HEADER_NAMES = ["X-Custom", "x-amzn-RequestId", "Content-Type", "Date", "Set-Cookie", "X-Repeat", "x-REPEAT"]
HEADER_VALUES = st.one_of(
    st.sampled_from(["", "plain", "a, b", "  padded  ", "tab\there", "caf\u00e9", "\u2603 snow", JSON_TYPE]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
)
INTERIM = [
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 102 Processing\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
]
FRAMINGS = [
    "length",
    "length",
    "length",
    "length",
    "length-short",
    "length-over",
    "chunked",
    "chunked",
    "chunked",
    "chunked",
    "chunked-no-last",
    "chunked-bad-size",
    "close",
    "close",
    "length-and-chunked",
    "two-lengths",
]
HEAD_FAULTS = [None] * 14 + [
    "bad-status",
    "no-colon",
    "bad-name",
    "obs-fold",
    "bare-lf",
    "nul",
    "long-line",
    "many",
]
CODINGS = [None, None, None, None, "gzip", "deflate", "gzip-broken", "br"]


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    """One HTTP answer as bytes on the wire (the server closes the connection after it)."""
    out = b"".join(draw(st.lists(st.sampled_from(INTERIM), max_size=2)))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]))
    status = draw(st.sampled_from(STATUSES))
    reason = draw(st.sampled_from(["OK", "", "Something Odd"]))
    headers = [(n, draw(HEADER_VALUES)) for n in draw(st.lists(st.sampled_from(HEADER_NAMES), max_size=5))]
    near_limit = st.integers(LIMIT - 1, LIMIT + 1).flatmap(lambda n: st.binary(min_size=n, max_size=n))
    body = draw(st.one_of(st.binary(max_size=300), st.binary(min_size=4000, max_size=6000), near_limit))
    coding = draw(st.sampled_from(CODINGS))
    if coding == "gzip":
        body = gzip.compress(body, mtime=0)
    elif coding == "deflate":
        body = zlib.compress(body)
    elif coding == "gzip-broken":
        body = b"\x1f\x8b" + body
    if coding is not None:
        headers.append(("Content-Encoding", coding.removesuffix("-broken")))
    framing = draw(st.sampled_from(FRAMINGS))
    payload = body
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
    elif framing == "length-short":
        headers.append(("Content-Length", str(len(body) + draw(st.integers(1, 100)))))
    elif framing == "length-over":  # bytes after the body: a second answer nobody asked for, or garbage
        headers.append(("Content-Length", str(len(body))))
        payload += draw(st.sampled_from([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", b"junk", b"HTTP/1.1 2"]))
    elif framing.startswith("chunked") or framing == "length-and-chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        if framing == "length-and-chunked":
            headers.append(("Content-Length", str(len(body))))
        sizes = draw(st.lists(st.integers(1, 2000), max_size=6))
        pieces, rest = [], body
        for size in sizes:
            if not rest:
                break
            pieces.append(rest[:size])
            rest = rest[size:]
        if rest:
            pieces.append(rest)
        extension = draw(st.sampled_from([b"", b";ext=1", b'; name="v"']))
        payload = b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension, p) for p in pieces)
        if framing == "chunked-bad-size":
            payload = b"zz\r\n" + payload
        if framing != "chunked-no-last":
            trailers = draw(st.sampled_from([b"", b"X-Trailer: done\r\n", b"X-Checksum: abc\r\nX-More: 1\r\n"]))
            payload += b"0\r\n" + trailers + b"\r\n"
    elif framing == "two-lengths":
        extra = draw(st.sampled_from([0, 1]))
        headers += [("Content-Length", str(len(body))), ("Content-Length", str(len(body) + extra))]
    fault = draw(st.sampled_from(HEAD_FAULTS))
    line = f"{version} {status} {reason}".encode()
    if fault == "bad-status":
        line = draw(st.sampled_from([b"HTTP/1.1 2x0 OK", b"HTTP/1.1 99 Low", b"HTTP/2 200 OK", b"HTTQ/1.1 200 OK"]))
    lines = [line] + [f"{n}: {v}".encode() for n, v in headers]
    if fault == "no-colon":
        lines.insert(1, b"NoColonHere")
    elif fault == "bad-name":
        lines.insert(1, "Ü-Bad: v".encode())
    elif fault == "obs-fold":
        lines.insert(1, b"X-Folded: first")
        lines.insert(2, b" continued")
    elif fault == "nul":
        lines.insert(1, b"X-Nul: a\x00b")
    elif fault == "long-line":
        lines.insert(1, b"X-Long: " + b"v" * 9000)
    elif fault == "many":
        lines[1:1] = [b"X-Many-%d: v" % i for i in range(130)]
    sep = b"\n" if fault == "bare-lf" else b"\r\n"
    return out + sep.join(lines) + sep + sep + payload


# -- the two clients ---------------------------------------------------------------------------------------


class Pair:
    """Both clients in one event loop (driven from the test's thread), sending to one fault server."""

    def __init__(self, certs: Certs, server: FaultServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        settings_ = {"ca_bundle": certs.ca_file, "connect_timeout": 5, "read_timeout": 5, "max_response_bytes": LIMIT}
        self.clients: dict[str, Upstream] = {"aiohttp": AiohttpUpstream(**settings_), "h1": H1Upstream(**settings_)}
        for client in self.clients.values():
            self.loop.run_until_complete(client.start())
        self.request = SignedRequest(
            "POST",
            server.url + "/",
            (("Host", server.url.split("//")[1]), ("Content-Type", JSON_TYPE), ("X-Amz-Target", "secretsmanager.X")),
            b"{}",
        )

    def outcomes(self, data: bytes, mode: str) -> dict[str, Any]:
        self.server.behaviour = raw_answer(data)
        return {
            name: self.loop.run_until_complete(self._outcome(client, mode)) for name, client in self.clients.items()
        }

    async def _outcome(self, client: Upstream, mode: str) -> Any:
        async with asyncio.timeout(20):
            try:
                if mode == "send":
                    answer = await client.send(self.request)
                    return ("answer", answer.status, answer.headers, answer.body)
                stream = await client.open(self.request)
                try:
                    body = b"".join([chunk async for chunk in stream.chunks()])
                finally:
                    stream.close()
                return ("answer", stream.status, stream.headers, body)
            except errors.ProxyError as exc:
                return ("error", type(exc).__name__)

    def close(self) -> None:
        for client in self.clients.values():
            self.loop.run_until_complete(client.aclose())
        self.loop.close()


@pytest.fixture
def pair(certs: Certs, start_fault: Any) -> Iterator[Pair]:
    both = Pair(certs, start_fault(raw_answer(b"")))
    yield both
    both.close()


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\n"


@BUDGET
@given(data=answers(), mode=st.sampled_from(["send", "open"]))
@example(data=HEAD + b"Content-Length: 2\r\n\r\n{}", mode="send")
@example(data=HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n", mode="send")
@example(data=HEAD + b"\r\n{}", mode="send")  # framed by the close
@example(data=INTERIM[2] + INTERIM[0] + HEAD + b"Content-Length: 2\r\n\r\n{}", mode="open")
@example(data=HEAD + b"Content-Length: 20\r\n\r\n{}", mode="send")  # cut short
@example(data=HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n", mode="open")  # no last chunk
@example(data=HEAD + b"Content-Length: 5000\r\n\r\n" + b" " * 5000, mode="send")  # over max_response_bytes
@example(data=HEAD + b"\r\n" + b" " * (LIMIT + 1), mode="send")  # framed by the close, one byte over
@example(data=b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabc", mode="send")
@example(data=b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", mode="send")
@example(data=b"HTTP/1.1 302 Found\r\nLocation: https://elsewhere.example/\r\nContent-Length: 0\r\n\r\n", mode="send")
@example(data=HEAD + b"Content-Encoding: gzip\r\n\r\n" + gzip.compress(b"{}" + b" " * 9000, mtime=0), mode="send")
def test_both_clients_read_every_answer_alike(pair: Pair, data: bytes, mode: str) -> None:
    got = pair.outcomes(data, mode)
    event(f"{mode}: {got['aiohttp'][0]} {got['aiohttp'][1]}")
    assert got["h1"] == got["aiohttp"], data[:600]


def test_max_response_bytes_bounds_what_send_reads_not_the_stream(pair: Pair) -> None:
    """``send`` reads at most max_response_bytes; ``open`` streams the body whatever its size (the relay's
    memory is bounded by the flow control instead), in both clients."""
    data = HEAD + b"Content-Length: 5000\r\n\r\n" + b" " * 5000
    assert pair.outcomes(data, "send") == {
        "aiohttp": ("error", "ResponseTooLarge"),
        "h1": ("error", "ResponseTooLarge"),
    }
    streamed = pair.outcomes(data, "open")
    assert streamed["h1"] == streamed["aiohttp"]
    assert streamed["h1"][0] == "answer" and streamed["h1"][3] == b" " * 5000
