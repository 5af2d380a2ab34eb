"""Logs as an operator sees them (docs/interface.md, "Logs and metrics"): the real ``query-signing-proxy`` process against moto's
server, JSON lines on stderr, one access line per request whose request id is also the ``x-amzn-RequestId``
header and the XML ``RequestId``; ``--log-level`` filters by level."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.local import DEMO_ROLE_ARN, DEMO_SECRET, DEMO_SECRET_VALUE, REGION
from tests.checks import ACCESS_LINE_KEYS
from tests.conftest import Emulator
from tests.process import ProxyProcess, console_script
from tests.support import raw_request

LEVELS = ["debug", "info", "warning", "error"]


def run_proxy(emulator: Emulator, tmp_path: Path, level: str) -> tuple[ProxyProcess, list[tuple[int, str, str]]]:
    """Start the CLI at ``level``, send a success, an upstream error and a proxy error, stop it with SIGTERM.

    Returns the stopped process and, per request, (status, x-amzn-RequestId, XML RequestId)."""
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstream": {"region": REGION, "endpoint_url": emulator.url, "ca_bundle": emulator.ca_file},
        "credentials": {"role_arn": DEMO_ROLE_ARN, "role_session_name": "log-tests"},
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    answers: list[tuple[int, str, str]] = []
    with ProxyProcess(["--config", str(path), "--log-level", level], tmp_path) as proxy:
        proxy.wait_listening()  # an info line: levels below info are tested without it
        proxy.wait_status(f"http://127.0.0.1:{proxy.admin_port}/readyz", 200)
        for target in (
            f"/?Action=GetSecretValue&SecretId={DEMO_SECRET.replace('/', '%2F')}&Version=2017-10-17",
            "/?Action=GetSecretValue&SecretId=demo%2Fmissing&Version=2017-10-17",
            "/?Action=NoSuchAction&Version=2017-10-17",
        ):
            resp = raw_request(proxy.port, "GET", target)
            body = resp.body.decode()
            m = re.search(r"<RequestId>([^<]*)</RequestId>", body)
            assert m, body
            answers.append((resp.status, resp.header("x-amzn-RequestId") or "", m.group(1)))
        assert proxy.stop() == 0
    return proxy, answers


@pytest.fixture
def emulator_env(emulator: Emulator, demo_env: None) -> Emulator:
    return emulator


def test_access_lines_per_spec(emulator_env: Emulator, tmp_path: Path) -> None:
    proxy, answers = run_proxy(emulator_env, tmp_path, "info")
    lines = proxy.lines()  # every line is JSON
    for line in lines:
        assert line["level"] in LEVELS[1:]
        datetime.datetime.fromisoformat(line["time"])
        if "request_id" not in line or "status" not in line:
            assert "message" in line, line
    access = [line for line in lines if "status" in line and "request_id" in line]
    assert len(access) == 3, access
    assert [a[0] for a in answers] == [200, 404, 400]  # moto answers not-found with 404 (TESTING.md)
    for line, (status, header_id, xml_id) in zip(access, answers, strict=True):
        assert set(line) == ACCESS_LINE_KEYS, line
        assert line["level"] == "info"
        assert line["status"] == status
        assert header_id and line["request_id"] == header_id == xml_id
        assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 0
    ok, missing, invalid = access
    assert (ok["action"], ok["secret_id"], ok["upstream_status"], ok["attempts"]) == (
        "GetSecretValue",
        DEMO_SECRET,
        200,
        1,
    )
    assert (missing["secret_id"], missing["upstream_status"], missing["attempts"]) == ("demo/missing", 404, 1)
    assert (invalid["action"], invalid["secret_id"], invalid["upstream_status"], invalid["attempts"]) == (
        None,
        None,
        None,
        0,
    )
    # the proxy's own request ids are UUIDs; with an upstream answer it is the upstream's id
    assert re.fullmatch(r"[0-9a-f-]{36}", invalid["request_id"])
    messages = [line.get("message") for line in lines]
    for expected in ("listening", "credentials refreshed", "shutting down", "stopped"):
        assert expected in messages
    assert "effective configuration" not in messages  # a debug line


def test_debug_level_adds_debug_lines_and_never_secrets(emulator_env: Emulator, tmp_path: Path) -> None:
    proxy, _ = run_proxy(emulator_env, tmp_path, "debug")
    lines = proxy.lines()
    debug = [line for line in lines if line["level"] == "debug"]
    assert any(line.get("message") == "effective configuration" for line in debug)
    text = proxy.log_path.read_text()
    secret_key = os.environ["AWS_SECRET_ACCESS_KEY"]
    for forbidden in (DEMO_SECRET_VALUE, secret_key, "Signature=", "AWS4-HMAC-SHA256 Credential"):
        assert forbidden not in text, forbidden


def test_warning_level_drops_info_lines(emulator_env: Emulator, tmp_path: Path) -> None:
    # The listening line is info: find the ports by asking the kernel instead, then check nothing below
    # warning was written while the same traffic ran.
    from proxy.local import free_port

    port, admin_port = free_port(), free_port()
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "upstream": {"region": REGION, "endpoint_url": emulator_env.url, "ca_bundle": emulator_env.ca_file},
        "credentials": {"role_arn": DEMO_ROLE_ARN, "role_session_name": "log-tests"},
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    with ProxyProcess(["--config", str(path), "--log-level", "warning"], tmp_path) as proxy:
        proxy.wait_status(f"http://127.0.0.1:{admin_port}/readyz", 200)
        target = f"/?Action=GetSecretValue&SecretId={DEMO_SECRET.replace('/', '%2F')}&Version=2017-10-17"
        assert raw_request(port, "GET", target).status == 200
        assert raw_request(port, "GET", "/?Action=NoSuchAction").status == 400
        assert proxy.stop() == 0
    lines: list[dict[str, Any]] = proxy.lines()
    assert all(line["level"] in ("warning", "error") for line in lines), lines


@pytest.mark.parametrize("level", ["verbose", "trace", ""])
def test_bad_log_level_is_exit_2(level: str) -> None:
    out = subprocess.run([console_script(), "--log-level", level], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--log-level" in out.stderr
