"""docs/interface.md, "Errors", row by row, through the real listener (served as the CLI serves it, plain HTTP and HTTPS):
each error the proxy raises itself is the right status and Code, parses with botocore's QueryParser as an
ErrorResponse, carries one request id (XML and ``x-amzn-RequestId``), and made no upstream call.

Rows whose mechanism belongs to other work (503 concurrency and credentials, 502/504 upstream faults) are
tested with that work.
"""

from __future__ import annotations

import gzip
import http.client
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from proxy.app import create_app
from proxy.credentials import static_fetch
from tests.checks import assert_error
from tests.faults import answer
from tests.integration.conftest import ACCESS_KEY, SECRET_KEY, SESSION_TOKEN
from tests.recorder import RecordingUpstream, recorder_config
from tests.serving import Served
from tests.support import RawResponse, raw_request

TOKEN = "caller-token-3f9a0c"
TOKEN_HEADER = "X-Proxy-Token"
Q = "Version=2017-10-17"


@dataclass
class Listener:
    served: Served
    upstream: RecordingUpstream
    ssl_context: ssl.SSLContext | None

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: bool = True,
    ) -> RawResponse:
        sent = {"Host": f"127.0.0.1:{self.served.port}", **({TOKEN_HEADER: TOKEN} if token else {})}
        sent.update(headers or {})
        return raw_request(self.served.port, method, target, body, sent, ssl_context=self.ssl_context)


@pytest.fixture(scope="module", params=["http", "https"])
def listener(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, listener_tls: dict[str, str]
) -> Iterator[Listener]:
    root = tmp_path_factory.mktemp("errors")
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    tls = request.param == "https"
    with RecordingUpstream(str(root)) as upstream, pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_CONFIG_FILE", str(root / "none"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(root / "none"))
        cfg = recorder_config(
            upstream,
            listen={"tls": {"cert_file": listener_tls["cert_file"], "key_file": listener_tls["key_file"]}}
            if tls
            else {},
            policy={"allow_secrets": ["app/*"], "token_header": TOKEN_HEADER, "token_file": str(token_file)},
            limits={"max_parameters": 8, "max_list_members": 5},
        )
        fetch = static_fetch(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN)
        with Served(cfg, lambda: create_app(cfg, fetch=fetch)) as served:
            client_ctx = ssl.create_default_context(cafile=listener_tls["ca_file"]) if tls else None
            yield Listener(served, upstream, client_ctx)


@pytest.fixture
def proxy(listener: Listener) -> Iterator[Listener]:
    listener.upstream.take()
    yield listener
    assert listener.upstream.take() == [], "a request the rules deny reached the upstream"


def get(params: str) -> str:
    return f"/?{params}"


FORM = {"Content-Type": "application/x-www-form-urlencoded"}

