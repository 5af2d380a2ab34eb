"""A bounded soak of the proxy under load with injected upstream faults (issue 5). A script, not a test.

    python -m bench.soak [--requests 20000] [--connections 64] [--fault-rate 0.01] [--abort-rate 0.002]

Runs the real CLI (``python -m proxy --config ...``) as a child process against a fault upstream on loopback
over TLS (tests/faults.py: an aiohttp server with a throwaway trustme CA), and drives it with an aiohttp
client over ``--connections`` keep-alive connections. A share ``--fault-rate`` of upstream requests
misbehaves (throttling, 503 with HTML, a reset mid-body, a stalled answer, a final error, a body that is not
JSON, an answer over ``limits.max_response_bytes``); a share ``--abort-rate`` of clients gives up
mid-request. Checks: every answer is well-formed XML with one request id in header and body, the proxy
never answers 500, and its open file descriptors and RSS are flat between a warm-up and the end.
Prints the figures; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import statistics
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.faults import (
    Behaviour,
    Certs,
    FaultServer,
    MeasuredProxy,
    Seen,
    answer,
    list_secrets_document,
    never,
    reset_mid_body,
    secret_value,
    throttle,
)
from tests.support import poll

MB = 1024 * 1024
MAX_RESPONSE_BYTES = 256 * 1024
TARGETS = [
    ("GET", "/?Action=GetSecretValue&SecretId=app%2Fdb&Version=2017-10-17", None),
    ("GET", "/?Action=ListSecrets&MaxResults=20&Version=2017-10-17", None),
    ("POST", "/", "Action=DescribeSecret&SecretId=app%2Fdb&Version=2017-10-17"),
]


def fault_kinds() -> dict[str, Behaviour]:
    big = list_secrets_document(400)  # over MAX_RESPONSE_BYTES
    return {
        "throttle": throttle(),
        "503-html": answer(503, "<html><body><h1>503 Service Unavailable</h1></body></html>", content_type="text/html"),
        "reset": reset_mid_body(),
        "stall": never(),
        "not-found": answer(400, {"__type": "ResourceNotFoundException", "message": "no such secret"}),
        "not-json": answer(200, "<html>captive portal</html>", content_type="text/html"),
        "too-large": answer(200, big),
    }


def upstream(rng: random.Random, fault_rate: float, injected: collections.Counter[str]) -> Behaviour:
    kinds = fault_kinds()
    names = sorted(kinds)
    good = {
        "GetSecretValue": answer(200, secret_value()),
        "ListSecrets": answer(200, list_secrets_document(20)),
        "DescribeSecret": answer(
            200, {"ARN": secret_value()["ARN"], "Name": "app/db", "Tags": [{"Key": "team", "Value": "payments"}]}
        ),
    }

    async def behave(request: web.Request, seen: Seen) -> web.StreamResponse:
        if rng.random() < fault_rate:
            kind = rng.choice(names)
            injected[kind] += 1
            return await kinds[kind](request, seen)
        return await good[seen.operation](request, seen)

    return behave


class Tally:
    def __init__(self) -> None:
        self.statuses: collections.Counter[int] = collections.Counter()
        self.codes: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        self.aborted = 0
        self.latencies: list[float] = []

    def check(self, status: int, headers: Any, body: bytes) -> None:
        self.statuses[status] += 1
        if status == 500:
            self.problems.append(f"500: {body[:200]!r}")
        if not headers.get("Content-Type", "").startswith("text/xml"):
            self.problems.append(f"{status} with Content-Type {headers.get('Content-Type')}")
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError as exc:
            self.problems.append(f"{status}: not XML ({exc}): {body[:200]!r}")
            return
        request_id = root.findtext(".//{*}RequestId") or root.findtext("RequestId")
        if not request_id or request_id != headers.get("x-amzn-RequestId"):
            self.problems.append(f"{status}: request id {request_id!r} vs header {headers.get('x-amzn-RequestId')!r}")
        if root.tag == "ErrorResponse":
            self.codes[root.findtext("Error/Code") or "?"] += 1


async def drive(port: int, total: int, connections: int, abort_rate: float, rng: random.Random, tally: Tally) -> None:
    """``total`` requests from ``connections`` workers; a share ``abort_rate`` is abandoned mid-request."""
    base = f"http://127.0.0.1:{port}"
    remaining = iter(range(total))
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one(method: str, target: str, form: str | None) -> None:
            headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else None
            started = time.perf_counter()
            async with session.request(method, base + target, data=form, headers=headers) as resp:
                body = await resp.read()
            tally.latencies.append(time.perf_counter() - started)
            tally.check(resp.status, resp.headers, body)

        async def worker() -> None:
            for _ in remaining:
                method, target, form = rng.choice(TARGETS)
                if rng.random() < abort_rate:
                    try:
                        async with asyncio.timeout(rng.uniform(0.0005, 0.01)):
                            await one(method, target, form)
                    except TimeoutError:
                        tally.aborted += 1
                    continue
                await one(method, target, form)

        await asyncio.gather(*(worker() for _ in range(connections)))


def in_flight(proxy: MeasuredProxy) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith("query_signing_proxy_requests_in_flight "):
            return float(line.split()[1])
    raise RuntimeError("no in-flight gauge in /metrics")


def settle(proxy: MeasuredProxy) -> tuple[int, int]:
    """Wait for the proxy to be idle; its (RSS bytes, open fds)."""
    poll(lambda: in_flight(proxy) == 0, 30, "the proxy to be idle")
    return proxy.rss_bytes(), proxy.open_fds()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--fault-rate", type=float, default=0.01, help="share of upstream requests that misbehave")
    parser.add_argument("--abort-rate", type=float, default=0.002, help="share of clients that give up mid-request")
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    injected: collections.Counter[str] = collections.Counter()
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    certs = Certs(workdir)
    with FaultServer(upstream(random.Random(args.seed + 1), 0.0, injected), certs.server_context()) as fault:
        config = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "upstream": {
                "region": "us-east-1",
                "endpoint_url": fault.url,
                "ca_bundle": certs.ca_file,
                "connect_timeout_seconds": 1,
                "read_timeout_seconds": 1,
                "total_timeout_seconds": 4,
            },
            "limits": {"max_response_bytes": MAX_RESPONSE_BYTES},
            "policy": {"allow_actions": ["GetSecretValue", "ListSecrets", "DescribeSecret"]},
        }
        with MeasuredProxy(workdir, config) as proxy:
            warm = Tally()
            asyncio.run(drive(proxy.port, args.warmup, args.connections, 0.0, rng, warm))
            rss_before, fds_before = settle(proxy)
            fault.behaviour = upstream(random.Random(args.seed + 2), args.fault_rate, injected)
            seen_before = len(fault.seen)
            tally = Tally()
            started = time.monotonic()
            asyncio.run(drive(proxy.port, args.requests, args.connections, args.abort_rate, rng, tally))
            elapsed = time.monotonic() - started
            rss_after, fds_after = settle(proxy)
            peak = proxy.peak_rss_bytes()
            upstream_requests = len(fault.seen) - seen_before
            lines = [line for line in proxy.access_lines()]

    answered = sum(tally.statuses.values())
    lat = sorted(tally.latencies)
    failures = list(tally.problems[:10])
    if warm.problems:
        failures.append(f"warm-up: {warm.problems[0]}")
    if answered + tally.aborted != args.requests:
        failures.append(f"{args.requests} requests, {answered} answered + {tally.aborted} aborted")
    if rss_after - rss_before > 16 * MB:
        failures.append(f"RSS grew {(rss_after - rss_before) / MB:.1f} MB")
    if fds_after > fds_before + 4:
        failures.append(f"open fds {fds_before} -> {fds_after}")
    print(
        f"requests        {args.requests} at {args.connections} connections in {elapsed:.1f} s "
        f"({args.requests / elapsed:.0f}/s); {tally.aborted} abandoned by their client"
    )
    print(f"statuses        {dict(sorted(tally.statuses.items()))}")
    print(f"error codes     {dict(tally.codes.most_common())}")
    print(
        f"upstream        {upstream_requests} requests; faults injected {sum(injected.values())}: "
        f"{dict(sorted(injected.items()))}"
    )
    print(
        f"latency         p50 {statistics.median(lat) * 1000:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms, "
        f"max {lat[-1] * 1000:.0f} ms"
    )
    print(f"access lines    {len(lines)} (499: {sum(1 for line in lines if line['status'] == 499)})")
    print(
        f"RSS             {rss_before / MB:.1f} MB after warm-up -> {rss_after / MB:.1f} MB after "
        f"(high-water {peak / MB:.1f} MB)"
    )
    print(f"open fds        {fds_before} -> {fds_after}")
    print(f"problems        {len(tally.problems)} (500s: {tally.statuses.get(500, 0)})")
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else "FAIL")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
