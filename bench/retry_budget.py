"""The retry budget under an upstream that throttles every call (issue 13, item 5). A script, not a test.

    python -m bench.retry_budget [--rate 200] [--seconds 60] [--max-attempts 3]

Runs the real CLI (``python -m proxy --config ...``) as a child process against a fault upstream on loopback
over TLS (tests/faults.py: an aiohttp server with a throwaway trustme CA) that answers every call with
Secrets Manager's ``ThrottlingException`` (400). An open-loop load sends Query ``GetSecretValue`` requests at a
fixed rate (``--rate`` per second for ``--seconds``), whatever the answers and however long they take: each
request is sent at its own time on a fresh task, as callers that keep their rate do. The proxy runs with its
defaults (``upstream.max_attempts`` 3, backoff with jitter, one retry budget of 500 tokens).

Reported: upstream calls per client request over the whole run, per 5-second window (by the time a request
was sent and a call received), and from the moment the budget's gauge (``query_signing_proxy_retry_quota_tokens``,
sampled every 0.2 s) first read 0; refused retries; the client's answers and latencies. Without a budget the
upstream would get ``--max-attempts`` calls per request. Exits 1 when the figure after the bucket is empty is
above 1.1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.faults import Certs, FaultServer, MeasuredProxy, throttle

TARGET = "/?Action=GetSecretValue&SecretId=app%2Fdb&Version=2017-10-17"
WINDOW_SECONDS = 5.0
LIMIT_AFTER_EMPTY = 1.1


@dataclass
class Run:
    """What the load saw: per request its send time (monotonic), status and latency (seconds)."""

    sent: list[float] = field(default_factory=list)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    tokens: list[tuple[float, float]] = field(default_factory=list)  # (monotonic time, gauge)


def gauge(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def sample_tokens(session: aiohttp.ClientSession, url: str, run: Run, stop: asyncio.Event) -> None:
    while not stop.is_set():
        async with session.get(f"{url}/metrics") as resp:
            text = await resp.text()
        run.tokens.append((time.monotonic(), gauge(text, "query_signing_proxy_retry_quota_tokens")))
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except TimeoutError:
            pass


async def load(url: str, rate: float, seconds: float, run: Run) -> None:
    """Send ``rate`` requests per second for ``seconds``, each at its own time, never waiting for answers."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_tokens(session, url, run, stop))

        async def one() -> None:
            started = time.monotonic()
            run.sent.append(started)
            try:
                async with session.get(f"{url}{TARGET}") as resp:
                    await resp.read()
                    run.statuses[resp.status] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                run.errors[type(exc).__name__] += 1
            run.latencies.append(time.monotonic() - started)

        tasks = []
        start = time.monotonic()
        total = int(rate * seconds)
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        stop.set()
        await sampler


def per_request(calls: list[float], sent: list[float], since: float, until: float) -> tuple[int, int, float]:
    """(upstream calls received, client requests sent, their ratio) in ``[since, until)``."""
    n_calls = sum(1 for t in calls if since <= t < until)
    n_sent = sum(1 for t in sent if since <= t < until)
    return n_calls, n_sent, (n_calls / n_sent if n_sent else float("nan"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retry_budget", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="client requests per second (open loop)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-attempts", type=int, default=3, help="upstream.max_attempts")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="retry-budget-"))
    certs = Certs(workdir)
    with FaultServer(throttle(), certs.server_context()) as fault:
        config = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "upstream": {"region": "us-east-1", "endpoint_url": fault.url, "ca_bundle": certs.ca_file}
            | {"max_attempts": args.max_attempts},
            "policy": {"allow_actions": ["GetSecretValue"]},
        }
        with MeasuredProxy(workdir, config) as proxy:
            url = f"http://127.0.0.1:{proxy.port}"
            run = Run()
            began = time.monotonic()
            asyncio.run(load(url, args.rate, args.seconds, run))
            ended = time.monotonic()
            import urllib.request

            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
                metrics = resp.read().decode()
        calls = [seen.received for seen in fault.seen]

    refused = gauge(metrics, "query_signing_proxy_retries_refused_total")
    empty_at = next((t for t, tokens in run.tokens if tokens == 0), None)
    n_calls, n_sent = len(calls), len(run.sent)
    lat = sorted(run.latencies)
    print(
        f"load            {n_sent} requests at {args.rate:g}/s for {args.seconds:g} s (open loop), "
        f"upstream.max_attempts {args.max_attempts}; answered in {ended - began:.1f} s"
    )
    print(f"answers         {dict(sorted(run.statuses.items()))} errors {dict(run.errors)}")
    print(
        f"latency         p50 {statistics.median(lat) * 1000:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms, "
        f"max {lat[-1] * 1000:.0f} ms"
    )
    print(f"upstream calls  {n_calls}: {n_calls / n_sent:.3f} per client request over the run")
    print(f"retries refused {refused:.0f}; without a budget: up to {args.max_attempts:.0f} calls per request")
    failures = []
    if empty_at is None:
        failures.append("the retry budget's gauge never read 0")
    else:
        after = per_request(calls, run.sent, empty_at, float("inf"))
        print(
            f"bucket empty    {empty_at - began:.2f} s into the run; from then: {after[0]} calls for {after[1]} "
            f"requests = {after[2]:.3f} per request (limit {LIMIT_AFTER_EMPTY})"
        )
        if not after[2] <= LIMIT_AFTER_EMPTY:
            failures.append(f"{after[2]:.3f} upstream calls per request after the bucket emptied")
    print("window (s)      calls  requests  calls/request")
    t = began
    while t < ended:
        window = per_request(calls, run.sent, t, t + WINDOW_SECONDS)
        print(
            f"{t - began:5.0f}-{t - began + WINDOW_SECONDS:<5.0f}     {window[0]:6d}  {window[1]:8d}  {window[2]:8.3f}"
        )
        t += WINDOW_SECONDS
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else "FAIL")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
