"""Refresh-ahead measured (issue 16): steady reads of a few secrets through proxies whose cache expires, is
refreshed ahead, checks versions, or never expires, side by side in the same minutes.

    .venv/bin/python bench/refresh.py                    # 10 minutes, ttl_seconds 30, 5 secrets, 10 reads/s each
    .venv/bin/python bench/refresh.py --seconds 60       # a shorter run
    .venv/bin/python bench/refresh.py --help             # --ttl, --rate, --secrets, --upstream-ms, --json ...

What it does (docs/benchmarks.md, "Refresh-ahead", has the figures):

1. starts a fake Secrets Manager over TLS on loopback in its own process (:func:`serve_upstream`) that answers
   every call after ``--upstream-ms`` (a regional endpoint's round trip; 20 ms by default): ``GetSecretValue``
   with a 1 KiB answer for the secret it names (by name or ARN), ``DescribeSecret`` with the version that holds
   ``AWSCURRENT``. It counts the calls of each operation per proxy (each proxy signs with its own access key);
2. starts one proxy process per configuration (``python -m proxy``, static keys, the cache on with ``--ttl``):
   ``expire`` (``refresh_ahead: false``: the first read after expiry waits), ``ahead`` (the default,
   refresh-ahead), ``ahead+check`` (``version_check: true``), ``ahead, 2 workers`` (``--workers 2``) and ``hit``
   (a TTL of an hour: after the first read every read is a cache hit: the baseline);
3. reads every secret through every proxy at ``--rate`` reads per second each, on a schedule (open loop:
   a read is sent at its time whatever the previous took), on keep-alive connections that are opened
   again every ``--reconnect-seconds`` (so the kernel spreads a secret's reads over the workers), all
   proxies at once; the latency of a read is from its send to the end of its answer;
4. prints per configuration the reads' p50, p99, p99.9 and max, against the ``hit`` row, the reads slower
   than the upstream's latency (reads that waited on it), and the upstream calls per secret per TTL, with the
   proxies' own cache metrics.

The first read of each secret (a miss everywhere) is left out of the percentiles and counted apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.run import machine, make_certs  # noqa: E402

ACCOUNT = "123456789012"
OPERATIONS = ("GetSecretValue", "DescribeSecret")


@dataclass(frozen=True)
class Setup:
    name: str
    cache: dict[str, Any]
    workers: int = 1


def setups(ttl: float) -> list[Setup]:
    return [
        Setup("expire", {"ttl_seconds": ttl, "refresh_ahead": False}),
        Setup("ahead", {"ttl_seconds": ttl}),
        Setup("ahead+check", {"ttl_seconds": ttl, "version_check": True}),
        Setup("ahead, 2 workers", {"ttl_seconds": ttl}, workers=2),
        Setup("hit", {"ttl_seconds": 3600}),
    ]


# ---------------------------------------------------------------------------------------------------------
# the upstream


def _answer(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "ARN": f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:{name}-AbCdEf",
        "Name": name,
        "VersionId": "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111",
        "SecretString": "",
        "VersionStages": ["AWSCURRENT"],
        "CreatedDate": 1523477145.713,
    }
    doc["SecretString"] = json.dumps({"username": "bench", "password": "p" * 880})
    return doc


def serve_upstream(port_out: Any, counters: Any, keys: int, cert_file: str, key_file: str, latency: float) -> None:
    """The fake Secrets Manager (in its own process) until SIGTERM: every answer after ``latency`` seconds;
    ``counters[key * 2 + op]`` counts the calls signed with access key ``AKIDBENCHREFRESH<key>``."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read() or b"{}")
        operation = request.headers.get("X-Amz-Target", "").partition(".")[2]
        auth = request.headers.get("Authorization", "")
        key = auth.partition("Credential=AKIDBENCHREFRESH")[2].partition("/")[0]
        if operation in OPERATIONS and key.isdigit() and int(key) < keys:
            counters[int(key) * len(OPERATIONS) + OPERATIONS.index(operation)] += 1
        await asyncio.sleep(latency)
        secret_id = str(body.get("SecretId", ""))
        name = secret_id.partition(":secret:")[2][:-7] if secret_id.startswith("arn:") else secret_id
        doc = _answer(name)
        if operation == "DescribeSecret":
            doc = {"ARN": doc["ARN"], "Name": name, "VersionIdsToStages": {doc["VersionId"]: ["AWSCURRENT"]}}
        elif operation != "GetSecretValue":
            return web.json_response({"__type": "InvalidAction", "message": operation}, status=400)
        return web.Response(body=json.dumps(doc).encode(), content_type="application/x-amz-json-1.1")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert_file, key_file)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port_out.value = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------------
