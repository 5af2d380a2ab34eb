"""``--workers N`` (docs/interface.md, "Command line"): the real CLI in a child process; N workers share the Query port
(SO_REUSEPORT), each with its own admin port, stop together on SIGTERM, and one that dies stops the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from tests.faults import delayed, ok, proxy_environ
from tests.process import ProxyProcess
from tests.support import poll, raw_request

GET = "/?Action=GetSecretValue&SecretId=app%2Fdb&Version=2017-10-17"


def config_file(tmp_path: Path, url: str, ca_file: str, **extra: Any) -> str:
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstream": {"region": "us-east-1", "endpoint_url": url, "ca_bundle": ca_file},
    }
    data.update(extra)
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def listening(proxy: ProxyProcess) -> list[dict[str, Any]]:
    return [line for line in proxy.lines() if line.get("message") == "listening" and "route" not in line]


def metric_sum(admin_port: int, prefix: str) -> float:
    """The sum of the samples of a metric (``prefix`` is the name and perhaps ``{``) on one worker's admin port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def requests_counted(admin_port: int) -> float:
    return metric_sum(admin_port, "query_signing_proxy_requests_total{")


def run_proxy(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m proxy *args`` to its end (a refusal at start-up), output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], env=proxy_environ(), capture_output=True, text=True, timeout=60
    )


def test_workers_share_the_port_each_with_its_own_admin_port(start_fault, certs, tmp_path):
    fault = start_fault(ok())
    path = config_file(tmp_path, fault.url, certs.ca_file)
    with ProxyProcess(["--config", path, "--workers", "2"], tmp_path, proxy_environ()) as proxy:
        lines = poll(lambda: len(listening(proxy)) == 2 and listening(proxy), 30, "two workers to listen")
        assert sorted(line["worker"] for line in lines) == [0, 1]
        assert len({line["port"] for line in lines}) == 1  # one Query port
        assert len({line["pid"] for line in lines}) == 2 and proxy.process is not None
        assert all(line["pid"] != proxy.process.pid for line in lines)  # the parent only supervises
        port, admin_ports = lines[0]["port"], [line["admin_port"] for line in lines]
        assert len(set(admin_ports)) == 2
        for admin_port in admin_ports:  # ready once each worker holds its credentials (fetched after listening)
            proxy.wait_status(f"http://127.0.0.1:{admin_port}/readyz", 200)
        statuses = [raw_request(port, "GET", GET, timeout=10).status for _ in range(40)]  # 40 connections
        assert statuses == [200] * 40
        per_worker = [requests_counted(p) for p in admin_ports]
        assert sum(per_worker) == 40 and all(n > 0 for n in per_worker)  # the kernel spread them
        assert proxy.stop() == 0
        for line in lines:
            poll(lambda pid=line["pid"]: not Path(f"/proc/{pid}").exists(), 10, "the workers to exit")


def test_a_worker_that_dies_stops_the_others(start_fault, certs, tmp_path):
    fault = start_fault(ok())
    path = config_file(tmp_path, fault.url, certs.ca_file)
    with ProxyProcess(["--config", path, "--workers", "2"], tmp_path, proxy_environ()) as proxy:
        lines = poll(lambda: len(listening(proxy)) == 2 and listening(proxy), 30, "two workers to listen")
        survivor, killed = (line["pid"] for line in sorted(lines, key=lambda line: line["worker"]))
        os.kill(killed, signal.SIGKILL)
        assert proxy.process is not None
        assert proxy.process.wait(20) != 0  # not a clean shutdown: the container is restarted
        poll(lambda: not Path(f"/proc/{survivor}").exists(), 10, "the other worker to exit")


def test_workers_stop_when_the_parent_is_killed(start_fault, certs, tmp_path):
    """SIGKILL of the parent (the OOM killer, kill -9 outside a container): no worker goes on serving."""
    fault = start_fault(ok())
    path = config_file(tmp_path, fault.url, certs.ca_file)
    with ProxyProcess(["--config", path, "--workers", "2"], tmp_path, proxy_environ()) as proxy:
        lines = poll(lambda: len(listening(proxy)) == 2 and listening(proxy), 30, "two workers to listen")
        assert raw_request(lines[0]["port"], "GET", GET, timeout=10).status == 200
        assert proxy.process is not None
        os.kill(proxy.process.pid, signal.SIGKILL)
        proxy.process.wait(10)
        for line in lines:
            poll(lambda pid=line["pid"]: not Path(f"/proc/{pid}").exists(), 30, "the workers to exit")


def test_workers_need_their_own_admin_ports(start_fault, certs, tmp_path):
    fault = start_fault(ok())
    path = config_file(tmp_path, fault.url, certs.ca_file, admin={"host": None, "port": 8978})
    done = run_proxy("--config", path, "--workers", "2")
    assert done.returncode == 2
    assert "admin.host" in done.stderr and "--workers" in done.stderr


def test_workers_must_be_a_small_positive_number(tmp_path):
    for bad in ("0", "-1", "two", "65"):
        done = run_proxy("--workers", bad)
        assert done.returncode == 2 and "--workers" in done.stderr


