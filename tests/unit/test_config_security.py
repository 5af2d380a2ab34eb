"""The config's security rules (docs/interface.md, "Configuration"): HTTPS upstream, loopback listener unless TLS, token files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import Config, ConfigError, build, check


def cfg(**data: Any) -> Config:
    config: Config = build(Config, data)
    check(config)
    return config


def test_http_endpoint_is_refused_unless_allowed() -> None:
    with pytest.raises(ConfigError, match=r"^upstream\.endpoint_url: http://x is not HTTPS"):
        cfg(upstream={"endpoint_url": "http://x"})
    assert cfg(upstream={"endpoint_url": "http://x", "allow_insecure_http": True}).upstream.allow_insecure_http
    with pytest.raises(ConfigError, match=r"^routes\[0\]\.upstream\.endpoint_url"):
        cfg(routes=[{"upstream": {"endpoint_url": "http://x"}}])


@pytest.mark.parametrize("url", ["ftp://x", "x.example", "HTTPS//x", "ws://x"])
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^upstream\.endpoint_url: must start with https://"):
        cfg(upstream={"endpoint_url": url, "allow_insecure_http": True})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "LocalHost"])
def test_loopback_listeners_need_no_tls(host: str) -> None:
    assert cfg(listen={"host": host}).listen.host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "proxy.internal", "192.168.0.1"])
def test_other_listeners_need_tls(host: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^listen\.host: .* HTTPS"):
        cfg(listen={"host": host})
    (tmp_path / "c.pem").write_text("c")
    (tmp_path / "k.pem").write_text("k")
    tls = {"cert_file": str(tmp_path / "c.pem"), "key_file": str(tmp_path / "k.pem")}
    assert cfg(listen={"host": host, "tls": tls}).listen.tls.enabled


def test_tls_needs_both_files(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("c")
    with pytest.raises(ConfigError, match=r"^listen\.tls: cert_file and key_file must be given together"):
        cfg(listen={"tls": {"cert_file": str(tmp_path / "c.pem")}})
    with pytest.raises(ConfigError, match=r"^listen\.tls\.key_file: no such file"):
        cfg(listen={"tls": {"cert_file": str(tmp_path / "c.pem"), "key_file": str(tmp_path / "nope")}})


def test_token_header_and_file_go_together(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    assert cfg(policy={"token_header": "X-Proxy-Token", "token_file": str(token)}).policy.token_header
    with pytest.raises(ConfigError, match=r"^policy\.token_file: required"):
        cfg(policy={"token_header": "X-Proxy-Token"})
    with pytest.raises(ConfigError, match=r"^policy\.token_header: required"):
        cfg(policy={"token_file": str(token)})
    with pytest.raises(ConfigError, match=r"^policy\.token_file: no such file"):
        cfg(policy={"token_header": "X-Proxy-Token", "token_file": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=r"^routes\[0\]\.policy\.token_file: required"):
        cfg(routes=[{"policy": {"token_header": "X-T"}}])


@pytest.mark.parametrize("name", ["X Proxy", "X-Proxy:", "", "Tök", "X\nY"])
def test_token_header_must_be_a_header_name(name: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    with pytest.raises(ConfigError, match=r"^policy\.token_header"):
        cfg(policy={"token_header": name, "token_file": str(token)})
