"""The side-by-side benchmark: direct to a fast fake upstream vs. through the proxy, in one run.

    .venv/bin/python bench/run.py [--seconds 10] [--repeats 2] [--workers N] [--tool wrk|python]
                                  [--profile DIR] [--json FILE]

What it does (docs/benchmarks.md has the figures and the machine they came from):

1. makes a throwaway CA and a certificate for 127.0.0.1 (trustme) and starts the fake upstream
   (:mod:`bench.upstream`) in its own process, TLS on loopback;
2. measures **direct**: the AWS JSON 1.1 GetSecretValue request the proxy would send, straight to the
   upstream over TLS, at 1, 16 and 64 keep-alive connections (and the sts GetCallerIdentity form);
3. starts the proxy as a subprocess (``python -m proxy --config ...``, static keys in the environment, no role;
   a ``routes:`` listener for sts passes awsQuery through) and measures the same loads through it: Query GET
   and form POST GetSecretValue (translated), GetCallerIdentity (passed through); each ``--seconds`` long,
   ``--repeats`` times, the median kept; direct and proxied runs alternate, so that both come from the same
   minutes of a machine shared with others;
4. reads the proxy's CPU time (utime + stime of ``/proc/<pid>/stat``, workers included) per request, its RSS
   after load, the TLS connections the upstream accepted per 1,000 requests at 64 connections, the RSS growth
   of 8 parallel 10 MiB pass-through answers, and what a slow reader makes the proxy hold;
5. prints a Markdown table: every figure also as a ratio to direct.

Load comes from wrk (Debian's ``wrk`` package; installed with apt-get when missing and running as root) or,
without it, from the Python load generator in :mod:`bench.loadgen`, whose own ceiling (plain HTTP, a fixed
answer, 1 connection) is measured and printed so it can be seen not to be the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import procs  # noqa: E402
from bench.loadgen import Load, Result, have_wrk, run  # noqa: E402
from bench.upstream import ACCEPTS, BIG_DONE, BIG_SENT, REQUESTS, UNSIGNED, UpstreamProcess  # noqa: E402

MiB = 1024 * 1024
BIG_BYTES = 10 * MiB
SECRET_QUERY = "Action=GetSecretValue&SecretId=bench%2Fsecret&Version=2017-10-17"
IDENTITY_QUERY = "Action=GetCallerIdentity&Version=2011-06-15"
BIG_FORM = b"Action=GetAccessKeyInfo&Version=2011-06-15&AccessKeyId=AKIAIOSFODNN7EXAMPLE"
FORM = "application/x-www-form-urlencoded"
# what the upstream sees from an SDK or from the proxy (the upstream does not check the signature)
FAKE_AUTH = "AWS4-HMAC-SHA256 Credential=AKIDBENCH/20240101/us-east-1/secretsmanager/aws4_request, SignedHeaders=host;x-amz-date, Signature=0"
CONNECTIONS = (1, 16, 64)


@dataclass
class Row:
    name: str
    connections: int
    rps: float
    p50: float
    p99: float
    errors: int
    cpu_us: float | None = None  # proxy CPU per request (direct: the upstream's)
    upstream_conns_per_1k: float | None = None
    runs: int = 1


def median_row(name: str, connections: int, runs: list[tuple[Result, float | None, float | None]]) -> Row:
    """The median of each figure over the repeats."""

    def med(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return statistics.median(kept) if kept else None

    return Row(
        name=name,
        connections=connections,
        rps=statistics.median(r.rps for r, _, _ in runs),
        p50=statistics.median(r.p50 for r, _, _ in runs),
        p99=statistics.median(r.p99 for r, _, _ in runs),
        errors=sum(r.errors for r, _, _ in runs),
        cpu_us=med([c for _, c, _ in runs]),
        upstream_conns_per_1k=med([u for _, _, u in runs]),
        runs=len(runs),
    )


# ---------------------------------------------------------------------------------------------------------
# set-up


def make_certs(workdir: Path) -> tuple[str, str, str]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = (str(workdir / n) for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(ca_file)
    cert.private_key_pem.write_to_path(key_file)
    with open(cert_file, "wb") as f:
        for pem in cert.cert_chain_pems:
            f.write(pem.bytes())
    return ca_file, cert_file, key_file


def ensure_wrk() -> bool:
    """wrk on PATH, installed from Debian's packages when missing and we are root; False when unavailable."""
    if have_wrk():
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (apt-get install -y wrk) ...", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True)
        if not have_wrk():
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True)
    return have_wrk()


