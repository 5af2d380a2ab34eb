"""Fault injection on loopback: misbehaving upstreams, and the proxy as a real child process.

- :class:`FaultServer` is a real aiohttp application over TLS (a trustme CA, :class:`Certs`) whose answer to
  each request is a *behaviour* chosen by the test (:func:`answer`, :func:`never`, :func:`stall_body`,
  :func:`reset_mid_body`, :func:`sequence` ...). It records every request it saw and can count the
  connections still open to it, so a test can see the proxy release a socket.
- :class:`SilentServer` accepts TCP connections and never sends a byte (a TLS handshake that never ends).
- :class:`ScriptedServer` is TLS with a script per connection writing raw bytes (answers no HTTP server writes:
  several in one packet, bytes nobody asked for, a peer that then goes quiet without ``close_notify``).
- :class:`LoopbackResolver` is an aiohttp resolver that answers only from a table, so no DNS query leaves
  the machine.
- :class:`MeasuredProxy` runs the real CLI (:class:`tests.process.ProxyProcess`) with a config, and reads its
  RSS and open file descriptors from ``/proc``.

Also the pytest fixtures for these (registered by ``tests/conftest.py``): ``certs``, ``static_keys``,
``start_fault``, ``start_fault_proxy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import signal
import socket
import ssl
import struct
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from proxy.app import create_app
from proxy.config import Config
from proxy.local import REGION, clean_aws_environ
from tests.process import ProxyProcess, proc_status_kib
from tests.support import ReceivedRequest, ServerThread, merged_config

ACCESS_KEY = "AKIDFAULTTESTS000001"
SECRET_KEY = "fault-tests-secret-key-not-a-real-one"
JSON_TYPE = "application/x-amz-json-1.1"


# ---------------------------------------------------------------------------------------------------------
# TLS


class Certs:
    """A throwaway CA (trustme) whose certificate is written to ``ca_file``; issues server TLS contexts."""

    def __init__(self, workdir: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = str(workdir / "fault-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)

    def server_context(self, *names: str) -> ssl.SSLContext:
        """A server context with a certificate for ``names`` (default: the loopback names)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*(names or ("127.0.0.1", "localhost", "::1"))).configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


# ---------------------------------------------------------------------------------------------------------
# the fault server and its behaviours


@dataclass(frozen=True)
class Seen(ReceivedRequest):
    """One request as the fault server received it; ``index`` counts from 1."""

    index: int
    operation: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    received: float = field(default_factory=time.monotonic)


Behaviour = Callable[[web.Request, Seen], Awaitable[web.StreamResponse]]


