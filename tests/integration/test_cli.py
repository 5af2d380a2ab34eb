"""The command line as a user runs it (docs/interface.md, "Command line"): real subprocesses, real signals."""

from __future__ import annotations

import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from xml.etree import ElementTree

import yaml

from proxy import __version__
from proxy.local import DEMO_SECRET_VALUE, LOCAL_CONFIG_YAML, clean_aws_environ
from tests.faults import Certs, StartFault, answer, proxy_environ, secret_value
from tests.process import ProxyProcess, reaped
from tests.support import raw_request

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "proxy"]
README = (ROOT / "README.md").read_text()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env=env or clean_aws_environ(), cwd=ROOT
    )


def test_version() -> None:
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"query-signing-proxy {__version__}"


def test_check_config_prints_the_effective_config() -> None:
    out = run("check-config", "config/proxy.yaml", env={**clean_aws_environ(), "AWS_REGION": "eu-central-1"})
    assert out.returncode == 0, out.stderr
    assert "region: eu-central-1" in out.stdout and "max_get_url_bytes: 2048" in out.stdout


def test_check_config_names_the_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstream:\n  region: us-east-1\n  max_attempts: 0\n")
    out = run("check-config", str(bad))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "upstream.max_attempts: must be at least 1" in lines[0]


def test_check_config_rejects_an_unknown_operation_in_the_policy(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstream: {region: us-east-1}\npolicy: {allow_actions: [GetSecretValu]}\n")
    out = run("check-config", str(bad))
    assert out.returncode == 2 and "policy.allow_actions[0]" in out.stderr


def test_serving_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: {port: 70000}\n")
    out = run("--config", str(bad))
    assert out.returncode == 2 and "listen.port" in out.stderr


def test_no_region_exits_2() -> None:
    out = run("--listen", "127.0.0.1:0")
    assert out.returncode == 2 and "upstream.region" in out.stderr


def test_bad_listen_exits_2() -> None:
    out = run("--listen", "nonsense", env={**clean_aws_environ(), "AWS_REGION": "us-east-1"})
    assert out.returncode == 2 and "--listen" in out.stderr


def read_until(proc: subprocess.Popen[bytes], pattern: re.Pattern[bytes], timeout: float) -> re.Match[bytes]:
    """Read the child's stdout until ``pattern`` appears (polling the pipe; no fixed sleeps)."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=0.5):
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            m = pattern.search(seen)
            if m:
                return m
    raise AssertionError(f"pattern not seen; stdout so far: {seen!r}")


def start_local(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``query-signing-proxy local`` on a free loopback port, its stdout (with the curl line) piped; ``env``
    replaces the clean environment."""
    return subprocess.Popen(
        [*CLI, "local", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env or clean_aws_environ(),
        cwd=ROOT,
    )


def test_local_prints_a_curl_line_that_returns_the_demo_secret() -> None:
    """docs/interface.md, "The embedded local upstream", as the README runs it: the printed curl URL answers GetSecretValueResponse XML."""
    with reaped(start_local()) as proc:
        m = read_until(proc, re.compile(rb"curl -s '([^']+)'"), timeout=120)
        url = m.group(1).decode()
        assert url.startswith("http://127.0.0.1:") and "Action=GetSecretValue" in url
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "text/xml"
            root = ElementTree.fromstring(resp.read())
        ns = "{https://secretsmanager.amazonaws.com/doc/2017-10-17/}"
        assert root.tag == f"{ns}GetSecretValueResponse"
        assert root.findtext(f"{ns}GetSecretValueResult/{ns}SecretString") == DEMO_SECRET_VALUE
        # the README's SDK line against it, as written (its region is local's: another would be refused)
        sdk_line = re.search(r"```sh\n(AWS_ENDPOINT_URL_SECRETS_MANAGER=http://127\.0\.0\.1:8977 .*?)```", README, re.S)
        assert sdk_line, "the README's quick start has no SDK line"
        port = url.split(":")[2].split("/")[0]
        command = sdk_line.group(1).replace("127.0.0.1:8977", f"127.0.0.1:{port}")
        command = command.replace(".venv/bin/python", sys.executable)
        out = subprocess.run(
            ["bash", "-c", command], env=clean_aws_environ(), capture_output=True, text=True, timeout=60
        )
        assert (out.returncode, out.stdout) == (0, f"{DEMO_SECRET_VALUE}\n"), out.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_local_with_a_caller_token_prints_a_curl_line_that_sends_it(tmp_path: Path) -> None:
    """``local --config`` with ``policy.token_header``: the printed curl line, run as printed, carries the token
    (read from the file by the shell, so the token itself is never printed) and returns the demo secret."""
    token = f"local-token-{os.getpid()}"
    (tmp_path / "token").write_text(token + "\n")
    config = tmp_path / "proxy.yaml"
    data = yaml.safe_load(LOCAL_CONFIG_YAML)  # the built-in config (the demo role) with a caller token
    data["policy"].update(token_header="X-Proxy-Token", token_file=str(tmp_path / "token"))
    config.write_text(yaml.safe_dump(data))
    cmd = [*CLI, "local", "--config", str(config), "--listen", "127.0.0.1:0"]
    with reaped(
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_aws_environ())
    ) as proc:
        line = read_until(proc, re.compile(rb"  (curl -s [^\n]+)\n"), timeout=120).group(1).decode()
        assert token not in line and "X-Proxy-Token" in line
        out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60)
        assert DEMO_SECRET_VALUE in out.stdout, out.stdout + out.stderr
        bare = subprocess.run(["bash", "-c", line.split(" -H ")[0]], capture_output=True, text=True, timeout=60)
        assert DEMO_SECRET_VALUE not in bare.stdout and "<Code>AccessDenied</Code>" in bare.stdout, bare.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def busy_port() -> socket.socket:
    """A listening socket on 127.0.0.1 that the test holds (its port is in use)."""
    return socket.create_server(("127.0.0.1", 0))