# the proxies


class CacheProxy:
    """``python -m proxy`` with the cache of ``setup``, signing with access key ``AKIDBENCHREFRESH<index>``."""

    def __init__(self, workdir: Path, index: int, setup: Setup, upstream_port: int, ca_file: str) -> None:
        self.setup = setup
        config = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "upstream": {
                "region": "us-east-1",
                "endpoint_url": f"https://127.0.0.1:{upstream_port}",
                "ca_bundle": ca_file,
            },
            "cache": {"enabled": True, **setup.cache},
        }
        self.config_file = workdir / f"proxy-{index}.yaml"
        self.config_file.write_text(json.dumps(config))
        self.log_file = workdir / f"proxy-{index}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID=f"AKIDBENCHREFRESH{index}",
            AWS_SECRET_ACCESS_KEY="bench-secret-access-key",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        )
        args = [sys.executable, "-m", "proxy", "--config", str(self.config_file), "--workers", str(setup.workers)]
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=ROOT)
        self.port, self.admin_ports = self._wait_listening(60)

    def _wait_listening(self, timeout: float) -> tuple[int, list[int]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the proxy exited: {self.log_file.read_text()[-2000:]}")
            lines = [json.loads(x) for x in self.log_file.read_text().splitlines() if '"listening"' in x]
            if len(lines) == self.setup.workers:
                return int(lines[0]["port"]), [int(x["admin_port"]) for x in lines]
            time.sleep(0.05)
        raise RuntimeError(f"the proxy did not listen within {timeout} s: {self.log_file.read_text()[-2000:]}")

    def metric(self, name: str) -> float:
        """The sum over the workers of the samples of ``query_signing_proxy_<name>`` (``name{label="x"}``)."""
        total = 0.0
        for port in self.admin_ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                text = resp.read().decode()
            prefix = f"query_signing_proxy_{name}"
            total += sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(prefix + " ") or (
                "{" in name and x.startswith(prefix)))
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ---------------------------------------------------------------------------------------------------------
# the readers


@dataclass
class Reads:
    latencies: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)  # the first read of each secret: a miss everywhere
    errors: int = 0
    late: int = 0  # reads sent after their time, because the previous answer came later


async def read_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bool:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return head.startswith(b"HTTP/1.1 200")


async def steady_reader(
    port: int, secret: str, rate: float, until: float, reconnect: float, reads: Reads, rng: random.Random
) -> None:
    """Reads of ``secret`` at ``rate`` per second until ``until`` (loop time), on a schedule."""
    loop = asyncio.get_running_loop()
    request = (
        f"GET /?Action=GetSecretValue&SecretId={secret}&Version=2017-10-17 HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n\r\n"
    ).encode()
    interval = 1.0 / rate
    at = loop.time() + rng.random() * interval
    first = True
    while at < until:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        reopen = loop.time() + reconnect
        try:
            while at < until and loop.time() < reopen:
                delay = at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    reads.late += 1
                sent = time.perf_counter()
                ok = await read_one(reader, writer, request)
                took = time.perf_counter() - sent
                if not ok:
                    reads.errors += 1
                (reads.first if first else reads.latencies).append(took)
                first = False
                at += interval
        finally:
            writer.close()


async def read_all(ports: list[int], secrets: list[str], rate: float, seconds: float, reconnect: float) -> list[Reads]:
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    results = [Reads() for _ in ports]
    rng = random.Random(16)
    await asyncio.gather(
        *(
            steady_reader(port, secret, rate, until, reconnect, reads, rng)
            for port, reads in zip(ports, results, strict=True)
            for secret in secrets
        )
    )
    return results


