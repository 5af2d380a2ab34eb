"""Support for the streaming tests: a real aiohttp upstream over TLS that answers big bodies, the proxy as a
subprocess (``python -m proxy --config``) whose RSS is read from ``/proc/<pid>/status``, and a raw HTTP
client that reads exactly as fast as a test says."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
import yaml
from aiohttp import web

from proxy.local import clean_aws_environ
from tests.process import proc_status_kib
from tests.support import ServerThread

ROOT = Path(__file__).resolve().parents[1]
BLOCK = (b"<!-- padding padding padding padding padding padding padding padding padding -->\n" * 1024)[: 64 * 1024]
MiB = 1024 * 1024


@dataclass
class Answer:
    """What the upstream did for one request."""

    size: int
    sent: int = 0
    finished: threading.Event = field(default_factory=threading.Event)
    aborted: threading.Event = field(default_factory=threading.Event)


class BigUpstream:
    """An awsQuery-looking upstream (``service: sns``) over TLS. ``ListTopics`` with ``NextToken=<size>``
    answers ``size`` bytes of XML in 64 KiB writes; ``NextToken=hold-<size>`` sends one block and then waits
    for :attr:`go`; ``NextToken=break-<size>`` closes the connection half way through its Content-Length."""

    def __init__(self, workdir: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = str(workdir / "upstream-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(ctx)
        self.answers: list[Answer] = []
        self.go = threading.Event()
        self.server = ServerThread(self._app, ssl_context=ctx)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 ")
        token = str(form["NextToken"])
        mode, _, size_text = token.rpartition("-")
        answer = Answer(int(size_text))
        self.answers.append(answer)
        response = web.StreamResponse(
            headers={"Content-Type": "text/xml", "x-amzn-RequestId": f"up-{len(self.answers)}"}
        )
        response.content_length = answer.size
        await response.prepare(request)
        try:
            while answer.sent < answer.size:
                if mode == "break" and answer.sent >= answer.size // 2:
                    assert request.transport is not None
                    request.transport.close()
                    answer.aborted.set()
                    return response
                block = BLOCK[: answer.size - answer.sent]
                await response.write(block)
                answer.sent += len(block)
                if mode == "hold" and answer.sent == len(block):
                    await asyncio.to_thread(self.go.wait, 30)
            await response.write_eof()
            answer.finished.set()
        except (ConnectionError, asyncio.CancelledError):
            answer.aborted.set()
            raise
        return response

    def __enter__(self) -> BigUpstream:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.go.set()
        self.server.__exit__(*exc)


class ProxyProcess:
    """``python -m proxy --config FILE`` with static source keys (no role) against ``upstream``; the port is
    read from the JSON ``listening`` log line (port 0 in the file)."""

    def __init__(self, workdir: Path, sections: dict[str, Any]) -> None:
        self.config_file = workdir / "proxy.yaml"
        self.config_file.write_text(yaml.safe_dump({"listen": {"host": "127.0.0.1", "port": 0}, **sections}))
        self.log_file = workdir / "proxy.log"
        env = clean_aws_environ()
        env.update(
            AWS_ACCESS_KEY_ID="AKIDSTREAMTEST", AWS_SECRET_ACCESS_KEY="stream-test-secret", AWS_REGION="us-east-1"
        )
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "proxy", "--config", str(self.config_file)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                cwd=ROOT,
            )
        self.port = self._wait_listening(60)

    def _wait_listening(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_file.read_text()
            for line in self.log_file.read_text().splitlines():
                if line.startswith("{"):
                    record = json.loads(line)
                    if record.get("message") == "listening" and "route" not in record:
                        return int(record["port"])
            time.sleep(0.05)
        raise AssertionError(f"the proxy did not listen within {timeout} s: {self.log_file.read_text()}")

    def status_kib(self, key: str) -> int:
        """A ``/proc/<pid>/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
        return proc_status_kib(self.process.pid, key)

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (``clear_refs`` 5, Linux 4.0+); False where that is not allowed."""
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def access_lines(self) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for line in self.log_file.read_text().splitlines()
            if line.startswith("{") and '"request_id"' in line and '"status"' in line
        ]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class RawClient:
    """A plain-socket HTTP/1.1 client that reads only when told to (a slow reader)."""

    def __init__(self, port: int, body: bytes, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        head = (
            f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        self.sock.sendall(head + body)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body_bytes = 0
        self._buffer = b""

    def read_head(self) -> bytes:
        """Read the status line and headers; returns the body bytes that came with them."""
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before the headers: {self._buffer!r}")
            self._buffer += chunk
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.body_bytes = len(rest)
        return rest

    def read(self, n: int) -> int:
        """Read up to ``n`` body bytes (fewer at the end of the body); returns how many."""
        got = 0
        while got < n:
            chunk = self.sock.recv(min(65536, n - got))
            if not chunk:
                break
            got += len(chunk)
        self.body_bytes += got
        return got

    def read_all(self) -> int:
        while True:
            chunk = self.sock.recv(1024 * 1024)
            if not chunk:
                return self.body_bytes
            self.body_bytes += len(chunk)

    def close(self) -> None:
        self.sock.close()


def list_topics_form(token: str) -> bytes:
    return f"Action=ListTopics&Version=2010-03-31&NextToken={token}".encode()


def proxy_sections(upstream: BigUpstream, **extra: Any) -> dict[str, Any]:
    return {
        "upstream": {
            "service": "sns",
            "region": "us-east-1",
            "endpoint_url": upstream.server.url,
            "ca_bundle": upstream.ca_file,
        },
        "policy": {"allow_actions": ["ListTopics"]},  # any service but Secrets Manager names its operations
        **extra,
    }