class FaultServer(ServerThread):
    """An upstream that answers every request with ``behaviour`` (replaceable while running).

    Handlers are cancelled when the client goes away (``handler_cancellation``), so a behaviour that waits
    forever ends when the proxy drops the connection; ``cancelled`` counts those. ``peak_active`` is the most
    requests handled at once, ``peak_connections`` the most connections open at once (sampled per request);
    ``handshakes`` counts TLS ClientHellos, including those of handshakes that then failed.
    """

    def __init__(self, behaviour: Behaviour, ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(self._make_app, ssl_context=ssl_context, shutdown_timeout=0.5)
        self.handshakes = 0
        if ssl_context is not None:
            ssl_context.sni_callback = self._hello  # called for every ClientHello, with or without SNI
        self.behaviour = behaviour
        self.seen: list[Seen] = []
        self.active = 0
        self.peak_active = 0
        self.peak_connections = 0
        self.cancelled = 0
        self.answered = 0

    def _hello(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        self.handshakes += 1

    def _make_app(self) -> web.Application:
        app = web.Application(handler_args={"handler_cancellation": True}, client_max_size=1024**2)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        seen = Seen(len(self.seen) + 1, target.rsplit(".", 1)[-1], tuple(request.headers.items()), body)
        self.seen.append(seen)
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        if self.runner is not None and self.runner.server is not None:
            self.peak_connections = max(self.peak_connections, len(self.runner.server.connections))
        try:
            response = await self.behaviour(request, seen)
            self.answered += 1
            return response
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1

    def open_connections(self) -> int:
        """Connections to this server not yet closed (as its own listener sees them)."""

        async def count() -> int:
            assert self.runner is not None and self.runner.server is not None
            return len(self.runner.server.connections)

        result: int = self.call(count())
        return result

    def operations(self) -> list[str]:
        return [s.operation for s in self.seen]


def answer(
    status: int = 200,
    body: bytes | str | Any = b"{}",
    *,
    content_type: str = JSON_TYPE,
    headers: dict[str, str] | None = None,
) -> Behaviour:
    """A complete answer; a dict/list ``body`` is sent as JSON."""
    if isinstance(body, str):
        data = body.encode()
    elif isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body).encode()

    async def behave(request: web.Request, seen: Seen) -> web.StreamResponse:
        return web.Response(
            status=status,
            body=data,
            headers={"Content-Type": content_type, "x-amzn-RequestId": f"fault-{seen.index}", **(headers or {})},
        )

    return behave


def throttle(code: str = "ThrottlingException") -> Behaviour:
    """What Secrets Manager answers when it throttles: 400 with a JSON 1.1 ``__type``."""
    return answer(400, {"__type": code, "message": "Rate exceeded"})


def secret_value(name: str = "app/db", value: str = "s3cr3t") -> dict[str, Any]:
    return {
        "ARN": f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{name}-AbCdEf",
        "Name": name,
        "VersionId": "11111111-2222-3333-4444-555555555555",
        "SecretString": value,
        "VersionStages": ["AWSCURRENT"],
        "CreatedDate": 1700000000.123,
    }


def ok() -> Behaviour:
    """A successful answer that fits any operation: GetSecretValue's output (other outputs ignore it)."""
    return answer(200, secret_value())


def never() -> Behaviour:
    """Read the request, then never answer (until the client goes away)."""

    async def behave(request: web.Request, seen: Seen) -> web.StreamResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return behave


def delayed(seconds: float, then: Behaviour) -> Behaviour:
    """Wait ``seconds``, then behave as ``then``."""

    async def behave(request: web.Request, seen: Seen) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await then(request, seen)

    return behave


def stall_body(declared: int = 4096, first: bytes = b'{"Name": "app/db", ') -> Behaviour:
    """Send the status line and headers (``Content-Length: declared``) and the first bytes, then stall."""

    async def behave(request: web.Request, seen: Seen) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": JSON_TYPE, "x-amzn-RequestId": f"fault-{seen.index}"})
        resp.content_length = declared
        await resp.prepare(request)
        await resp.write(first)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return behave


def drip(interval: float) -> Behaviour:
    """Headers, then one byte of body every ``interval`` seconds, forever (each read within sock_read)."""

    async def behave(request: web.Request, seen: Seen) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": JSON_TYPE})
        resp.content_length = 10**7
        await resp.prepare(request)
        while True:
            await resp.write(b" ")
            await asyncio.sleep(interval)

    return behave


def reset_mid_body(total: int = 8192) -> Behaviour:
    """Headers announcing ``total`` bytes, half of them, then a TCP reset (SO_LINGER 0 and abort)."""

    async def behave(request: web.Request, seen: Seen) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": JSON_TYPE})
        resp.content_length = total
        await resp.prepare(request)
        await resp.write(b'{"Name": "' + b"x" * (total // 2))
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return resp

    return behave


def raw_answer(data: bytes) -> Behaviour:
    """Write ``data`` as the whole HTTP answer, bytes as given (any framing, right or wrong), then close."""

    async def behave(request: web.Request, seen: Seen) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.write(data)
        request.transport.close()
        return web.Response()

    return behave


def chunked(body: bytes, chunk: int = 64 * 1024) -> Behaviour:
    """A 200 JSON answer sent with chunked transfer encoding (no Content-Length)."""

    async def behave(request: web.Request, seen: Seen) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": JSON_TYPE, "x-amzn-RequestId": f"fault-{seen.index}"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), chunk):
            await resp.write(body[i : i + chunk])
        await resp.write_eof()
        return resp

    return behave


def sequence(*behaviours: Behaviour) -> Behaviour:
    """The n-th request gets the n-th behaviour; the last one repeats."""

    async def behave(request: web.Request, seen: Seen) -> web.StreamResponse:
        return await behaviours[min(seen.index, len(behaviours)) - 1](request, seen)

    return behave


def by_secret(table: dict[str, Behaviour], default: Behaviour) -> Behaviour:
    """Choose the behaviour by the request's ``SecretId``."""

    async def behave(request: web.Request, seen: Seen) -> web.StreamResponse:
        try:
            secret = seen.json().get("SecretId")
        except ValueError:
            secret = None
        return await table.get(secret, default)(request, seen)

    return behave


def by_operation(table: dict[str, Behaviour], default: Behaviour) -> Behaviour:
    """Choose the behaviour by the operation in ``X-Amz-Target``."""

    async def behave(request: web.Request, seen: Seen) -> web.StreamResponse:
        return await table.get(seen.operation, default)(request, seen)

    return behave


def list_secrets_document(entries: int) -> dict[str, Any]:
    """A ListSecrets JSON 1.1 answer with ``entries`` secrets (about 1.1 KiB of Query XML each)."""
    return {
        "SecretList": [
            {
                "ARN": f"arn:aws:secretsmanager:{REGION}:123456789012:secret:bulk/secret-{i:06d}-AbCdEf",
                "Name": f"bulk/secret-{i:06d}",
                "Description": f"secret number {i} " + "d" * 600,
                "LastChangedDate": 1700000000.5,
                "CreatedDate": 1690000000.25,
                "Tags": [{"Key": "team", "Value": "payments"}, {"Key": "env", "Value": "prod"}],
                "SecretVersionsToStages": {"11111111-2222-3333-4444-555555555555": ["AWSCURRENT"]},
            }
            for i in range(entries)
        ]
    }


# ---------------------------------------------------------------------------------------------------------
# a listener that never speaks, a resolver that never leaves the machine


class SilentServer:
    """A TCP listener on 127.0.0.1 that accepts connections, reads what arrives and never sends a byte.

    ``accepted`` counts connections, ``open`` those the peer has not closed yet.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self.open = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        conns: list[socket.socket] = []
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    conn, _ = self._listener.accept()
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    conns.append(conn)
                    self.accepted += 1
                    self.open += 1
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(sock)
                    sock.close()
                    conns.remove(sock)
                    self.open -= 1
        for conn in conns:
            conn.close()
        sel.close()
        self._listener.close()

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class ScriptedServer:
    """A TLS listener on 127.0.0.1 whose every connection runs ``script(conn, n)`` in a thread of its own: ``conn``
    the server's blocking ``ssl.SSLSocket``, ``n`` the connection's number from 1. For answers no aiohttp server
    writes: bytes on the wire exactly as the script sends them, when it sends them.

    A connection stays open when its script returns, without ``close_notify`` or a FIN and without reading,
    until the server stops: an upstream that has gone quiet. ``accepted`` counts connections; a script that
    raises is recorded in ``errors`` (a peer going away mid-script is not an error).
    """

    def __init__(self, ssl_context: ssl.SSLContext, script: Callable[[ssl.SSLSocket, int], None]) -> None:
        self._context = ssl_context
        self._script = script
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.accepted = 0
        self.errors: list[BaseException] = []
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            self.accepted += 1
            self._conns.append(sock)
            threading.Thread(target=self._run, args=(sock, self.accepted), daemon=True).start()

    def _run(self, sock: socket.socket, n: int) -> None:
        try:
            conn = self._context.wrap_socket(sock, server_side=True)
            self._conns.append(conn)
            self._script(conn, n)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            pass
        except BaseException as exc:  # surfaced by the test through ``errors``
            self.errors.append(exc)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way (Linux)
        self._listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()
        self._thread.join(10)


def read_http_request(conn: ssl.SSLSocket) -> bytes | None:
    """Read one request (head and a ``Content-Length`` body) from ``conn``; its head, or None at the end of input."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            return None
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        more = conn.recv(65536)
        if not more:
            return None
        body += more
    return head


def http_answer(body: bytes, status: str = "200 OK", headers: bytes = b"") -> bytes:
    """An HTTP/1.1 answer framed by ``Content-Length``, as bytes (``headers``: extra lines, each ending CR LF)."""
    return b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status.encode(),
        JSON_TYPE.encode(),
        len(body),
        headers,
        body,
    )


class LoopbackResolver(AbstractResolver):
    """An aiohttp resolver answering only from ``hosts`` (name -> loopback address); every other name fails
    as unknown (EAI_NONAME), without a DNS query. ``asked`` records the names looked up."""

    def __init__(self, hosts: dict[str, str] | None = None) -> None:
        self.hosts = dict(hosts or {})
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        address = self.hosts.get(host)
        if address is None:
            raise OSError(socket.EAI_NONAME, "Name or service not known")
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0, flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


# ---------------------------------------------------------------------------------------------------------
# signatures, answers


def sigv4_valid(seen: Seen, *, service: str = "secretsmanager", region: str = REGION) -> bool:
    """Recompute the SigV4 signature of a received request with botocore (the test keys, the request's own
    X-Amz-Date and SignedHeaders) and compare it with the one it carries."""
    auth = seen.header("Authorization") or ""
    parts = dict(p.strip().split("=", 1) for p in auth.removeprefix("AWS4-HMAC-SHA256 ").split(","))
    signed = parts["SignedHeaders"].split(";")
    headers = {k: v for k, v in seen.headers if k.lower() in signed}
    request = AWSRequest(method="POST", url=f"https://{seen.header('Host')}/", headers=headers, data=seen.body)
    request.context["timestamp"] = seen.header("X-Amz-Date")
    signer = SigV4Auth(ReadOnlyCredentials(ACCESS_KEY, SECRET_KEY, None), service, region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return bool(expected == parts["Signature"])


def signature_of(seen: Seen) -> str:
    auth = seen.header("Authorization") or ""
    return auth.rsplit("Signature=", 1)[-1]


def xml_error(body: bytes) -> tuple[str, str, str]:
    """(Type, Code, RequestId) of a Query ErrorResponse; raises if it is not one."""
    root = ElementTree.fromstring(body)
    assert root.tag == "ErrorResponse", body[:200]
    return (root.findtext("Error/Type") or "", root.findtext("Error/Code") or "", root.findtext("RequestId") or "")


# ---------------------------------------------------------------------------------------------------------
# the proxy: in-process against a fault server, and as the real CLI in a child process


def fault_config(url: str, ca_file: str | None, **sections: Any) -> Config:
    """A proxy Config for ``url`` with static credentials (no role), port 0, every action allowed and short
    deadlines (connect 1 s, read 1 s, total 3 s); ``sections`` are merged over it."""
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstream": {
            "region": REGION,
            "endpoint_url": url,
            "ca_bundle": ca_file,
            "connect_timeout_seconds": 1,
            "read_timeout_seconds": 1,
            "total_timeout_seconds": 3,
        },
        "policy": {"allow_actions": ["*"]},
    }
    return merged_config(data, sections)


def proxy_environ() -> dict[str, str]:
    """A child's environment: no AWS_* from outside, the test keys, the region, no instance metadata."""
    env = clean_aws_environ()
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION})
    for key in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        env.pop(key, None)
    return env