class Proxy:
    """``python -m proxy --config FILE`` with static keys; ports from its ``listening`` log lines."""

    def __init__(
        self, workdir: Path, upstream_port: int, ca_file: str, workers: int, root: Path = ROOT, *, cache: bool = False
    ) -> None:
        upstream = {
            "region": "us-east-1",
            "endpoint_url": f"https://127.0.0.1:{upstream_port}",
            "ca_bundle": ca_file,
        }
        config = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "upstream": {"service": "secretsmanager", **upstream},
            "routes": [
                {
                    "port": 0,
                    "upstream": {"service": "sts", **upstream},
                    "policy": {"allow_actions": ["GetCallerIdentity", "GetAccessKeyInfo"]},  # any other service: named
                }
            ],
        }
        if workers > 1:
            config["admin"] = {"host": "127.0.0.1", "port": 0}  # --workers: each worker's own admin port
        if cache:  # GetSecretValue answers from memory (issue 8's cache), the TTL longer than any run
            config["cache"] = {"enabled": True, "ttl_seconds": 3600}
        name = "proxy-cache" if cache else "proxy"
        self.config_file = workdir / f"{name}.yaml"
        self.config_file.write_text(json.dumps(config))  # JSON is YAML
        self.log_file = workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID="AKIDBENCHEXAMPLE",
            AWS_SECRET_ACCESS_KEY="bench-secret-access-key",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        )
        args = [sys.executable, "-m", "proxy", "--config", str(self.config_file)]
        if workers > 1:
            args += ["--workers", str(workers)]
        with open(self.log_file, "wb") as log:
            # ``python -m proxy`` imports the package in the working directory: ``root`` picks the code measured
            self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=root)
        self.port, self.route_port = self._wait_listening(60)

    def _wait_listening(self, timeout: float) -> tuple[int, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the proxy exited: {self.log_file.read_text()[-2000:]}")
            main = route = 0
            for line in self.log_file.read_text().splitlines():
                if line.startswith("{") and '"listening"' in line:
                    record = json.loads(line)
                    if "route" in record:
                        route = int(record["port"])
                    else:
                        main = int(record["port"])
            if main and route:
                return main, route
            time.sleep(0.05)
        raise RuntimeError(f"the proxy did not listen within {timeout} s: {self.log_file.read_text()[-2000:]}")

    @property
    def pids(self) -> list[int]:
        return procs.tree(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ---------------------------------------------------------------------------------------------------------
# the loads


def secret_direct(port: int, connections: int, seconds: float) -> Load:
    return Load(
        f"https://127.0.0.1:{port}/",
        "POST",
        (
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", "secretsmanager.GetSecretValue"),
            ("X-Amz-Date", "20240101T000000Z"),
            ("Authorization", FAKE_AUTH),
        ),
        b'{"SecretId": "bench/secret"}',
        connections,
        seconds,
    )


def identity_direct(port: int, connections: int, seconds: float) -> Load:
    return Load(
        f"https://127.0.0.1:{port}/",
        "POST",
        (("Content-Type", FORM), ("X-Amz-Date", "20240101T000000Z"), ("Authorization", FAKE_AUTH)),
        IDENTITY_QUERY.encode(),
        connections,
        seconds,
    )


def query_get(port: int, query: str, connections: int, seconds: float) -> Load:
    return Load(f"http://127.0.0.1:{port}/?{query}", "GET", (), b"", connections, seconds)


def query_post(port: int, query: str, connections: int, seconds: float) -> Load:
    return Load(f"http://127.0.0.1:{port}/", "POST", (("Content-Type", FORM),), query.encode(), connections, seconds)


def measure(
    load: Load, tool: str, upstream: UpstreamProcess, pids: list[int]
) -> tuple[Result, float | None, float | None]:
    """One run: the load generator's result, CPU µs per request of ``pids``, and the upstream connections
    opened (TLS accepts) per 1,000 upstream requests from 1 s into the run to its end. The first second is
    left out of that count: when a run ends, the load generator closes its connections with requests in
    flight, the proxy closes those upstream connections (a cancelled request's connection is never reused),
    and the next run opens them again."""
    cpu0 = procs.cpu_seconds(pids)
    counted: list[int] = []
    timer = threading.Timer(1.0, lambda: counted.extend((upstream.count(ACCEPTS), upstream.count(REQUESTS))))
    timer.start()
    result = run(load, tool)
    timer.cancel()
    cpu = procs.cpu_seconds(pids) - cpu0
    accepts0, requests0 = counted or (upstream.count(ACCEPTS), upstream.count(REQUESTS))
    accepts, requests = upstream.count(ACCEPTS) - accepts0, upstream.count(REQUESTS) - requests0
    cpu_us = cpu / result.requests * 1e6 if result.requests else None
    per_1k = accepts / requests * 1000 if requests else None
    return result, cpu_us, per_1k


# ---------------------------------------------------------------------------------------------------------
# streaming: 8 parallel 10 MiB answers, and a slow reader


def _raw_request(port: int, body: bytes, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", port))
    head = (
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {FORM}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


def _read_answer(sock: socket.socket) -> tuple[int, int]:
    """Read a whole answer (until close); returns (status, body bytes)."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    size = len(rest)
    while True:
        chunk = sock.recv(1024 * 1024)
        if not chunk:
            break
        size += len(chunk)
    sock.close()
    return status, size


def parallel_big(proxy: Proxy, upstream: UpstreamProcess, count: int = 8) -> dict[str, Any]:
    """``count`` parallel 10 MiB pass-through answers read as fast as possible: peak RSS growth of the proxy.

    A warm-up of ``count`` parallel 1 MiB answers comes first, so that the growth measured is the answers'
    size showing (or not), not the first use of ``count`` upstream connections and their buffers."""
    warm = f"Action=GetAccessKeyInfo&Version=2011-06-15&AccessKeyId=AKIASIZE{MiB:08d}".encode()
    threads = [
        threading.Thread(target=lambda: _read_answer(_raw_request(proxy.route_port, warm))) for _ in range(count)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pids = proxy.pids
    before = {pid: procs.status_kib(pid, "VmRSS") for pid in pids}
    exact = procs.reset_peaks(pids)
    done0 = upstream.count(BIG_DONE)
    results: list[tuple[int, int]] = []
    peak = [0]
    stop = threading.Event()

    def sample() -> None:  # when clear_refs is not allowed: poll VmRSS
        while not stop.is_set():
            peak[0] = max(peak[0], sum(max(0, procs.status_kib(p, "VmRSS") - before[p]) for p in pids))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    threads = [
        threading.Thread(target=lambda: results.append(_read_answer(_raw_request(proxy.route_port, BIG_FORM))))
        for _ in range(count)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    growth = procs.peak_growth_kib(pids, before) if exact else peak[0]
    return {
        "answers": count,
        "ok": sum(1 for status, size in results if status == 200 and size >= BIG_BYTES),
        "upstream_finished": upstream.count(BIG_DONE) - done0,
        "seconds": elapsed,
        "rss_growth_kib": growth,
        "peak_method": "VmHWM after clear_refs" if exact else "VmRSS sampled every 10 ms",
    }


def slow_reader(proxy: Proxy, upstream: UpstreamProcess, tool: str, seconds: float = 4.0) -> dict[str, Any]:
    """One client reads a 10 MiB answer at 1 MiB/s while 16 connections read secrets: what the proxy holds,
    how far the upstream ran ahead of the client, and the others' throughput meanwhile."""
    pids = proxy.pids
    before = {pid: procs.status_kib(pid, "VmRSS") for pid in pids}
    procs.reset_peaks(pids)
    sent0 = upstream.count(BIG_SENT)
    sock = _raw_request(proxy.route_port, BIG_FORM, rcvbuf=64 * 1024)
    read = 0
    meanwhile: list[Result] = []
    other = threading.Thread(
        target=lambda: meanwhile.append(run(query_get(proxy.port, SECRET_QUERY, 16, seconds - 1), tool))
    )
    other.start()
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        chunk = sock.recv(16 * 1024)
        if not chunk:
            break
        read += len(chunk)
        time.sleep(16 * 1024 / MiB)  # ~1 MiB/s
    other.join()
    ahead = upstream.count(BIG_SENT) - sent0 - read
    growth = procs.peak_growth_kib(pids, before)
    sock.close()
    return {
        "client_read_kib": read // 1024,
        "upstream_ahead_kib": max(0, ahead) // 1024,  # in the proxy and the kernel's socket buffers
        "rss_growth_kib": growth,
        "others_rps": meanwhile[0].rps if meanwhile else None,
        "others_p99_ms": meanwhile[0].p99 * 1e3 if meanwhile else None,
    }


# ---------------------------------------------------------------------------------------------------------
# report


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // 1024
    versions = {}
    for name in ("aiohttp", "botocore", "uvloop"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = "-"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        **versions,
    }


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}×"


def table(direct: dict[tuple[str, int], Row], proxied: list[Row]) -> str:
    lines = [
        "| load | conns | req/s | × direct | p50 ms | × direct | p99 ms | × direct | CPU µs/req | × direct | "
        "upstream conns /1k req (after 1 s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in direct.values():
        lines.append(
            f"| direct: {row.name} | {row.connections} | {row.rps:.0f} | 1.00× | {row.p50 * 1e3:.2f} | 1.00× | "
            f"{row.p99 * 1e3:.2f} | 1.00× | {row.cpu_us or 0:.0f} (upstream) | 1.00× | - |"
        )
    for row in proxied:
        base = direct[("identity" if "GetCallerIdentity" in row.name else "secret", row.connections)]
        per_1k = f"{row.upstream_conns_per_1k:.2f}" if row.upstream_conns_per_1k is not None else "-"
        lines.append(
            f"| proxy: {row.name} | {row.connections} | {row.rps:.0f} | {_ratio(row.rps, base.rps)} | "
            f"{row.p50 * 1e3:.2f} | {_ratio(row.p50, base.p50)} | {row.p99 * 1e3:.2f} | {_ratio(row.p99, base.p99)} | "
            f"{row.cpu_us or 0:.0f} | {_ratio(row.cpu_us, base.cpu_us)} | {per_1k} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run (default 10)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per load; the median is reported (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="the proxy's --workers (default 1)")
    parser.add_argument("--tool", choices=("wrk", "python"), help="load generator (default: wrk when available)")
    parser.add_argument("--profile", metavar="DIR", help="py-spy record the proxy during the 64-connection GET run")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument(
        "--proxy-root",
        metavar="DIR",
        type=Path,
        default=ROOT,
        help="measure the proxy package of another checkout (e.g. a worktree of main, for before/after figures)",
    )
    parser.add_argument("--skip-direct", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    tool = args.tool or ("wrk" if ensure_wrk() else "python")
    info = machine()
    load_before = os.getloadavg()
    steal_before = procs.cpu_times()
    workdir = Path(tempfile.mkdtemp(prefix="qsp-bench-"))
    ca_file, cert_file, key_file = make_certs(workdir)
    upstream = UpstreamProcess(cert_file, key_file, BIG_BYTES)
    proxy: Proxy | None = None
    cached: Proxy | None = None
    report: dict[str, Any] = {
        "machine": info,
        "tool": tool,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "workers": args.workers,
        "proxy_root": str(args.proxy_root),
    }
    try:
        print(f"load generator: {tool}; upstream pid {upstream.pid}, port {upstream.port}", file=sys.stderr)
        ceiling = run(query_post(upstream.plain_port, "Action=GetCallerIdentity", 1, min(args.seconds, 5.0)), tool)
        report["loadgen_ceiling_rps"] = ceiling.rps
        print(f"  load generator ceiling (plain HTTP, fixed answer, c=1): {ceiling.rps:.0f} req/s", file=sys.stderr)
        up_pids = [upstream.pid]
        proxy = Proxy(workdir, upstream.port, ca_file, args.workers, args.proxy_root)
        print(f"proxy pids {proxy.pids}, port {proxy.port}, sts route port {proxy.route_port}", file=sys.stderr)
        run(query_get(proxy.port, SECRET_QUERY, 64, 2.0), tool)  # warm-up: imports, first connections
        pids = proxy.pids
        # a second proxy with the cache on, for the cached rows (the first one's rows must reach the upstream)
        cached = Proxy(workdir, upstream.port, ca_file, args.workers, args.proxy_root, cache=True)
        run(query_get(cached.port, SECRET_QUERY, 64, 2.0), tool)
        cached_pids, cached_port = cached.pids, cached.port
        unsigned0 = upstream.count(UNSIGNED)
        port, route_port = proxy.port, proxy.route_port
        # (direct key or None, name, load, processes whose CPU is counted); run interleaved, so that direct and
        # proxied figures of one connection count come from the same minutes of a shared machine
        loads: list[tuple[str | None, str, Any, list[int]]] = [
            ("secret", "GetSecretValue (JSON 1.1)", lambda c, s: secret_direct(upstream.port, c, s), up_pids),
            (None, "GetSecretValue, Query GET", lambda c, s: query_get(port, SECRET_QUERY, c, s), pids),
            (None, "GetSecretValue, Query POST", lambda c, s: query_post(port, SECRET_QUERY, c, s), pids),
            (
                None,
                "GetSecretValue, Query GET, cache on",
                lambda c, s: query_get(cached_port, SECRET_QUERY, c, s),
                cached_pids,
            ),
            ("identity", "GetCallerIdentity (awsQuery)", lambda c, s: identity_direct(upstream.port, c, s), up_pids),
            (
                None,
                "GetCallerIdentity, pass-through GET",
                lambda c, s: query_get(route_port, IDENTITY_QUERY, c, s),
                pids,
            ),
        ]
        direct: dict[tuple[str, int], Row] = {}
        proxied: list[Row] = []
        for connections in CONNECTIONS:
            runs: dict[str, list[tuple[Result, float | None, float | None]]] = {name: [] for _, name, _, _ in loads}
            for _ in range(args.repeats):
                for _, name, make, measured in loads:
                    runs[name].append(measure(make(connections, args.seconds), tool, upstream, measured))
            for key, name, _, _ in loads:
                row = median_row(name, connections, runs[name])
                print(
                    f"  {name:<36} c={connections:<3} {row.rps:>8.0f} req/s  p50 {row.p50 * 1e3:6.2f} ms  "
                    f"p99 {row.p99 * 1e3:6.2f} ms  errors {row.errors}",
                    file=sys.stderr,
                )
                if key is not None:
                    direct[(key, connections)] = row
                else:
                    proxied.append(row)
        order = [name for key, name, _, _ in loads if key is None]
        proxied.sort(key=lambda row: (order.index(row.name), row.connections))
        direct = dict(sorted(direct.items(), key=lambda item: (item[0][0] != "secret", item[0][1])))
        direct_rss = procs.rss_kib(up_pids)
        if args.profile:
            report["profile"] = profile(proxy, tool, Path(args.profile), args.seconds)
        rss_after = procs.rss_kib(pids)
        pss_after = procs.pss_kib(pids)
        big = parallel_big(proxy, upstream)
        slow = slow_reader(proxy, upstream, tool)
        report.update(
            direct=[asdict(r) for r in direct.values()],
            proxied=[asdict(r) for r in proxied],
            unsigned_upstream_requests=upstream.count(UNSIGNED) - unsigned0,
            proxy_processes=len(pids),
            rss_after_load_kib=rss_after,
            pss_after_load_kib=pss_after,
            upstream_rss_kib=direct_rss,
            parallel_big=big,
            slow_reader=slow,
        )
    finally:
        for started in (proxy, cached):
            if started is not None:
                started.stop()
        upstream.stop()
    report["loadavg_before"], report["loadavg_after"] = load_before, os.getloadavg()
    steal_after = procs.cpu_times()
    report["steal_percent"] = 100 * (steal_after[0] - steal_before[0]) / max(1, steal_after[1] - steal_before[1])
    print_report(report, direct, proxied)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def print_report(report: dict[str, Any], direct: dict[tuple[str, int], Row], proxied: list[Row]) -> None:
    m = report["machine"]
    big, slow = report["parallel_big"], report["slow_reader"]
    print(
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mib']} MiB; Linux {m['kernel']}; Python {m['python']}, "
        f"aiohttp {m['aiohttp']}, botocore {m['botocore']}, uvloop {m['uvloop']}.  "
        f"Load average before/after: {' '.join(f'{x:.2f}' for x in report['loadavg_before'])} / "
        f"{' '.join(f'{x:.2f}' for x in report['loadavg_after'])}; CPU steal (time the host gave to other VMs) "
        f"{report['steal_percent']:.1f}%.  "
        f"Load generator: {report['tool']} (its ceiling, plain HTTP c=1: {report['loadgen_ceiling_rps']:.0f} req/s); "
        f"{report['seconds']:g} s per run, median of {report['repeats']}; proxy processes: {report['proxy_processes']}."
    )
    print()
    print(table(direct, proxied))
    print()
    print("| memory and streaming | figure | × direct |")
    print("|---|---:|---:|")
    rss = report["rss_after_load_kib"] / 1024
    print(
        f"| proxy RSS after load (all processes; PSS {report['pss_after_load_kib'] / 1024:.1f} MiB) | {rss:.1f} MiB | "
        f"{_ratio(report['rss_after_load_kib'], report['upstream_rss_kib'])} |"
    )
    print(
        f"| 8 parallel 10 MiB pass-through answers: RSS growth ({big['peak_method']}; {big['ok']}/8 complete, "
        f"{big['seconds']:.2f} s) | {big['rss_growth_kib'] / 1024:.2f} MiB | - |"
    )
    print(
        f"| slow reader (1 MiB/s, {slow['client_read_kib']} KiB read): RSS growth | "
        f"{slow['rss_growth_kib'] / 1024:.2f} MiB | - |"
    )
    print(
        f"| slow reader: upstream bytes ahead of the client (proxy + socket buffers) | {slow['upstream_ahead_kib']} KiB | - |"
    )
    if slow["others_rps"] is not None:
        base = direct[("secret", 16)].rps
        print(
            f"| meanwhile, GetSecretValue GET at 16 connections | {slow['others_rps']:.0f} req/s, "
            f"p99 {slow['others_p99_ms']:.2f} ms | {_ratio(slow['others_rps'], base)} |"
        )
    print(f"| upstream requests without a SigV4 Authorization header | {report['unsigned_upstream_requests']} | - |")


def profile(proxy: Proxy, tool: str, out: Path, seconds: float) -> dict[str, Any]:
    """py-spy record (collapsed stacks) of every proxy process during a 64-connection GET run."""
    out.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    files = []
    recorders = []
    for pid in proxy.pids:
        target = out / f"proxy-{pid}.txt"
        files.append(str(target))
        recorders.append(
            subprocess.Popen(
                [spy, "record", "-p", str(pid), "-d", f"{seconds:g}", "-r", "250", "-f", "raw", "-o", str(target)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    time.sleep(0.5)
    result = run(query_get(proxy.port, SECRET_QUERY, 64, seconds - 1), tool)
    for r in recorders:
        r.wait(seconds + 30)
    return {"files": files, "rps_while_profiled": result.rps}


if __name__ == "__main__":
    sys.exit(main())
