"""The Query API end to end against moto (signature checking on), with the inputs that public reports
against other signing proxies show going wrong."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

import pytest
from botocore.model import ServiceModel
from botocore.parsers import QueryParser

from proxy.local import DEMO_SECRET, DEMO_SECRET_VALUE
from tests.support import ServerThread, query_model, raw_request

NS = "{https://secretsmanager.amazonaws.com/doc/2017-10-17/}"
QUERY_MODEL = ServiceModel(query_model("secretsmanager"), "secretsmanager")


def get(proxy: ServerThread, target: str, **kw: Any) -> Any:
    return raw_request(proxy.port, "GET", target, **kw)


def secret_string(body: bytes) -> str | None:
    root = ElementTree.fromstring(body)
    el = root.find(f"{NS}GetSecretValueResult/{NS}SecretString")
    return None if el is None else el.text


def parse_error(status: int, body: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = QueryParser().parse({"status_code": status, "headers": {}, "body": body}, None)
    return parsed


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_the_demo_secret_by_get(proxy: ServerThread) -> None:
    r = get(proxy, f"/?Action=GetSecretValue&SecretId={quote(DEMO_SECRET, safe='')}&Version=2017-10-17")
    assert r.status == 200
    assert r.header("Content-Type") == "text/xml"
    assert secret_string(r.body) == DEMO_SECRET_VALUE
    request_id = r.header("x-amzn-RequestId")
    assert request_id and request_id.encode() in r.body


def test_plus_is_a_space_and_percent_2b_is_a_plus(proxy: ServerThread, emulator: Any) -> None:
    base = unique("enc")
    direct = emulator.direct()
    direct.create_secret(Name=f"{base}+user", SecretString="plus")
    direct.create_secret(Name=f"{base} user", SecretString="space")
    for encoded, expected in (("%2Buser", "plus"), ("%20user", "space"), ("+user", "space"), ("%2buser", "plus")):
        r = get(proxy, f"/?Action=GetSecretValue&SecretId={base}{encoded}&Version=2017-10-17")
        assert r.status == 200, (encoded, r.body)
        assert secret_string(r.body) == expected, encoded


def test_plus_is_a_space_in_a_post_body_too(proxy: ServerThread, emulator: Any) -> None:
    base = unique("form")
    emulator.direct().create_secret(Name=f"{base} x", SecretString="space")
    r = raw_request(
        proxy.port,
        "POST",
        "/",
        body=f"Action=GetSecretValue&Version=2017-10-17&SecretId={base}+x".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    assert r.status == 200 and secret_string(r.body) == "space"


def test_parameters_in_any_order(proxy: ServerThread, emulator: Any) -> None:
    name = unique("app/db")
    emulator.direct().create_secret(Name=name, SecretString="ordered")
    r = get(
        proxy, f"/?VersionStage=AWSCURRENT&Version=2017-10-17&SecretId={quote(name, safe='')}&Action=GetSecretValue"
    )
    assert r.status == 200 and secret_string(r.body) == "ordered"


def test_a_full_arn_with_raw_colons_and_slashes(proxy: ServerThread, emulator: Any) -> None:
    name = unique("team/svc/db")
    arn = emulator.direct().create_secret(Name=name, SecretString="by-arn")["ARN"]
    r = get(proxy, f"/?Action=GetSecretValue&SecretId={arn}&Version=2017-10-17")
    assert r.status == 200, r.body
    assert secret_string(r.body) == "by-arn"


@pytest.mark.parametrize("suffix", ["~tilde", "*star", "@at", "=eq", "\u00e9t\u00e9-\u6f22\u5b57", "a_b.c-d/e"])
def test_names_with_unusual_characters(proxy: ServerThread, emulator: Any, suffix: str) -> None:
    """Through the proxy the answer is the one a direct JSON client gets (never a signature error)."""
    name = unique("odd") + suffix
    direct = emulator.direct()
    try:
        direct.create_secret(Name=name, SecretString="odd")
        expected: Any = "odd"
    except direct.exceptions.ClientError as exc:  # the emulator refuses the name: the proxy must say the same
        expected = exc.response["Error"]["Code"]
    for encoded in (quote(name, safe=""), quote(name, safe="~*@=/:")):
        r = get(proxy, f"/?Action=GetSecretValue&SecretId={encoded}&Version=2017-10-17")
        if expected == "odd":
            assert r.status == 200 and secret_string(r.body) == "odd", r.body
        else:
            assert parse_error(r.status, r.body)["Error"]["Code"] == expected


@pytest.mark.parametrize(
    "query,status,code",
    [
        ("Action=GetSecretValue&&SecretId=demo%2Fdb-password&Version=2017-10-17&", 200, None),
        ("&Action=GetSecretValue&SecretId=demo%2Fdb-password&&&Version=2017-10-17", 200, None),
        ("Action=GetSecretValue&SecretId=demo%2Fdb-password&VersionStage=", 400, "InvalidParameterException"),
        ("Action=GetSecretValue&SecretId=demo%2Fdb-password&Flag", 400, "UnknownParameter"),
        ("Action=GetSecretValue&SecretId=", 400, "InvalidParameterException"),
        ("Action&SecretId=demo%2Fdb-password", 400, "MissingAction"),
        ("Action=GetSecretValue&SecretId=demo%2Fdb-password&Version", 200, None),
        ("SecretId=demo%2Fdb-password", 400, "MissingAction"),
        ("Action=NoSuchThing&SecretId=x", 400, "InvalidAction"),
        ("Action=GetSecretValue&SecretId=x&Version=2010-05-08", 400, "NoSuchVersion"),
        ("Action=GetSecretValue&SecretId=%ZZ", 400, "MalformedQueryString"),
        ("Action=GetSecretValue&SecretId=%C3%28", 400, "MalformedQueryString"),
    ],
)
def test_odd_query_strings_never_cause_a_signature_error(
    proxy: ServerThread, query: str, status: int, code: str | None
) -> None:
    r = get(proxy, f"/?{query}")
    assert r.status == status, r.body
    assert r.header("Content-Type") == "text/xml"
    if code is None:
        assert secret_string(r.body) == DEMO_SECRET_VALUE
    else:
        err = parse_error(r.status, r.body)
        assert err["Error"]["Code"] == code
        assert err["ResponseMetadata"]["RequestId"] == r.header("x-amzn-RequestId")


def test_signing_parameters_of_the_app_are_dropped(proxy: ServerThread) -> None:
    r = get(
        proxy,
        "/?Action=GetSecretValue&SecretId=demo%2Fdb-password&Version=2017-10-17&AWSAccessKeyId=AKIAFAKE"
        "&Signature=abc&SignatureVersion=2&SignatureMethod=HmacSHA256&Timestamp=2020-01-01T00%3A00%3A00Z"
        "&X-Amz-Signature=00&X-Amz-Credential=x&X-Amz-Date=20200101T000000Z&X-Amz-Security-Token=t",
    )
    assert r.status == 200 and secret_string(r.body) == DEMO_SECRET_VALUE


@pytest.mark.parametrize("path", ["/foo", "///", "/foo?Action=GetSecretValue&SecretId=demo%2Fdb-password"])
def test_other_paths_are_404_and_never_go_upstream(
    proxy: ServerThread, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    r = get(proxy, path)
    assert r.status == 404
    assert parse_error(r.status, r.body)["Error"]["Code"] == "NotFound"
    lines = [rec for rec in caplog.records if getattr(rec, "request_id", None) == r.header("x-amzn-RequestId")]
    assert lines and lines[0].attempts == 0 and lines[0].upstream_status is None  # type: ignore[attr-defined]


def test_a_chunked_post_is_read_whole(proxy: ServerThread) -> None:
    body = b"Action=GetSecretValue&Version=2017-10-17&SecretId=demo%2Fdb-password"
    chunked = (
        b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:30], body[30:])) + b"0\r\n\r\n"
    )
    r = raw_request(
        proxy.port,
        "POST",
        "/",
        body=chunked,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Transfer-Encoding": "chunked"},
    )
    assert r.status == 200, r.body
    assert secret_string(r.body) == DEMO_SECRET_VALUE


def test_the_clients_host_header_is_not_used(proxy: ServerThread) -> None:
    """moto verifies the signature over the Host it received: a client Host of localhost:1 changes nothing."""
    r = get(
        proxy,
        "/?Action=GetSecretValue&SecretId=demo%2Fdb-password&Version=2017-10-17",
        headers={"Host": "localhost:1"},
    )
    assert r.status == 200 and secret_string(r.body) == DEMO_SECRET_VALUE


def test_crlf_non_ascii_and_binary_secrets_come_back_byte_for_byte(legacy: Any, emulator: Any) -> None:
    direct = emulator.direct()
    values = {
        unique("crlf"): "line one\r\nline two\r\n\ttabbed\n",
        unique("utf8"): "p\u00e4ssw\u00f6rd \u6f22\u5b57 \U0001f511 <&>\"'",
    }
    for name, value in values.items():
        direct.create_secret(Name=name, SecretString=value)
        assert legacy.get_secret_value(SecretId=name)["SecretString"] == value
    binary = bytes(range(256))
    name = unique("bin")
    direct.create_secret(Name=name, SecretBinary=binary)
    assert legacy.get_secret_value(SecretId=name)["SecretBinary"] == binary


def test_a_binary_secret_written_through_the_proxy(legacy: Any, emulator: Any) -> None:
    name = unique("bin-write")
    binary = bytes(range(255, -1, -1))
    legacy.create_secret(Name=name, SecretBinary=binary)
    assert emulator.direct().get_secret_value(SecretId=name)["SecretBinary"] == binary


def test_a_64_kib_secret_string_by_post(legacy: Any, emulator: Any) -> None:
    name = unique("big")
    value = ("0123456789abcdef" * 4096)[:65536]
    legacy.create_secret(Name=name, SecretString=value)
    assert legacy.get_secret_value(SecretId=name)["SecretString"] == value


def test_an_upstream_error_keeps_its_status_and_code(proxy: ServerThread) -> None:
    r = get(proxy, "/?Action=GetSecretValue&SecretId=does-not-exist&Version=2017-10-17")
    err = parse_error(r.status, r.body)
    assert r.status == 404  # moto's not-found status (AWS: 400); the proxy keeps the upstream's
    assert err["Error"]["Code"] == "ResourceNotFoundException"
    assert err["Error"]["Type"] == "Sender"
    assert err["ResponseMetadata"]["RequestId"] == r.header("x-amzn-RequestId")


def test_healthz_and_readyz(proxy: ServerThread) -> None:
    assert get(proxy, "/healthz").status == 200
    deadline = time.monotonic() + 30
    while (r := get(proxy, "/readyz")).status != 200 and time.monotonic() < deadline:
        assert r.status == 503 and b"credentials" in r.body
        time.sleep(0.02)  # polling for the first AssumeRole, not waiting a fixed time
    assert r.status == 200, r.body