class MeasuredProxy(ProxyProcess):
    """The CLI (:class:`tests.process.ProxyProcess`) with ``config`` written to YAML and the test keys in its
    environment; entering waits for its ``listening`` line. Reads RSS and open descriptors from ``/proc``."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None) -> None:
        path = workdir / "proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        super().__init__(["--config", str(path), "--log-level", "info"], workdir, env or proxy_environ())

    def __enter__(self) -> MeasuredProxy:
        super().__enter__()
        self.wait_listening()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def access_lines(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if "attempts" in line and "status" in line]

    def rss_bytes(self) -> int:
        return proc_status_kib(self.pid, "VmRSS") * 1024

    def peak_rss_bytes(self) -> int:
        return proc_status_kib(self.pid, "VmHWM") * 1024

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def aiohttp_get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as resp:
        return resp.status, await resp.read()


# ---------------------------------------------------------------------------------------------------------
# fixtures (registered through ``pytest_plugins`` in tests/conftest.py)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("fault-certs"))


@pytest.fixture
def static_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Static source credentials in the environment (no role to assume, so no STS)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", REGION)


StartFault = Callable[..., FaultServer]


@pytest.fixture
def start_fault(certs: Certs) -> Iterator[StartFault]:
    """``start_fault(behaviour, ssl_context=None)`` runs a FaultServer (default: TLS from ``certs``)."""
    started: list[FaultServer] = []

    def start(behaviour: Behaviour, ssl_context: ssl.SSLContext | None = None) -> FaultServer:
        server = FaultServer(behaviour, ssl_context or certs.server_context())
        server.__enter__()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.__exit__(None, None, None)


StartFaultProxy = Callable[..., ServerThread]


@pytest.fixture
def start_fault_proxy(certs: Certs, static_keys: None) -> Iterator[StartFaultProxy]:
    """``start_fault_proxy(url, resolver=None, **sections)``: the proxy in a background thread against ``url``
    (trusting ``certs``' CA), static keys, the short deadlines of :func:`fault_config`."""
    started: list[ServerThread] = []

    def start(url: str, resolver: AbstractResolver | None = None, **sections: Any) -> ServerThread:
        cfg = fault_config(url, certs.ca_file, **sections)
        server = ServerThread(lambda: create_app(cfg, resolver=resolver)).__enter__()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.__exit__(None, None, None)
