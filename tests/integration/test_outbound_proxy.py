"""Outbound HTTP proxies (docs/interface.md, "Configuration": HTTPS_PROXY / NO_PROXY as botocore honours them). The proxy reads
them once per upstream URL instead of on every request (proxy/upstream.py); with a proxy the request goes
through it with CONNECT (aiohttp's client), without one (or with the host in NO_PROXY) it goes straight to
the upstream (aiohttp's client). A real CONNECT proxy on loopback records what it tunnels."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.faults import LoopbackResolver, ok
from tests.support import LoopThread, raw_request

GET = "/?Action=GetSecretValue&SecretId=app%2Fdb&Version=2017-10-17"
HOST = "secretsmanager.upstream.test"


class ConnectProxy(LoopThread):
    """An HTTP CONNECT proxy on 127.0.0.1 in its own thread; every target host is reached at 127.0.0.1 (no
    DNS). ``targets`` records each CONNECT's ``host:port``."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def _serve(self, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self._tunnel, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await stop.wait()
        server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        self.targets.append(target)
        port = int(target.rsplit(":", 1)[1])
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        self._writers.append(up_writer)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
def connect_proxy() -> Iterator[ConnectProxy]:
    with ConnectProxy() as proxy:
        yield proxy


def test_https_proxy_carries_the_upstream_requests(start_fault, start_fault_proxy, certs, connect_proxy, monkeypatch):
    fault = start_fault(ok(), ssl_context=certs.server_context(HOST))
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{connect_proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxy = start_fault_proxy(f"https://{HOST}:{fault.port}", resolver=LoopbackResolver({}))
    for _ in range(3):
        assert raw_request(proxy.port, "GET", GET).status == 200
    assert connect_proxy.targets and set(connect_proxy.targets) == {f"{HOST}:{fault.port}"}
    assert len(fault.seen) == 3 and fault.seen[0].header("Host") == f"{HOST}:{fault.port}"


def test_no_proxy_sends_the_upstream_requests_straight(
    start_fault, start_fault_proxy, certs, connect_proxy, monkeypatch
):
    fault = start_fault(ok(), ssl_context=certs.server_context(HOST))
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{connect_proxy.port}")
    monkeypatch.setenv("NO_PROXY", ".upstream.test")
    resolver = LoopbackResolver({HOST: "127.0.0.1"})
    proxy = start_fault_proxy(f"https://{HOST}:{fault.port}", resolver=resolver)
    for _ in range(3):
        assert raw_request(proxy.port, "GET", GET).status == 200
    assert connect_proxy.targets == []
    assert len(fault.seen) == 3 and resolver.asked == [HOST]  # resolved once: one kept-alive connection


def test_without_a_proxy_the_environment_is_read_once_per_url(start_fault, start_fault_proxy, monkeypatch):
    """The environment is read when a URL is first sent to, not per request (aiohttp's trust_env did)."""
    import aiohttp.helpers

    calls: list[object] = []
    real = aiohttp.helpers.get_env_proxy_for_url
    monkeypatch.setattr("proxy.upstream.get_env_proxy_for_url", lambda url: calls.append(url) or real(url))
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    fault = start_fault(ok())
    proxy = start_fault_proxy(fault.url)
    for _ in range(5):
        assert raw_request(proxy.port, "GET", GET).status == 200
    assert len(calls) == 1 and len(fault.seen) == 5
