"""Load generators: wrk (Debian's package) when installed, else a Python one; both report the same figures.

:class:`Load` describes one run: a URL, a method, headers and body, N keep-alive connections, a duration.
:func:`run_wrk` drives ``wrk --latency`` with a generated Lua script; :func:`run_python` is a closed-loop
``asyncio.Protocol`` client (on uvloop when installed) that keeps one request in flight per connection,
as wrk does. Each returns a :class:`Result`: requests, seconds, req/s, p50 and p99 latency (seconds) and the
number of answers that were not 2xx (or were broken).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Load:
    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    connections: int = 1
    seconds: float = 10.0


@dataclass
class Result:
    requests: int
    seconds: float
    p50: float
    p99: float
    errors: int
    tool: str
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m[1]) * _UNITS[m[2]]


def run_wrk(load: Load) -> Result:
    """``wrk -c N -t min(N, 2) -d S --latency`` with the method, headers and body set by a Lua script."""
    lines = [f'wrk.method = "{load.method}"']
    if load.body:
        lines.append(f"wrk.body = {_lua_string(load.body)}")
    for name, value in load.headers:
        lines.append(f"wrk.headers[{_lua_string(name.encode())}] = {_lua_string(value.encode())}")
    # count non-2xx answers ourselves too: wrk counts only >= 400 under "Non-2xx or 3xx responses"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    try:
        out = subprocess.run(
            [
                "wrk",
                "-c",
                str(load.connections),
                "-t",
                str(min(load.connections, 2)),
                "-d",
                f"{load.seconds:g}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                script.name,
                load.url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        Path(script.name).unlink()
    m = re.search(r"(\d+) requests in ([0-9.]+)(us|ms|s|m)", out)
    if not m:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    requests, seconds = int(m[1]), float(m[2]) * _UNITS[m[3]]
    pct = dict(re.findall(r"^\s*(50|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M))
    if "50" not in pct or "99" not in pct:
        raise RuntimeError(f"no latency percentiles in wrk's output:\n{out}")
    errors = 0
    for pattern in (
        r"Non-2xx or 3xx responses: (\d+)",
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
    ):
        for found in re.findall(pattern, out):
            errors += sum(int(x) for x in (found if isinstance(found, tuple) else (found,)))
    return Result(requests, seconds, _seconds(pct["50"]), _seconds(pct["99"]), errors, "wrk")


# ---------------------------------------------------------------------------------------------------------
# the Python load generator


class _Conn(asyncio.Protocol):
    def __init__(self, request: bytes, latencies: list[float], counts: list[int], until: float) -> None:
        self.request = request
        self.latencies = latencies
        self.counts = counts  # [answers, errors]
        self.until = until
        self.buffer = bytearray()
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self.counts[1] += 1
            self._finish()
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else None])
        if len(self.buffer) < end + 4 + length:
            return
        now = time.perf_counter()
        del self.buffer[: end + 4 + length]
        self.latencies.append(now - self.sent)
        self.counts[0] += 1
        if not head.startswith(b"http/1.1 2"):
            self.counts[1] += 1
        if now >= self.until:
            self._finish()
        else:
            self._send()

    def _finish(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _python_run(load: Load) -> Result:
    parts = urlsplit(load.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = [f"{load.method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    head += [f"{k}: {v}" for k, v in load.headers]
    if load.body or load.method == "POST":
        head.append(f"Content-Length: {len(load.body)}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + load.body
    ctx: ssl.SSLContext | None = None
    if parts.scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # as wrk: the figures, not the CA
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    counts = [0, 0]
    started = time.perf_counter()
    until = started + load.seconds
    conns = []
    for _ in range(load.connections):
        _, proto = await loop.create_connection(lambda: _Conn(request, latencies, counts, until), host, port, ssl=ctx)
        conns.append(proto)
    await asyncio.gather(*(c.done for c in conns))
    elapsed = time.perf_counter() - started
    latencies.sort()
    p50 = latencies[len(latencies) // 2] if latencies else 0.0
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return Result(counts[0], elapsed, p50, p99, counts[1], "python", latencies)


def run_python(load: Load) -> Result:
    """The Python load generator: ``load.connections`` closed-loop keep-alive connections in one process."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        return runner.run(_python_run(load))


def run(load: Load, tool: str) -> Result:
    return run_wrk(load) if tool == "wrk" else run_python(load)