# (id, method, target, body, extra headers, status, code)
ROWS: list[tuple[str, str, str, bytes | None, dict[str, str], int, str]] = [
    ("put", "PUT", get(f"Action=ListSecrets&{Q}"), b"", {}, 405, "MethodNotAllowed"),
    ("delete", "DELETE", "/", None, {}, 405, "MethodNotAllowed"),
    ("patch-form", "PATCH", "/", b"Action=ListSecrets", FORM, 405, "MethodNotAllowed"),
    ("other-path", "GET", f"/secrets?Action=ListSecrets&{Q}", None, {}, 404, "NotFound"),
    ("path-healthz-post", "POST", "/healthz", b"", FORM, 404, "NotFound"),
    ("text-plain", "POST", "/", b"Action=ListSecrets", {"Content-Type": "text/plain"}, 415, "UnsupportedMediaType"),
    ("no-content-type", "POST", "/", b"Action=ListSecrets", {}, 415, "UnsupportedMediaType"),
    (
        "gzip-body",
        "POST",
        "/",
        gzip.compress(b"Action=ListSecrets", mtime=0),
        {**FORM, "Content-Encoding": "gzip"},
        415,
        "UnsupportedMediaType",
    ),
    (
        "gzip-garbage",
        "POST",
        "/",
        b"Action=ListSecrets",
        {**FORM, "Content-Encoding": "gzip"},
        415,
        "UnsupportedMediaType",
    ),
    (
        "json-without-target",  # AWS JSON 1.1 without X-Amz-Target is neither a form nor an SDK call
        "POST",
        "/",
        b"{}",
        {"Content-Type": "application/x-amz-json-1.1"},
        415,
        "UnsupportedMediaType",
    ),
    (
        "target-too-long",
        "GET",
        get(f"Action=ListSecrets&{Q}&NextToken=" + "a" * 2048),
        None,
        {},
        414,
        "RequestURITooLong",
    ),
    (
        "bad-escape-query",
        "GET",
        get(f"Action=GetSecretValue&{Q}&SecretId=app%2"),
        None,
        {},
        400,
        "MalformedQueryString",
    ),
    ("bad-hex-query", "GET", get(f"Action=GetSecretValue&{Q}&SecretId=%zzapp"), None, {}, 400, "MalformedQueryString"),
    (
        "not-utf8-query",
        "GET",
        get(f"Action=GetSecretValue&{Q}&SecretId=app%2F%FF"),
        None,
        {},
        400,
        "MalformedQueryString",
    ),
    ("not-utf8-body", "POST", "/", b"Action=GetSecretValue&SecretId=app/%C3%28", FORM, 400, "MalformedQueryString"),
    ("bad-escape-body", "POST", "/", b"Action=GetSecretValue&SecretId=app/%", FORM, 400, "MalformedQueryString"),
    ("no-action", "GET", get(f"{Q}&SecretId=app/a"), None, {}, 400, "MissingAction"),
    ("empty-action", "GET", get(f"Action=&{Q}"), None, {}, 400, "MissingAction"),
    ("empty-form", "POST", "/", b"", FORM, 400, "MissingAction"),
    ("unknown-action", "GET", get(f"Action=GetSecretValues&{Q}"), None, {}, 400, "InvalidAction"),
    ("action-twice", "GET", get(f"Action=ListSecrets&Action=DeleteSecret&{Q}"), None, {}, 400, "InvalidParameterValue"),
    ("old-version", "GET", "/?Action=ListSecrets&Version=2010-05-08", None, {}, 400, "NoSuchVersion"),
    ("unknown-parameter", "GET", get(f"Action=ListSecrets&{Q}&Bogus=1"), None, {}, 400, "UnknownParameter"),
    (
        "unknown-nested",
        "GET",
        get(f"Action=ListSecrets&{Q}&Filters.member.1.Colour=red"),
        None,
        {},
        400,
        "UnknownParameter",
    ),
    ("missing-required", "GET", get(f"Action=GetSecretValue&{Q}"), None, {}, 400, "InvalidParameterException"),
    ("wrong-type", "GET", get(f"Action=ListSecrets&{Q}&MaxResults=ten"), None, {}, 400, "InvalidParameterException"),
    ("out-of-range", "GET", get(f"Action=ListSecrets&{Q}&MaxResults=101"), None, {}, 400, "InvalidParameterException"),
    (
        "bad-boolean",
        "GET",
        get(f"Action=ListSecrets&{Q}&IncludePlannedDeletion=yes"),
        None,
        {},
        400,
        "InvalidParameterException",
    ),
    (
        "index-gap",
        "GET",
        get(f"Action=BatchGetSecretValue&{Q}&SecretIdList.member.1=app/a&SecretIdList.member.3=app/c"),
        None,
        {},
        400,
        "InvalidParameterValue",
    ),
    (
        "index-zero",
        "GET",
        get(f"Action=BatchGetSecretValue&{Q}&SecretIdList.member.0=app/a"),
        None,
        {},
        400,
        "InvalidParameterValue",
    ),
    (
        "over-max-list-members",
        "GET",
        get(f"Action=BatchGetSecretValue&{Q}&" + "&".join(f"SecretIdList.member.{i}=app/{i}" for i in range(1, 7))),
        None,
        {},
        400,
        "InvalidParameterValue",
    ),
    (
        "over-max-parameters",
        "POST",
        "/",
        ("Action=ListSecrets&" + "&".join(f"Filters.member.1.Values.member.{i}=v" for i in range(1, 10))).encode(),
        FORM,
        400,
        "InvalidParameterValue",
    ),
    (
        "parameter-twice",
        "GET",
        get(f"Action=GetSecretValue&{Q}&SecretId=app/a&SecretId=app/b"),
        None,
        {},
        400,
        "InvalidParameterValue",
    ),
    ("denied-action", "GET", get(f"Action=DeleteSecret&{Q}&SecretId=app/a"), None, {}, 403, "AccessDenied"),
    (
        "denied-write-post",
        "POST",
        "/",
        b"Action=PutSecretValue&SecretId=app/a&SecretString=x",
        FORM,
        403,
        "AccessDenied",
    ),
    ("denied-secret", "GET", get(f"Action=GetSecretValue&{Q}&SecretId=prod/db"), None, {}, 403, "AccessDenied"),
    (
        "denied-secret-arn",
        "GET",
        get(
            f"Action=GetSecretValue&{Q}&SecretId="
            + quote("arn:aws:secretsmanager:us-east-1:1:secret:prod/db-AbCdEf", "")
        ),
        None,
        {},
        403,
        "AccessDenied",
    ),
    (
        "denied-one-of-list",
        "GET",
        get(f"Action=BatchGetSecretValue&{Q}&SecretIdList.member.1=app/a&SecretIdList.member.2=prod/b"),
        None,
        {},
        403,
        "AccessDenied",
    ),
    ("wrong-token", "GET", get(f"Action=ListSecrets&{Q}"), None, {TOKEN_HEADER: TOKEN + "x"}, 403, "AccessDenied"),
    ("empty-token", "GET", get(f"Action=ListSecrets&{Q}"), None, {TOKEN_HEADER: ""}, 403, "AccessDenied"),
    ("foreign-host", "GET", get(f"Action=ListSecrets&{Q}"), None, {"Host": "attacker.example"}, 403, "AccessDenied"),
    ("foreign-host-port", "GET", get(f"Action=ListSecrets&{Q}"), None, {"Host": "evil.test:8977"}, 403, "AccessDenied"),
    ("ip-not-loopback", "GET", get(f"Action=ListSecrets&{Q}"), None, {"Host": "10.0.0.1"}, 403, "AccessDenied"),
]


