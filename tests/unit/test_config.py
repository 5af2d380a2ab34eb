"""config.py: strict YAML -> frozen dataclasses; every error names its key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from proxy.config import Config, ConfigError, default_session_name, dump_effective, load_config, parse_listen
from proxy.local import LOCAL_CONFIG_YAML

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_need_only_a_region() -> None:
    cfg = load_config(None, region_from_env="eu-west-1")
    assert cfg.upstream.region == "eu-west-1"
    assert cfg.listen.host == "127.0.0.1" and cfg.listen.port == 8977
    assert cfg.limits.max_get_url_bytes == 2048 and cfg.policy.allow_actions is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.listen.port = 1  # type: ignore[misc]


def test_the_file_wins_over_the_environment(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "upstream: {region: us-west-2}"), region_from_env="eu-west-1")
    assert cfg.upstream.region == "us-west-2"


def test_documented_config_loads_with_every_default(tmp_path: Path) -> None:
    cfg = load_config(str(ROOT / "config/proxy.yaml"), region_from_env="us-east-1")
    assert dataclasses.replace(cfg, upstream=dataclasses.replace(cfg.upstream, region=None)) == Config()


def test_config_local_yaml_is_the_builtin_local_config() -> None:
    assert yaml.safe_load((ROOT / "config/local.yaml").read_text()) == yaml.safe_load(LOCAL_CONFIG_YAML)


@pytest.mark.parametrize(
    "text,key",
    [
        ("listen: {hots: 1}", "listen.hots: unknown key"),
        ("bogus: 1", "bogus: unknown key"),
        ("limits: {max_body_bytes: 10}", "limits.max_body_bytes: must be at least"),
        ("limits: {max_body_bytes: '10'}", "limits.max_body_bytes: must be an integer"),
        ("upstream: {max_attempts: true}", "upstream.max_attempts: must be an integer"),
        ("upstream: {connect_timeout_seconds: fast}", "upstream.connect_timeout_seconds: must be a number"),
        ("upstream: {allow_insecure_http: 'yes'}", "upstream.allow_insecure_http: must be true or false"),
        ("upstream: {endpoint_url: 'http://127.0.0.1:1'}", "upstream.endpoint_url: http://127.0.0.1:1 is not HTTPS"),
        ("upstream: {endpoint_url: 'ftp://x'}", "upstream.endpoint_url: must start with https://"),
        ("upstream: {ca_bundle: /nonexistent/ca.pem}", "upstream.ca_bundle: no such file"),
        ("policy: {allow_actions: GetSecretValue}", "policy.allow_actions: must be a list"),
        ("policy: {token_header: X-Token}", "policy.token_file: required"),
        ("credentials: {duration_seconds: 60}", "credentials.duration_seconds: must be at least 900"),
        ("credentials: {session_tags: {team: [a]}}", "credentials.session_tags.team: must be a string"),
        ("listen: {host: 0.0.0.0}", "listen.host: 0.0.0.0 is not a loopback address"),
        ("listen: {tls: {cert_file: /x}}", "listen.tls: cert_file and key_file must be given together"),
        ("routes: [{port: 1, bogus: 2}]", "routes[0].bogus: unknown key"),
        ("- a list", "(top level): must be a mapping"),
        ("listen: [", "is not valid YAML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), region_from_env="us-east-1")
    assert key in str(info.value)
    assert "\n" not in str(info.value)


def test_insecure_http_is_allowed_only_when_asked(tmp_path: Path) -> None:
    text = "upstream: {endpoint_url: 'http://127.0.0.1:1', allow_insecure_http: true}"
    assert load_config(write(tmp_path, text), region_from_env="us-east-1").upstream.allow_insecure_http


def test_no_region_anywhere_is_an_error() -> None:
    with pytest.raises(ConfigError, match="upstream.region"):
        load_config(None, region_from_env=None)


def test_unreadable_file() -> None:
    with pytest.raises(ConfigError, match="--config: cannot read"):
        load_config("/nonexistent/proxy.yaml", region_from_env="us-east-1")


@pytest.mark.parametrize(
    "value,expected",
    [("127.0.0.1:8977", ("127.0.0.1", 8977)), ("localhost:1", ("localhost", 1)), ("[::1]:8977", ("::1", 8977))],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["8977", "127.0.0.1", "::1:8977", "host:99999", "[::1]"])
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(ConfigError, match="--listen"):
        parse_listen(value)


def test_default_session_name_is_per_host_and_valid() -> None:
    assert default_session_name("web-7d9f") == "query-signing-proxy-web-7d9f"
    long = default_session_name("pod" * 40 + " with spaces/and:colons")
    assert len(long) == 64 and " " not in long and ":" not in long


def test_effective_config_redacts_the_external_id(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "credentials: {external_id: s3cr3t-id}"), region_from_env="us-east-1")
    out = dump_effective(cfg)
    assert "s3cr3t-id" not in out and "external_id: <redacted>" in out
    assert yaml.safe_load(out)["upstream"]["region"] == "us-east-1"