def children_of(pid: int) -> list[int]:
    """The live children of ``pid`` (``/proc/<pid>/task/<pid>/children``; empty once it has exited)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def test_a_port_another_proxy_serves_is_refused(start_fault, certs, tmp_path):
    """Workers bind with SO_REUSEPORT, which the kernel lets any process of the same user join: a second proxy
    started on the port of a running one must exit 1 naming the port, not share its connections silently."""
    fault = start_fault(ok())
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    path = config_file(first_dir, fault.url, certs.ca_file)
    with ProxyProcess(["--config", path, "--workers", "2"], first_dir, proxy_environ()) as first:
        lines = poll(lambda: len(listening(first)) == 2 and listening(first), 30, "two workers to listen")
        port = lines[0]["port"]
        taken = config_file(second_dir, fault.url, certs.ca_file, listen={"host": "127.0.0.1", "port": port})
        for workers in ("2", "1"):
            done = run_proxy("--config", taken, "--workers", workers)
            assert done.returncode == 1, done.stderr[-2000:]
            assert f"127.0.0.1:{port}" in done.stderr and "in use" in done.stderr
        assert [raw_request(port, "GET", GET, timeout=10).status for _ in range(10)] == [200] * 10
        assert first.stop() == 0


def test_sigterm_while_the_workers_are_forked_stops_them_all(start_fault, certs, tmp_path):
    """A SIGTERM that reaches the parent between two forks must stop the workers forked after it too, and one
    that reaches a worker before its event loop handles it must still drain it (exit 0, not -15)."""
    fault = start_fault(ok())
    path = config_file(tmp_path, fault.url, certs.ca_file)
    with ProxyProcess(["--config", path, "--workers", "12"], tmp_path, proxy_environ()) as proxy:
        assert proxy.process is not None
        parent = proxy.process.pid
        seen = poll(lambda: children_of(parent), 60, "the first worker to be forked", interval=0.001)
        proxy.process.send_signal(signal.SIGTERM)
        assert proxy.process.wait(30) == 0, proxy.log_path.read_text()[-3000:]
        for pid in seen:
            poll(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 10, "the workers to exit")


def test_sigterm_lets_the_requests_in_flight_in_every_worker_finish(start_fault, certs, tmp_path):
    fault = start_fault(delayed(2.0, ok()))
    path = config_file(tmp_path, fault.url, certs.ca_file, shutdown_grace_seconds=20)
    with ProxyProcess(["--config", path, "--workers", "2"], tmp_path, proxy_environ()) as proxy:
        lines = poll(lambda: len(listening(proxy)) == 2 and listening(proxy), 30, "two workers to listen")
        port, admin_ports = lines[0]["port"], [line["admin_port"] for line in lines]
        with ThreadPoolExecutor(12) as pool:
            answers = [pool.submit(raw_request, port, "GET", GET, timeout=30) for _ in range(12)]
            poll(lambda: len(fault.seen) == 12, 20, "twelve requests to reach the upstream")
            in_flight = [metric_sum(p, "query_signing_proxy_requests_in_flight ") for p in admin_ports]
            assert sum(in_flight) == 12 and all(n > 0 for n in in_flight)  # both workers hold some
            assert proxy.process is not None
            proxy.process.send_signal(signal.SIGTERM)
            results = [a.result() for a in answers]
        assert [r.status for r in results] == [200] * 12
        assert all(b"s3cr3t" in r.body for r in results)
        assert proxy.process.wait(30) == 0


def test_worker_admin_ports_past_65535_or_on_the_query_port_are_config_errors(start_fault, certs, tmp_path):
    fault = start_fault(ok())
    query_port = 40000
    for admin, needle in ((65534, "past 65535"), (query_port - 1, "listen.port")):
        path = config_file(
            tmp_path,
            fault.url,
            certs.ca_file,
            listen={"host": "127.0.0.1", "port": query_port},
            admin={"host": "127.0.0.1", "port": admin},
        )
        done = run_proxy("--config", path, "--workers", "4")
        assert done.returncode == 2, done.stderr[-2000:]
        assert "admin.port" in done.stderr and needle in done.stderr


FAILING_WORKER = """
import sys
from aiohttp import web
from proxy import logs
from proxy.__main__ import load
from proxy.workers import run_workers

def run_one(cfg, app, worker):
    if worker.index == 1:
        raise RuntimeError("worker one cannot start")
    return 0

logs.setup("info")
sys.exit(run_workers(load(sys.argv[1]), 2, lambda cfg: web.Application(), run_one))
"""


def test_a_worker_that_fails_unexpectedly_says_why(start_fault, certs, tmp_path):
    """The real supervisor with a worker body that raises: the worker's os._exit must not swallow the reason."""
    fault = start_fault(ok())
    path = config_file(tmp_path, fault.url, certs.ca_file)
    done = subprocess.run(
        [sys.executable, "-c", FAILING_WORKER, path], env=proxy_environ(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    failed = [json.loads(line) for line in done.stderr.splitlines() if '"worker failed"' in line]
    assert len(failed) == 1 and failed[0]["level"] == "error", done.stderr[-2000:]
    assert failed[0]["worker"] == 1 and failed[0]["error"] == "RuntimeError"
    assert failed[0]["reason"] == "worker one cannot start"
