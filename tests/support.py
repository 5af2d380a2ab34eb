"""Test support: real servers in background threads, the legacy Query client, config builders.

Everything here runs real parts on loopback: :class:`ServerThread` runs any aiohttp application (the proxy,
or a fault server) on a real port in its own event loop, so tests can drive it with blocking clients such
as botocore's; :func:`legacy_client` is botocore speaking awsQuery, unsigned, exactly like a legacy app.
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Self

import botocore.loaders
import botocore.session
from aiohttp import web
from botocore import UNSIGNED
from botocore.config import Config as BotocoreConfig

from proxy.config import Config, build, check
from proxy.local import REGION, MotoServer


class LoopThread:
    """A listener served by :meth:`_serve` in a background thread with its own event loop; a context manager.

    Subclasses implement ``_serve(stop)``: bind, set ``port`` and call ``self._ready.set()``, then return once
    ``stop`` is set. Entering starts the thread and waits for that, raising whatever ``_serve`` raised
    (AssertionError when it is not serving within 60 s); exiting sets ``stop`` and joins the thread (closing
    the loop raises RuntimeError when ``_serve`` has not returned within 30 s).
    """

    def __init__(self) -> None:
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _serve(self, stop: asyncio.Event) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced to the test by __enter__
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()  # made inside the serving loop
        await self._serve(self._stop)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine in the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> Self:
        self._thread.start()
        ready = self._ready.wait(60)
        if self._error is not None:
            raise self._error
        assert ready, f"{type(self).__name__} was not serving within 60 s"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self.loop.close()


class ServerThread(LoopThread):
    """Run an aiohttp application on 127.0.0.1 (or ``host``) in a background thread with its own loop.

    ``factory`` is called inside that loop (so loop-bound objects are created there). Use as a context
    manager; ``port``, ``url``, ``loop`` and ``runner`` are set once it is serving.
    """

    def __init__(
        self,
        factory: Callable[[], web.Application],
        *,
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
        shutdown_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self.factory = factory
        self.host = host
        self.ssl_context = ssl_context
        self.shutdown_timeout = shutdown_timeout
        self.app: web.Application | None = None
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def _serve(self, stop: asyncio.Event) -> None:
        self.app = self.factory()
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        self.runner = runner
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        site = web.SockSite(runner, sock, ssl_context=self.ssl_context)
        await site.start()
        self._ready.set()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()


def poll(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Call ``condition`` every ``interval`` seconds until it returns something truthy (returned); AssertionError
    after ``timeout`` seconds. How tests wait for a state (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------------------
# clients


def query_model(service: str = "secretsmanager") -> dict[str, Any]:
    """A copy of botocore's model for ``service`` speaking awsQuery: ``protocol: query`` and a
    ``resultWrapper`` of ``<Operation>Result`` on every output (TESTING.md, "The legacy client")."""
    loader = botocore.session.get_session().get_component("data_loader")
    model = copy.deepcopy(loader.load_service_model(service, "service-2"))
    model["metadata"]["protocol"] = "query"
    model["metadata"]["protocols"] = ["query"]
    for name, op in model["operations"].items():
        if "output" in op:
            op["output"]["resultWrapper"] = f"{name}Result"
    return model


_LEGACY_LOADERS: dict[str, botocore.loaders.Loader] = {}  # per service, for the run


def legacy_client(url: str, tmp_root: str, service: str = "secretsmanager", verify: str | bool = True) -> Any:
    """An unsigned botocore client speaking awsQuery to ``url`` (the proxy): the legacy app."""
    loader = _LEGACY_LOADERS.get(service)
    if loader is None:
        version = (
            botocore.session.get_session().get_component("data_loader").determine_latest_version(service, "service-2")
        )
        root = os.path.join(tmp_root, f"legacy-models-{service}")
        path = os.path.join(root, service, version)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "service-2.json"), "w", encoding="utf-8") as fh:
            json.dump(query_model(service), fh)
        loader = botocore.loaders.create_loader()  # its own: the query-protocol model comes first only here
        loader.search_paths.insert(0, root)
        _LEGACY_LOADERS[service] = loader
    session = botocore.session.Session()
    session.register_component("data_loader", loader)
    return session.create_client(
        service,
        region_name=REGION,
        endpoint_url=url,
        verify=verify,
        config=BotocoreConfig(signature_version=UNSIGNED, retries={"max_attempts": 1}),
    )


def sdk_client(
    url: str, *, service: str = "secretsmanager", region: str = REGION, token: str | None = None, **config: Any
) -> Any:
    """An AWS SDK client exactly as an app builds it: placeholder keys, the proxy at ``url`` as its endpoint, signing
    for ``region``; no retries unless ``config`` says otherwise."""
    return botocore.session.Session().create_client(
        service,
        region_name=region,
        endpoint_url=url,
        aws_access_key_id="AKIDPLACEHOLDER0000",
        aws_secret_access_key="placeholder-secret",
        aws_session_token=token,
        config=BotocoreConfig(**{"retries": {"max_attempts": 1}, **config}),
    )


def first_header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The value of the first header called ``name`` (names compared without case), or None."""
    wanted = name.lower()
    for k, v in headers:
        if k.lower() == wanted:
            return v
    return None


class ReceivedRequest:
    """``header()`` and ``json()`` for a request a test server kept: ``headers`` as (name, value) pairs in
    arrival order, ``body`` as bytes (the fields of the dataclasses that use this)."""

    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        return first_header(self.headers, name)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return first_header(self.headers.items(), name)


def raw_request(
    port: int,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 30,
) -> RawResponse:
    """Send exactly ``method target`` (no client-side normalisation) and read the answer."""
    conn: http.client.HTTPConnection
    if ssl_context is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl_context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_host=headers is not None and "Host" in headers, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None and not any(k.lower() in ("content-length", "transfer-encoding") for k in headers or {}):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return RawResponse(resp.status, dict(resp.getheaders()), resp.read())
    finally:
        conn.close()


def proxy_config(moto: MotoServer, **sections: Any) -> Config:
    """A proxy Config against the emulator: the demo role, the emulator's URL and CA, port 0; ``sections``
    are merged over it (``policy={"allow_actions": ["*"]}``)."""
    from proxy.local import DEMO_ROLE_ARN

    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstream": {"region": REGION, "endpoint_url": moto.url, "ca_bundle": moto.ca_file},
        "credentials": {"role_arn": DEMO_ROLE_ARN, "role_session_name": "tests"},
    }
    return merged_config(data, sections)


def merged_config(base: dict[str, Any], sections: dict[str, Any]) -> Config:
    """The Config of ``base`` with ``sections`` merged over it: a dict section over a dict updates that section's
    keys, anything else replaces it. Built and checked as the CLI does (ConfigError names the key)."""
    data = dict(base)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    cfg: Config = build(Config, data)
    check(cfg)
    return cfg
