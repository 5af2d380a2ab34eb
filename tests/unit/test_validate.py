"""Each HTTP rule of proxy.validate alone, then their order."""

from __future__ import annotations

from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy import errors
from proxy.caller_token import CallerToken
from proxy.config import Config, build
from proxy.models import RequestHead
from proxy.validate import (
    RULES,
    RuleSettings,
    check_content_encoding,
    check_content_type,
    check_head,
    check_host,
    check_method,
    check_path,
    check_target_length,
    check_token,
    host_allowed,
    host_name,
)

SETTINGS = RuleSettings(allowed_hosts=frozenset({"proxy.internal"}), max_get_url_bytes=64)


def head(
    method: str = "GET",
    target: str = "/?Action=ListSecrets",
    host: str | None = "127.0.0.1:8977",
    content_type: str = "",
    has_amz_target: bool = False,
    **headers: str,
) -> RequestHead:
    path = target.partition("?")[0]
    return RequestHead(
        method=method,
        path=path,
        target=target,
        host=host,
        content_type=content_type,
        has_amz_target=has_amz_target,
        headers=CIMultiDictProxy(CIMultiDict(headers)),
    )


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("127.0.0.1:8977", "127.0.0.1"),
        ("[::1]:8977", "::1"),
        ("[::1]", "::1"),
        ("localhost", "localhost"),
        ("::1", "::1"),
        ("a:1", "a"),
        ("a:", "a"),
        # a port that is not digits is no port: the whole value is the name, and matches nothing allowed
        ("localhost:8977@rebind.example", "localhost:8977@rebind.example"),
        ("localhost:evil", "localhost:evil"),
        ("localhost:\u0661", "localhost:\u0661"),
        ("[::1]x", "[::1]x"),
        ("[::1]:80@evil", "[::1]:80@evil"),
    ],
)
def test_host_name_strips_the_port(host: str, name: str) -> None:
    assert host_name(host) == name


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:8977",
        "127.9.9.9:1",
        "[::1]:8977",
        "::1",
        "localhost",
        "LOCALHOST:80",
        "localhost.",
        "proxy.internal",
        "Proxy.Internal:443",
    ],
)
def test_loopback_localhost_and_allowed_hosts_pass(host: str) -> None:
    assert host_allowed(host, SETTINGS.allowed_hosts)
    check_host(head(host=host), SETTINGS)


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "attacker.example",
        "attacker.example:8977",
        "10.0.0.1",
        "0.0.0.0",
        "[::]:8977",
        "localhost.evil.test",
        "127.0.0.1.nip.io",
        "proxy.internal.evil",
        "[::ffff:10.0.0.1]",
        "localhost:8977@rebind.example",
        "127.0.0.1:80:80",
        "[::1]:8977@rebind.example",
    ],
)
def test_other_hosts_are_access_denied(host: str | None) -> None:
    with pytest.raises(errors.AccessDenied):
        check_host(head(host=host), SETTINGS)


def test_path() -> None:
    check_path(head(target="/?a=b"), SETTINGS)
    for target in ("/x", "//", "/index.html", "/%2F"):
        with pytest.raises(errors.NotFound):
            check_path(head(target=target), SETTINGS)


def test_method() -> None:
    check_method(head("GET"), SETTINGS)
    check_method(head("POST"), SETTINGS)
    for method in ("PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "get"):
        with pytest.raises(errors.MethodNotAllowed):
            check_method(head(method), SETTINGS)


def test_target_length_is_raw_bytes_and_the_limit_passes() -> None:
    exact = "/?" + "a" * 62
    check_target_length(head(target=exact), SETTINGS)
    with pytest.raises(errors.RequestURITooLong) as info:
        check_target_length(head(target=exact + "a"), SETTINGS)
    assert "POST" in info.value.message
    with pytest.raises(errors.RequestURITooLong):  # escapes count as sent
        check_target_length(head(target="/?" + "%41" * 21), SETTINGS)


def test_content_type() -> None:
    check_content_type(head("GET", content_type="text/plain"), SETTINGS)  # GET bodies are not read
    check_content_type(head("POST", content_type="application/x-www-form-urlencoded"), SETTINGS)
    # an SDK's JSON 1.1 call passes the rule; the service's protocol decides (proxy.dispatch)
    check_content_type(head("POST", content_type="application/x-amz-json-1.1", has_amz_target=True), SETTINGS)
    for ct, amz in (
        ("text/plain", False),
        ("", False),
        ("application/json", False),
        ("multipart/form-data", False),
        ("application/x-amz-json-1.1", False),
    ):
        with pytest.raises(errors.UnsupportedMediaType):
            check_content_type(head("POST", content_type=ct, has_amz_target=amz), SETTINGS)


def test_content_encoding() -> None:
    form = "application/x-www-form-urlencoded"
    check_content_encoding(head("POST", content_type=form), SETTINGS)
    check_content_encoding(head("POST", content_type=form, **{"Content-Encoding": "identity"}), SETTINGS)
    check_content_encoding(head("GET", **{"Content-Encoding": "gzip"}), SETTINGS)  # a GET body is never read
    for encoding in ("gzip", "deflate", "br", "x-gzip", "gzip, identity", "zstd"):
        with pytest.raises(errors.UnsupportedMediaType, match="compressed"):
            check_content_encoding(head("POST", content_type=form, **{"Content-Encoding": encoding}), SETTINGS)


def test_token_rule(tmp_path: Path) -> None:
    check_token(head(), SETTINGS)  # no token configured: nothing asked
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    settings = RuleSettings(frozenset(), 64, CallerToken("X-Proxy-Token", str(path)))
    check_token(head(**{"x-proxy-token": "s3cret"}), settings)  # header names are case-insensitive
    for bad in ({}, {"X-Proxy-Token": "s3cre"}, {"X-Proxy-Token": "s3cret2"}, {"X-Other": "s3cret"}):
        with pytest.raises(errors.AccessDenied):
            check_token(head(**bad), settings)


def test_rules_order_host_then_token_then_path_method_size_type(tmp_path: Path) -> None:
    assert RULES == (
        check_host,
        check_token,
        check_path,
        check_method,
        check_target_length,
        check_content_type,
        check_content_encoding,
    )
    path = tmp_path / "token"
    path.write_text("t")
    settings = RuleSettings(frozenset(), 64, CallerToken("X-Proxy-Token", str(path)))
    bad = dict(method="PUT", target="/x?" + "a" * 100, content_type="text/plain")
    with pytest.raises(errors.AccessDenied, match="Host"):
        check_head(head(host="evil.test", **bad), settings)  # type: ignore[arg-type]
    with pytest.raises(errors.AccessDenied, match="X-Proxy-Token"):
        check_head(head(**bad), settings)  # type: ignore[arg-type]
    with pytest.raises(errors.NotFound):
        check_head(head(**bad, **{"X-Proxy-Token": "t"}), settings)  # type: ignore[arg-type]


def test_settings_from_config_build_the_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("t")
    cfg: Config = build(
        Config,
        {"listen": {"allowed_hosts": ["A.Example"]}, "policy": {"token_header": "X-T", "token_file": str(path)}},
    )
    settings = RuleSettings.from_config(cfg)
    assert settings.allowed_hosts == frozenset({"a.example"})
    assert settings.max_get_url_bytes == 2048
    assert settings.token is not None and settings.token.header == "X-T"
    assert RuleSettings.from_config(build(Config, {})).token is None
