"""A fast fake AWS upstream over TLS on loopback: the "direct" column of the benchmark.

It is a bare ``asyncio.Protocol`` (on uvloop when installed) that parses just enough HTTP/1.1 to answer
keep-alive requests, because it is the limit the proxy is measured against and must not itself be slow:

* ``X-Amz-Target: secretsmanager.GetSecretValue`` (AWS JSON 1.1): a 1 KiB GetSecretValue answer;
  any other ``secretsmanager.*`` target: ``{}``.
* a form body ``Action=GetCallerIdentity`` (sts, awsQuery): the small XML answer STS gives;
* a form body ``Action=GetAccessKeyInfo``: ``big_bytes`` of XML (or N with ``AccessKeyId=AKIASIZE<N>``) written
  in 64 KiB pieces with flow control
  (``pause_writing``/``resume_writing``), so the upstream never buffers more than the transport's
  high-water mark: what a slow reader makes the proxy hold is the proxy's own doing.

It does not check signatures (the test suite does that against moto with signature checking on); it counts
requests without ``Authorization``, TLS accepts (connections opened) and bytes of big answers sent, in a
shared ``RawArray`` the benchmark reads (:class:`Counters`).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import multiprocessing
import os
import signal
import ssl
import time
from typing import Any

ACCEPTS, REQUESTS, UNSIGNED, BIG_SENT, BIG_DONE = range(5)
COUNTERS = 5
CHUNK = 64 * 1024

SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:bench/secret-AbCdEf"


def secret_answer() -> bytes:
    """The GetSecretValue answer: 1 KiB of AWS JSON 1.1 (epoch-seconds timestamp, as AWS sends it)."""
    doc: dict[str, Any] = {
        "ARN": SECRET_ARN,
        "Name": "bench/secret",
        "VersionId": "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111",
        "SecretString": "",
        "VersionStages": ["AWSCURRENT"],
        "CreatedDate": 1523477145.713,
    }
    base = len(json.dumps(doc, separators=(",", ":")))
    doc["SecretString"] = json.dumps({"username": "bench", "password": "p" * (1024 - base - 36)})
    body = json.dumps(doc, separators=(",", ":")).encode()
    return body


CALLER_IDENTITY = (
    b'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    b"<GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/bench</Arn>"
    b"<UserId>AIDACKCEVSQ6C2EXAMPLE</UserId><Account>123456789012</Account></GetCallerIdentityResult>"
    b"<ResponseMetadata><RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId></ResponseMetadata>"
    b"</GetCallerIdentityResponse>"
)
BIG_OPEN = b'<GetAccessKeyInfoResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><!--'
BIG_CLOSE = (
    b"--><GetAccessKeyInfoResult><Account>123456789012</Account></GetAccessKeyInfoResult></GetAccessKeyInfoResponse>"
)
PAD = (b"padding " * 8192)[:CHUNK]


class _Clock:
    """The HTTP ``Date`` value, formatted once a second."""

    def __init__(self) -> None:
        self.second = 0
        self.value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = email.utils.formatdate(now, usegmt=True).encode()
        return self.value


class Upstream(asyncio.Protocol):
    """One TLS connection: parse pipelined HTTP/1.1 requests, answer each from the tables above."""

    def __init__(self, counters: Any, clock: _Clock, secret: bytes, big_bytes: int) -> None:
        self.counters = counters
        self.clock = clock
        self.secret = secret
        self.big_bytes = big_bytes
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.big_left = 0  # bytes of a big answer still to write
        self.serial = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.counters[ACCEPTS] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.big_left:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        counters = self.counters
        counters[REQUESTS] += 1
        if b"\r\nauthorization: aws4-hmac-sha256 " not in head:
            counters[UNSIGNED] += 1
        self.serial += 1
        request_id = b"%08x-0000-4000-8000-%012d" % (id(self) & 0xFFFFFFFF, self.serial)
        if b"\r\nx-amz-target: secretsmanager.getsecretvalue" in head:
            self._write(b"application/x-amz-json-1.1", self.secret, request_id)
        elif b"\r\nx-amz-target: secretsmanager." in head:
            self._write(b"application/x-amz-json-1.1", b"{}", request_id)
        elif b"Action=GetCallerIdentity" in body:
            self._write(b"text/xml", CALLER_IDENTITY, request_id)
        elif b"Action=GetAccessKeyInfo" in body:
            assert self.transport is not None
            size = self.big_bytes
            at = body.find(b"AccessKeyId=AKIASIZE")
            if at >= 0:  # AKIASIZE<digits>: an answer of that many bytes of padding
                digits = body[at + 20 :].split(b"&", 1)[0]
                size = int(digits) if digits.isdigit() else size
            total = len(BIG_OPEN) + size + len(BIG_CLOSE)
            self.transport.write(self._head(b"text/xml", total, request_id) + BIG_OPEN)
            self.big_left = size
            self._pump()
        else:
            self._write(b"text/plain", b"unknown request\n", request_id, b"400 Bad Request")

    def _head(self, content_type: bytes, length: int, request_id: bytes, status: bytes = b"200 OK") -> bytes:
        return b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nx-amzn-RequestId: %s\r\nDate: %s\r\n\r\n" % (
            status,
            content_type,
            length,
            request_id,
            self.clock.date(),
        )

    def _write(self, content_type: bytes, body: bytes, request_id: bytes, status: bytes = b"200 OK") -> None:
        assert self.transport is not None
        self.transport.write(self._head(content_type, len(body), request_id, status) + body)

    def _pump(self) -> None:
        """Write the big answer while the transport takes it (flow control: at most its high-water mark)."""
        while self.big_left and not self.paused and self.transport is not None:
            piece = PAD[: min(CHUNK, self.big_left)]
            self.big_left -= len(piece)
            self.counters[BIG_SENT] += len(piece)
            if not self.big_left:
                self.transport.write(piece + BIG_CLOSE)
                self.counters[BIG_DONE] += 1
            else:
                self.transport.write(piece)
        if not self.big_left and self.buffer and self.transport is not None:
            self.data_received(b"")


def serve(port_out: Any, plain_port_out: Any, counters: Any, cert_file: str, key_file: str, big_bytes: int) -> None:
    """Run the upstream until SIGTERM (in its own process). Writes the TLS port into ``port_out`` and the port
    of the same answers in plain HTTP (the load generator's own ceiling) into ``plain_port_out``."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    clock, secret = _Clock(), secret_answer()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = await loop.create_server(
            lambda: Upstream(counters, clock, secret, big_bytes), "127.0.0.1", 0, ssl=ctx, backlog=1024
        )
        plain = await loop.create_server(
            lambda: Upstream(counters, clock, secret, big_bytes), "127.0.0.1", 0, backlog=1024
        )
        plain_port_out.value = plain.sockets[0].getsockname()[1]
        port_out.value = server.sockets[0].getsockname()[1]
        await stop.wait()
        server.close()
        plain.close()

    with runner:
        runner.run(main())


class UpstreamProcess:
    """The upstream in its own process (spawned, so it shares nothing with the caller but the counters)."""

    def __init__(self, cert_file: str, key_file: str, big_bytes: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.counters = ctx.RawArray("q", COUNTERS)
        self._port = ctx.RawValue("i", 0)
        self._plain_port = ctx.RawValue("i", 0)
        self.process = ctx.Process(
            target=serve,
            args=(self._port, self._plain_port, self.counters, cert_file, key_file, big_bytes),
            daemon=True,
        )
        self.process.start()
        deadline = time.monotonic() + 30
        while not self._port.value:
            if not self.process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.02)
        self.port = int(self._port.value)
        self.plain_port = int(self._plain_port.value)
        self.pid = int(self.process.pid or 0)

    def count(self, which: int) -> int:
        return int(self.counters[which])

    def stop(self) -> None:
        if self.process.is_alive():
            os.kill(self.pid, signal.SIGTERM)
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