@pytest.mark.parametrize(
    ("method", "target", "body", "headers", "status", "code"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_spec_error_row(
    proxy: Listener, method: str, target: str, body: bytes | None, headers: dict[str, str], status: int, code: str
) -> None:
    assert_error(proxy.request(method, target, body, headers), status, code)


def test_100000_pairs_are_refused_on_their_count(proxy: Listener) -> None:
    body = f"Action=ListSecrets&{Q}&".encode() + b"a&" * 100_000  # 200 KB, under limits.max_body_bytes
    error = assert_error(proxy.request("POST", "/", body, FORM), 400, "InvalidParameterValue")
    # the count rule, not "parameter a is given more than once" found while decoding them
    assert error["Message"] == "more than limits.max_parameters (8) parameters in one request"


def chunked(body: bytes, size: int = 4096) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_signing_parameters_repeated_to_pad_a_chunked_body_are_refused_on_their_count(proxy: Listener) -> None:
    # limits.max_parameters 8: at most 2 * 8 + 16 pairs in all, Action, Version and signing parameters included
    over = f"Action=ListSecrets&{Q}&".encode() + b"Signature=&" * 20_000  # 220 KB, under limits.max_body_bytes
    headers = {**FORM, "Transfer-Encoding": "chunked"}
    error = assert_error(proxy.request("POST", "/", chunked(over), headers), 400, "InvalidParameterValue")
    assert error["Message"] == "more than limits.max_parameters (8) parameters in one request"
    # within the bound, split over the query string and a chunked body: dropped, never an error
    within = b"&".join(b"SecretId=app%2Fa" if i == 0 else b"X-Amz-Date=x" for i in range(30))  # 32 pairs in all
    resp = proxy.request("POST", get(f"Action=DescribeSecret&{Q}"), chunked(within, 64), headers)
    assert resp.status == 200, resp.body[:300]
    assert [call.operation for call in proxy.upstream.take()] == ["DescribeSecret"]


def test_missing_token_is_access_denied(proxy: Listener) -> None:
    error = assert_error(proxy.request("GET", get(f"Action=ListSecrets&{Q}"), token=False), 403, "AccessDenied")
    assert TOKEN_HEADER in error["Message"]


def test_body_over_limit_by_content_length(proxy: Listener) -> None:
    body = b"Action=ListSecrets&NextToken=" + b"a" * 262144
    assert_error(proxy.request("POST", "/", body, FORM), 413, "RequestEntityTooLarge")


def test_body_over_limit_announced_only(proxy: Listener) -> None:
    """A Content-Length over the limit is refused before any of the body is read."""
    sent = {"Host": f"127.0.0.1:{proxy.served.port}", TOKEN_HEADER: TOKEN, **FORM, "Content-Length": "10000000"}
    conn = _connection(proxy)
    try:
        conn.putrequest("POST", "/", skip_host=True, skip_accept_encoding=True)
        for k, v in sent.items():
            conn.putheader(k, v)
        conn.endheaders(b"Action=ListSecrets")
        resp = conn.getresponse()
        assert_error(RawResponse(resp.status, dict(resp.getheaders()), resp.read()), 413, "RequestEntityTooLarge")
    finally:
        conn.close()


def _connection(proxy: Listener) -> http.client.HTTPConnection:
    if proxy.ssl_context is not None:
        return http.client.HTTPSConnection("127.0.0.1", proxy.served.port, timeout=30, context=proxy.ssl_context)
    return http.client.HTTPConnection("127.0.0.1", proxy.served.port, timeout=30)


def _chunked(proxy: Listener, chunks: list[bytes]) -> RawResponse:
    conn = _connection(proxy)
    try:
        conn.request(
            "POST",
            "/",
            body=iter(chunks),
            headers={TOKEN_HEADER: TOKEN, **FORM, "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        return RawResponse(resp.status, dict(resp.getheaders()), resp.read())
    finally:
        conn.close()


def test_chunked_body_over_limit(proxy: Listener) -> None:
    """No announced length: reading stops at the limit and the answer is 413."""
    chunks = [b"Action=ListSecrets&NextToken="] + [b"a" * 16384] * 17  # 278 KiB > 256 KiB
    assert_error(_chunked(proxy, chunks), 413, "RequestEntityTooLarge")


def test_chunked_body_under_limit_is_served(proxy: Listener) -> None:
    resp = _chunked(proxy, [b"Action=GetSecretValue&", b"SecretId=app%2Fchunked"])
    assert resp.status == 200, resp.body
    (call,) = proxy.upstream.take()
    assert call.json()["SecretId"] == "app/chunked"


def test_target_of_exactly_the_limit_passes(proxy: Listener) -> None:
    """``max_get_url_bytes`` is measured on the raw target; a target of exactly the limit passes (docs/interface.md, "HTTP endpoints")."""
    head = f"/?Action=GetSecretValue&{Q}&SecretId=app%2F"
    target = head + "x" * (2048 - len(head))
    assert len(target) == 2048
    resp = proxy.request("GET", target)
    assert resp.status == 200, resp.body
    assert proxy.upstream.take()[0].json()["SecretId"] == "app/" + "x" * (2048 - len(head))
    error = assert_error(proxy.request("GET", target + "x"), 414, "RequestURITooLong")
    assert "POST" in error["Message"]


def test_target_limit_counts_raw_bytes_not_decoded(proxy: Listener) -> None:
    """Percent-escapes count as sent (three bytes each), not decoded."""
    head = f"/?Action=GetSecretValue&{Q}&SecretId=app%2F"
    target = head + "%41" * ((2049 - len(head)) // 3 + 1)
    assert len(target) > 2048
    assert_error(proxy.request("GET", target), 414, "RequestURITooLong")


# Just over the parser's limits (app.py: 16384-byte fields, 8190-byte request line): a request much larger
# than the limit is cut off mid-send, and the reset can swallow the 4xx before the client reads it.
def test_oversized_header_gets_a_clean_4xx(proxy: Listener) -> None:
    """Headers the HTTP parser refuses are answered by the parser with a 4xx, never a hang or a 5xx."""
    resp = proxy.request("GET", get(f"Action=ListSecrets&{Q}"), headers={"X-Padding": "p" * 17000})
    assert 400 <= resp.status < 500, resp.status


def test_oversized_request_line_gets_a_clean_4xx(proxy: Listener) -> None:
    resp = proxy.request("GET", get(f"Action=ListSecrets&{Q}&NextToken=" + "a" * 9000))
    assert 400 <= resp.status < 500, resp.status


def test_allowed_request_passes_every_rule(proxy: Listener) -> None:
    """The control: the same listener serves an allowed request (so the denials above are the rules')."""
    resp = proxy.request("GET", get(f"Action=GetSecretValue&{Q}&SecretId=app%2Fa"), headers={"Host": "localhost"})
    assert resp.status == 200, resp.body
    assert (resp.header("Content-Type") or "").startswith("text/xml")
    (call,) = proxy.upstream.take()
    assert call.operation == "GetSecretValue"


def test_admin_endpoints_need_no_token(proxy: Listener) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        resp = proxy.request("GET", path, token=False)
        assert resp.status == 200, (path, resp.status, resp.body)


# ---------------------------------------------------------------------------------------------------------
# timestamps that parse but cannot be sent


@pytest.mark.parametrize("value", ["1e400", "inf", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_an_unsendable_timestamp_is_a_validation_error_not_a_500(
    start_fault: Any, start_fault_proxy: Any, value: str
) -> None:
    """KMS's ImportKeyMaterial takes a timestamp (``ValidTo``). A value botocore's parser gives up on with a
    RuntimeError (``1e400``, ``inf``), or a date that leaves datetime's range once moved to UTC, is the caller's
    mistake: 400 with the service's validation code, on the Query and the SDK path, and nothing is sent."""
    fault = start_fault(answer(200, {}))
    proxy = start_fault_proxy(fault.url, upstream={"service": "kms"}, policy={"allow_actions": ["ImportKeyMaterial"]})
    params = {"KeyId": "k", "ImportToken": "eA==", "EncryptedKeyMaterial": "eQ==", "ValidTo": value}
    sdk = raw_request(
        proxy.port,
        "POST",
        "/",
        json.dumps(params).encode(),
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ImportKeyMaterial"},
    )
    assert sdk.status == 400, sdk.body
    assert json.loads(sdk.body)["__type"] == "ValidationException" and b"ValidTo" in sdk.body
    query = raw_request(
        proxy.port, "GET", "/?Action=ImportKeyMaterial&" + urlencode(params), headers={"Host": "127.0.0.1"}
    )
    assert query.status == 400, query.body
    assert b"<Code>ValidationException</Code>" in query.body and b"ValidTo" in query.body
    assert fault.seen == []
