"""Client headers have no power (docs/interface.md, "The upstream request"), seen from a recording upstream over verified TLS:
nothing the client sends in headers is forwarded or signed, the upstream host never comes from the request,
and the Host header sent is the host that was signed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from tests.checks import assert_error
from tests.integration.conftest import ACCESS_KEY, SECRET_KEY, SESSION_TOKEN, StartRecorded
from tests.recorder import Recorded, RecordingUpstream
from tests.support import raw_request

# Everything a client might send to steer or smuggle: credentials, AWS headers, cookies, proxy and
# forwarding headers, hop-by-hop headers and a header named in Connection.
HOSTILE = {
    "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAEVIL/20000101/us-east-1/secretsmanager/aws4_request, "
    "SignedHeaders=host, Signature=" + "0" * 64,
    "X-Amz-Date": "20000101T000000Z",
    "X-Amz-Security-Token": "evil-session-token",
    "X-Amz-Target": "secretsmanager.DeleteSecret",
    "X-Amz-Content-Sha256": "UNSIGNED-PAYLOAD",
    "X-Amz-User-Agent": "evil",
    "X-Amzn-Trace-Id": "Root=1-evil",
    "X-Amz-Meta-Thing": "evil",
    "Cookie": "session=evil",
    "Proxy-Authorization": "Basic ZXZpbDpldmls",
    "Proxy-Connection": "keep-alive",
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "http",
    "X-Forwarded-Port": "80",
    "Forwarded": "for=203.0.113.9;host=evil.example;proto=http",
    "Via": "1.1 evil",
    "Connection": "keep-alive, X-Hop-Secret",
    "X-Hop-Secret": "named-in-connection",
    "Keep-Alive": "timeout=5",
    "TE": "trailers",
    "Trailer": "X-Evil",
    "User-Agent": "evil-agent/1.0",
    "Accept-Encoding": "gzip, br",
    "Content-MD5": "evil",
    "Origin": "http://localhost:3000",  # a foreign Origin is refused (test_host_rule.py); a loopback one passes
    "Referer": "https://evil.example/",
    "X-Custom": "anything",
}

# What the proxy itself puts on an upstream request (signing.sign, upstream.AiohttpUpstream, aiohttp).
PROXY_HEADERS = {
    "host",
    "x-amz-target",
    "content-type",
    "x-amz-date",
    "x-amz-security-token",
    "authorization",
    "user-agent",
    "accept-encoding",
    "content-length",
}
SIGNED = ["content-type", "host", "x-amz-date", "x-amz-security-token", "x-amz-target"]

SIGNING_QUERY = (
    "AWSAccessKeyId=AKIAEVIL&Signature=abc&SignatureMethod=HmacSHA256&SignatureVersion=2&Timestamp=2000-01-01T00:00:00Z"
    "&Expires=2000-01-01T00:00:00Z&SecurityToken=evil&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEVIL"
    "&X-Amz-Date=20000101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=abc"
    "&X-Amz-Security-Token=evil"
)


def verify_signature(call: Recorded, upstream: RecordingUpstream) -> None:
    """Recompute SigV4 over what the upstream received (its Host header included) with botocore: it equals
    the Signature sent, so the Host on the wire is the host that was signed."""
    signed = call.signed_headers
    auth_header = call.header("Authorization") or ""
    request = AWSRequest(
        method=call.method,
        url=upstream.url + call.path,
        headers={k: v for k, v in call.headers if k.lower() in signed},
        data=call.body,
    )
    request.context["timestamp"] = call.header("X-Amz-Date")
    auth = SigV4Auth(ReadOnlyCredentials(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN), "secretsmanager", "us-east-1")
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    assert auth_header.endswith(f"Signature={expected}")
    assert f"Credential={ACCESS_KEY}/" in auth_header


def send(port: int, target: str, body: bytes | None = None, **extra: str) -> Any:
    headers = {"Host": f"127.0.0.1:{port}", **HOSTILE, **extra}
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    return raw_request(port, "POST" if body is not None else "GET", target, body, headers)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_client_headers_are_neither_forwarded_nor_signed(
    start_recorded: StartRecorded, recording: RecordingUpstream, method: str
) -> None:
    proxy = start_recorded()
    params = "Action=GetSecretValue&Version=2017-10-17&SecretId=app%2Fa"
    if method == "GET":
        resp = send(proxy.port, f"/?{params}&{SIGNING_QUERY}")
    else:
        resp = send(proxy.port, f"/?{SIGNING_QUERY}", params.encode())
    assert resp.status == 200, resp.body
    (call,) = recording.take()
    names = {k.lower() for k, _ in call.headers}
    assert names <= PROXY_HEADERS, names - PROXY_HEADERS
    assert call.signed_headers == SIGNED
    sent_values = {v for _, v in call.headers}
    for value in HOSTILE.values():
        assert value not in sent_values
    assert call.operation == "GetSecretValue"  # not the client's X-Amz-Target
    assert call.header("X-Amz-Security-Token") == SESSION_TOKEN
    assert call.header("Accept-Encoding") == "identity"
    assert call.header("Host") == recording.url.removeprefix("https://")
    assert json.loads(call.body) == {"SecretId": "app/a"}  # the app's signing parameters dropped
    verify_signature(call, recording)


def test_host_and_forwarding_headers_never_choose_the_upstream(
    start_recorded: StartRecorded, recording: RecordingUpstream
) -> None:
    """An allowed Host (allowed_hosts) and absolute-form targets still reach only the configured endpoint."""
    proxy = start_recorded(listen={"allowed_hosts": ["proxy.internal"]})
    resp = send(proxy.port, "/?Action=GetSecretValue&SecretId=app%2Fb", Host="proxy.internal:8977")
    assert resp.status == 200, resp.body
    for target in (
        "http://evil.example/?Action=GetSecretValue&SecretId=app%2Fc",
        f"https://127.0.0.1:{proxy.port}/?Action=GetSecretValue&SecretId=app%2Fd",
    ):
        resp = send(proxy.port, target)
        assert resp.status in (200, 400, 403, 404), resp.status
    for call in recording.take():
        assert call.header("Host") == recording.url.removeprefix("https://")
        assert call.path == "/"
        verify_signature(call, recording)


def test_a_host_not_allowed_is_denied_before_anything_else(
    start_recorded: StartRecorded, recording: RecordingUpstream
) -> None:
    proxy = start_recorded(listen={"allowed_hosts": ["proxy.internal"]})
    for host in ("evil.example", "proxy.internal.evil.example", "rebind.evil.example:8977", "192.0.2.1"):
        resp = send(proxy.port, "/?Action=GetSecretValue&SecretId=app%2Fa", Host=host)
        assert_error(resp, 403, "AccessDenied")
    assert recording.take() == []


def test_a_missing_host_header_is_denied(start_recorded: StartRecorded, recording: RecordingUpstream) -> None:
    proxy = start_recorded()
    import socket

    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /?Action=ListSecrets HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"403", head
    assert b"<Code>AccessDenied</Code>" in body
    assert recording.take() == []


def test_the_caller_token_is_not_forwarded(
    start_recorded: StartRecorded, recording: RecordingUpstream, tmp_path: Any
) -> None:
    (tmp_path / "token").write_text("the-caller-token")
    proxy = start_recorded(policy={"token_header": "X-Proxy-Token", "token_file": str(tmp_path / "token")})
    resp = send(proxy.port, "/?Action=GetSecretValue&SecretId=app%2Fa", **{"X-Proxy-Token": "the-caller-token"})
    assert resp.status == 200, resp.body
    (call,) = recording.take()
    assert {k.lower() for k, _ in call.headers} <= PROXY_HEADERS
    assert all("the-caller-token" not in v for _, v in call.headers) and b"the-caller-token" not in call.body