def test_local_on_a_port_in_use_says_so_in_one_line() -> None:
    with busy_port() as taken:
        port = taken.getsockname()[1]
        out = run("local", "--listen", f"127.0.0.1:{port}")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr, out.stderr
    assert f"query-signing-proxy: cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr
    assert "curl" not in out.stdout


def test_an_admin_port_in_use_is_named(tmp_path: Path) -> None:
    with busy_port() as taken:
        port = taken.getsockname()[1]
        config = tmp_path / "proxy.yaml"
        config.write_text(
            f"listen: {{port: 0}}\nadmin: {{host: 127.0.0.1, port: {port}}}\nupstream: {{region: us-east-1}}\n"
        )
        out = run("--config", str(config))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr, out.stderr
    assert f"query-signing-proxy: cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr


def readme_quick_start_sdk_command() -> str:
    """The SDK command of the README's quick start (the second ``sh`` block after its curl line)."""
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", quick, re.S)
    command = next(b for b in blocks if "AWS_ENDPOINT_URL_SECRETS_MANAGER" in b)
    return command.replace("\\\n", " ").strip()


def test_the_readme_quick_start_sdk_command_reads_the_demo_secret() -> None:
    with reaped(start_local()) as proc:
        port = read_until(proc, re.compile(rb"curl -s 'http://127\.0\.0\.1:(\d+)/"), timeout=120).group(1).decode()
        command = readme_quick_start_sdk_command().replace("127.0.0.1:8977", f"127.0.0.1:{port}")
        command = command.replace(".venv/bin/python", sys.executable)
        out = subprocess.run(
            ["sh", "-c", command], capture_output=True, text=True, timeout=60, env=clean_aws_environ(), cwd=ROOT
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == DEMO_SECRET_VALUE
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_the_shipped_configs_check_with_a_region_as_the_docs_say() -> None:
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    assert "AWS_REGION=eu-west-1 query-signing-proxy check-config config/proxy.yaml" in configuration
    for path in ("config/proxy.yaml", "config/container.yaml", "config/local.yaml", "deploy/base/proxy.yaml"):
        out = run("check-config", path, env={**clean_aws_environ(), "AWS_REGION": "eu-west-1"})
        assert out.returncode == 0, f"{path}: {out.stderr}"
    out = run("check-config", "config/proxy.yaml")
    assert out.returncode == 2 and "upstream.region: no region in the file or the environment" in out.stderr


def test_a_crash_writes_no_core_file_holding_a_secret(tmp_path: Path, start_fault: StartFault, certs: Certs) -> None:
    """A proxy that crashes, or gets SIGQUIT, with core dumps allowed by its parent (``ulimit -c unlimited``)
    writes no core file: its core file size limit is 0 (soft and hard) from the start, so the cached values,
    credentials and answers in its memory never reach the disk that way (docs/security.md)."""
    value = f"core-dump-canary-{os.getpid()}"
    fault = start_fault(answer(200, secret_value("app/db", value)))
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstream": {"region": "us-east-1", "endpoint_url": fault.url, "ca_bundle": certs.ca_file},
        "policy": {"allow_actions": ["*"]},
        "cache": {"enabled": True},
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    limit = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (limit[1], limit[1]))  # what the proxy inherits: all it may have
    # SIGQUIT's default action for the proxy: a suite started in the background by a shell without job control
    # inherits SIGQUIT ignored (POSIX), and the proxy would inherit that too
    quit_action = signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    try:
        with ProxyProcess(["--config", str(path)], tmp_path, proxy_environ(), cwd=tmp_path) as proxy:
            signal.signal(signal.SIGQUIT, quit_action)
            proxy.wait_listening()
            get = "/?Action=GetSecretValue&SecretId=app%2Fdb&Version=2017-10-17"
            assert value.encode() in raw_request(proxy.port, "GET", get).body  # held in memory, and cached
            assert proxy.process is not None
            limits = Path(f"/proc/{proxy.process.pid}/limits").read_text()
            assert re.search(r"^Max core file size\s+0\s+0\s", limits, re.M), limits
            proxy.process.send_signal(signal.SIGQUIT)  # its default action: terminate with a core dump
            assert proxy.process.wait(20) == -signal.SIGQUIT
    finally:
        signal.signal(signal.SIGQUIT, quit_action)
        resource.setrlimit(resource.RLIMIT_CORE, limit)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("core")] == []