# ---------------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="length of the steady reads (default: 600)")
    parser.add_argument("--ttl", type=float, default=30, help="cache.ttl_seconds of the TTL rows (default: 30)")
    parser.add_argument("--secrets", type=int, default=5, help="secrets read (default: 5)")
    parser.add_argument("--rate", type=float, default=10, help="reads per second of each secret (default: 10)")
    parser.add_argument("--upstream-ms", type=float, default=20, help="the upstream's latency (default: 20)")
    parser.add_argument("--reconnect-seconds", type=float, default=5, help="connections reopened (default: 5)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    chosen = setups(args.ttl)
    secrets = [f"bench/refresh-{n}" for n in range(args.secrets)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ca_file, cert_file, key_file = make_certs(workdir)
        ctx = multiprocessing.get_context("spawn")
        counters = ctx.RawArray("q", len(chosen) * len(OPERATIONS))
        port_out = ctx.RawValue("i", 0)
        upstream = ctx.Process(
            target=serve_upstream,
            args=(port_out, counters, len(chosen), cert_file, key_file, args.upstream_ms / 1000),
            daemon=True,
        )
        upstream.start()
        proxies: list[CacheProxy] = []
        try:
            deadline = time.monotonic() + 30
            while not port_out.value:
                if not upstream.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the fake upstream did not start")
                time.sleep(0.02)
            for index, setup in enumerate(chosen):
                proxies.append(CacheProxy(workdir, index, setup, int(port_out.value), ca_file))
            started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            load_before = os.getloadavg()[0]
            try:
                import uvloop

                runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
            except ImportError:
                runner = asyncio.Runner()
            with runner:
                results = runner.run(
                    read_all([p.port for p in proxies], secrets, args.rate, args.seconds, args.reconnect_seconds)
                )
            figures = report(args, proxies, results, counters, started, load_before)
        finally:
            for proxy in proxies:
                proxy.stop()
            if upstream.is_alive() and upstream.pid:
                os.kill(upstream.pid, signal.SIGTERM)
                upstream.join(10)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


def report(
    args: argparse.Namespace,
    proxies: list[CacheProxy],
    results: list[Reads],
    counters: Any,
    started: str,
    load_before: float,
) -> dict[str, Any]:
    rows = []
    for index, (proxy, reads) in enumerate(zip(proxies, results, strict=True)):
        lat = reads.latencies
        calls = {op: int(counters[index * len(OPERATIONS) + n]) for n, op in enumerate(OPERATIONS)}
        refreshes = {
            r: proxy.metric(f'cache_refreshes_total{{result="{r}"}}')
            for r in ("fetched", "unchanged", "adopted", "failed", "discarded")
        }
        rows.append(
            {
                "setup": proxy.setup.name,
                "reads": len(lat),
                "p50_ms": percentile(lat, 0.50) * 1000,
                "p99_ms": percentile(lat, 0.99) * 1000,
                "p999_ms": percentile(lat, 0.999) * 1000,
                "max_ms": max(lat) * 1000 if lat else float("nan"),
                "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan"),
                "waited": sum(1 for x in lat if x >= args.upstream_ms / 1000),
                "first_reads_ms": [round(x * 1000, 1) for x in reads.first],
                "errors": reads.errors,
                "late": reads.late,
                "upstream": calls,
                "misses": proxy.metric("cache_misses_total"),
                "refreshes": refreshes,
            }
        )
    hit = next(r for r in rows if r["setup"] == "hit")
    ttls = args.seconds / args.ttl
    print(
        f"\nRefresh-ahead: {args.seconds:.0f} s of steady reads, {args.secrets} secrets x {args.rate:g} reads/s through "
        f"each proxy, ttl_seconds {args.ttl:g} ({ttls:.1f} TTLs), upstream latency {args.upstream_ms:g} ms; "
        f"started {started}, load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after\n"
    )
    print(
        "| cache | reads | p50 ms | p99 ms | × hit p99 | p99.9 ms | max ms | reads ≥ upstream latency "
        "| upstream GetSecretValue (per secret per TTL) | DescribeSecret | misses after the first | refreshes |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        gets = r["upstream"]["GetSecretValue"]
        per = (gets - args.secrets * (2 if "2 workers" in r["setup"] else 1)) / args.secrets / ttls
        kinds = ", ".join(f"{k} {v:g}" for k, v in r["refreshes"].items() if v)
        print(
            f"| {r['setup']} | {r['reads']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['p99_ms'] / hit['p99_ms']:.2f}× | {r['p999_ms']:.2f} | {r['max_ms']:.1f} | {r['waited']} | "
            f"{gets} ({per:.2f} after the first) | {r['upstream']['DescribeSecret']} | "
            f"{r['misses'] - args.secrets * (2 if '2 workers' in r['setup'] else 1):g} | {kinds or '-'} |"
        )
    late = sum(r["late"] for r in rows)
    errors = sum(r["errors"] for r in rows)
    print(f"\nreads sent late (the previous answer came after the next read's time): {late}; errors: {errors}")
    return {"machine": machine(), "args": vars(args), "started": started, "rows": rows}


if __name__ == "__main__":
    sys.exit(main())
