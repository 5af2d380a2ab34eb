"""HTTPS rules (docs/interface.md, "Configuration"): an http:// upstream is refused at start-up unless allowed (with a
warning at every start); upstream TLS is always verified; the listener is loopback unless it serves HTTPS;
``localhost`` is both loopback addresses."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.app import create_app
from proxy.credentials import static_fetch
from tests.checks import assert_error
from tests.integration.conftest import ACCESS_KEY, SECRET_KEY, SESSION_TOKEN, StartRecorded
from tests.process import reaped
from tests.recorder import RecordingUpstream, recorder_config
from tests.serving import Served
from tests.support import legacy_client, raw_request


def cli(tmp_path: Path, config: dict[str, Any], *args: str) -> list[str]:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "proxy", "--config", str(path), *args]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out.update(AWS_EC2_METADATA_DISABLED="true", AWS_ACCESS_KEY_ID="AKIDCLI", AWS_SECRET_ACCESS_KEY="cli-secret")
    return out


def test_http_endpoint_is_refused_at_start_up(tmp_path: Path) -> None:
    config = {"upstream": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:9"}}
    done = subprocess.run(cli(tmp_path, config), env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        "query-signing-proxy: config error: upstream.endpoint_url: http://127.0.0.1:9 is not HTTPS"
    )


def test_non_loopback_listener_without_tls_is_refused(tmp_path: Path) -> None:
    config = {"upstream": {"region": "us-east-1"}}
    done = subprocess.run(
        cli(tmp_path, config, "--listen", "0.0.0.0:0"), env=env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "query-signing-proxy: config error: listen.host: 0.0.0.0 is not a loopback address; "
        "the Query API leaves the host only over HTTPS (set listen.tls.cert_file and key_file)"
    ]


def test_allow_insecure_http_warns_at_every_start(tmp_path: Path) -> None:
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstream": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:9", "allow_insecure_http": True},
    }
    for _ in range(2):
        with reaped(subprocess.Popen(cli(tmp_path, config), env=env(), stderr=subprocess.PIPE, text=True)) as proc:
            assert proc.stderr is not None
            seen: list[dict[str, Any]] = []
            deadline = time.monotonic() + 60
            while not any(line.get("message") == "listening" for line in seen):
                assert time.monotonic() < deadline and proc.poll() is None, seen
                raw = proc.stderr.readline()
                if raw.strip():
                    seen.append(json.loads(raw))
            warnings = [
                line for line in seen if line["level"] == "warning" and "allow_insecure_http" in line["message"]
            ]
            assert len(warnings) == 1, seen
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


def test_upstream_tls_is_verified(start_recorded: StartRecorded, recording: RecordingUpstream, tmp_path: Path) -> None:
    """An upstream whose certificate the CA bundle does not vouch for is a 502, and nothing is sent."""
    import trustme

    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    proxy = start_recorded(upstream={"ca_bundle": str(other_ca)})
    resp = raw_request(proxy.port, "GET", "/?Action=GetSecretValue&SecretId=app%2Fa", headers={"Host": "localhost"})
    assert_error(resp, 502, "BadGateway")
    assert recording.take() == []


def test_upstream_host_name_is_verified(start_recorded: StartRecorded, recording: RecordingUpstream) -> None:
    """The recording upstream's certificate names 127.0.0.1 and localhost; 127.0.0.2 reaches the same socket
    on Linux but does not match the certificate."""
    port = recording.url.rsplit(":", 1)[1]
    proxy = start_recorded(upstream={"endpoint_url": f"https://127.0.0.2:{port}"})
    resp = raw_request(proxy.port, "GET", "/?Action=GetSecretValue&SecretId=app%2Fa", headers={"Host": "localhost"})
    assert resp.status == 502, resp.body
    assert recording.take() == []


@pytest.fixture
def served_tls(recording: RecordingUpstream, listener_tls: dict[str, str]) -> Any:
    def start(host: str = "127.0.0.1", **sections: Any) -> Served:
        tls = {"cert_file": listener_tls["cert_file"], "key_file": listener_tls["key_file"]}
        cfg = recorder_config(recording, listen={"host": host, "tls": tls}, **sections)
        fetch = static_fetch(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN)
        return Served(cfg, lambda: create_app(cfg, fetch=fetch))

    return start


def test_tls_listener_serves_a_legacy_sdk(
    served_tls: Any,
    recording: RecordingUpstream,
    client_tls: ssl.SSLContext,
    listener_tls: dict[str, str],
    tmp_path: Path,
) -> None:
    with served_tls() as served:
        app = legacy_client(f"https://127.0.0.1:{served.port}", str(tmp_path), verify=listener_tls["ca_file"])
        out = app.get_secret_value(SecretId="app/tls")
        assert out["SecretString"] == "recorded-secret-value" and out["Name"] == "app/tls"
        # no plaintext on the TLS port
        with pytest.raises((OSError, http.client.HTTPException)):
            raw_request(served.port, "GET", "/?Action=ListSecrets", headers={"Host": "localhost"}, timeout=5)
        # an untrusting client refuses the certificate: it is a real, verifiable certificate
        with pytest.raises(ssl.SSLCertVerificationError):
            raw_request(
                served.port, "GET", "/healthz", headers={"Host": "localhost"}, ssl_context=ssl.create_default_context()
            )
        assert raw_request(served.port, "GET", "/healthz", ssl_context=client_tls).status == 200


@pytest.mark.parametrize("tls", [False, True])
def test_localhost_binds_both_loopback_addresses(
    recording: RecordingUpstream, listener_tls: dict[str, str], client_tls: ssl.SSLContext, tls: bool
) -> None:
    listen: dict[str, Any] = {"host": "localhost"}
    if tls:
        listen["tls"] = {"cert_file": listener_tls["cert_file"], "key_file": listener_tls["key_file"]}
    cfg = recorder_config(recording, listen=listen)
    fetch = static_fetch(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN)
    with Served(cfg, lambda: create_app(cfg, fetch=fetch)) as served:
        for address in ("127.0.0.1", "::1"):
            resp = raw_request(
                served.port,
                "GET",
                "/?Action=GetSecretValue&SecretId=app%2Fboth",
                host=address,
                ssl_context=client_tls if tls else None,
            )
            assert resp.status == 200, (address, resp.body)
    assert len(recording.take()) == 2
