"""A recording upstream: a real aiohttp server over TLS (a trustme certificate for 127.0.0.1) that keeps every
request it receives, exactly as it arrived, and answers with a function of the test's choosing.

With it a test sees what the proxy really sends upstream (headers, SignedHeaders, body) and can make the
upstream answer anything (gzip regardless of Accept-Encoding, odd bodies). The proxy reaches it with verified
TLS: its CA file is the proxy's ``upstream.ca_bundle``.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import trustme
from aiohttp import web

from proxy.config import Config
from tests.support import ReceivedRequest, ServerThread, merged_config

REQUEST_ID = "11111111-2222-3333-4444-555555555555"


@dataclass(frozen=True)
class Recorded(ReceivedRequest):
    """One request as the upstream received it; ``headers`` in arrival order, names as sent."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def operation(self) -> str:
        return (self.header("X-Amz-Target") or "").partition(".")[2]

    @property
    def signed_headers(self) -> list[str]:
        auth = self.header("Authorization") or ""
        for part in auth.split(", "):
            if "SignedHeaders=" in part:
                return part.split("SignedHeaders=", 1)[1].split(";")
        return []


Answer = Callable[[Recorded], web.StreamResponse]


def json_answer(payload: dict[str, Any] | None = None, status: int = 200) -> web.Response:
    """A JSON 1.1 answer with the upstream's request id."""
    return web.Response(
        status=status,
        body=json.dumps(payload or {}).encode(),
        headers={"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": REQUEST_ID},
    )


def default_answer(request: Recorded) -> web.StreamResponse:
    """``{}`` for every operation except GetSecretValue, which echoes the SecretId it was asked."""
    if request.operation == "GetSecretValue":
        secret_id = request.json().get("SecretId", "")
        return json_answer({"Name": secret_id, "SecretString": "recorded-secret-value"})
    return json_answer({})


@dataclass
class RecordingUpstream:
    """Start with ``with RecordingUpstream(tmp_dir) as up:``; ``up.url``, ``up.ca_file``, ``up.requests``."""

    workdir: str
    answer: Answer = default_answer
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        ca = trustme.CA()
        self.ca_file = os.path.join(self.workdir, "recorder-ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
        self._server = ServerThread(self._app, ssl_context=server_ctx)

    def _app(self) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers)
            recorded = Recorded(request.method, request.raw_path, headers, await request.read())
            with self._lock:
                self.requests.append(recorded)
            return self.answer(recorded)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    @property
    def url(self) -> str:
        return self._server.url

    def take(self) -> list[Recorded]:
        """The requests received so far, and forget them."""
        with self._lock:
            taken, self.requests[:] = list(self.requests), []
        return taken

    def __enter__(self) -> RecordingUpstream:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)


def recorder_config(recorder: RecordingUpstream, **sections: Any) -> Config:
    """A proxy Config against ``recorder``: its URL and CA, no role (credentials are passed to create_app), port
    0; ``sections`` are merged over it."""
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstream": {"region": "us-east-1", "endpoint_url": recorder.url, "ca_bundle": recorder.ca_file},
    }
    return merged_config(data, sections)


class CountingRelay:
    """A real TLS server in front of an upstream (moto's server): forwards each request as it arrived (method,
    path, headers including Host, body; so a SigV4 signature made for the relay is checked by the upstream as
    made) and relays the answer, counting the AWS JSON 1.1 operations (``X-Amz-Target``) it forwarded.

    ``with CountingRelay(tmp_dir, moto.url, moto.ca_file) as relay:``; the proxy's ``upstream.endpoint_url``
    is ``relay.url`` and its ``upstream.ca_bundle`` ``relay.ca_file``, which holds the target's CA too (the
    proxy verifies STS with the same bundle); ``relay.count("GetSecretValue")``."""

    def __init__(self, workdir: str, target: str, target_ca_file: str) -> None:
        self.target = target
        self.calls: dict[str, int] = {}
        self.delays: dict[str, float] = {}  # operation -> seconds each call is held before it is forwarded
        self._lock = threading.Lock()
        ca = trustme.CA()
        self.ca_file = os.path.join(workdir, "relay-ca.pem")
        with open(target_ca_file, "rb") as fh:
            target_ca = fh.read()
        with open(self.ca_file, "wb") as fh:
            fh.write(ca.cert_pem.bytes() + b"\n" + target_ca)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
        self._client_ctx = ssl.create_default_context(cafile=target_ca_file)
        self._server = ServerThread(self._app, ssl_context=server_ctx)

    def _app(self) -> web.Application:
        session: aiohttp.ClientSession | None = None

        async def handle(request: web.Request) -> web.StreamResponse:
            nonlocal session
            if session is None:
                session = aiohttp.ClientSession(auto_decompress=False)
            operation = request.headers.get("X-Amz-Target", "").partition(".")[2] or "-"
            with self._lock:
                self.calls[operation] = self.calls.get(operation, 0) + 1
            if self.delays.get(operation):
                await asyncio.sleep(self.delays[operation])
            headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
            async with session.request(
                request.method,
                self.target + request.rel_url.raw_path_qs,
                headers=headers,
                data=await request.read(),
                ssl=self._client_ctx,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            ) as answer:
                body = await answer.read()
                kept = [(k, v) for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP]
                return web.Response(status=answer.status, body=body, headers=kept)

        async def close(app: web.Application) -> None:
            if session is not None:
                await session.close()

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        app.on_cleanup.append(close)
        return app

    @property
    def url(self) -> str:
        return self._server.url

    def count(self, operation: str) -> int:
        with self._lock:
            return self.calls.get(operation, 0)

    def __enter__(self) -> CountingRelay:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)


# hop-by-hop and framing headers, which each connection sets for itself
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade"}
)
