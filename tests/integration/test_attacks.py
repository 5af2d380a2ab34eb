"""Attacks through the real listener: what an app (or anything else that reaches the loopback port) and a
hostile upstream can try, and the answer of docs/interface.md, "Errors" each must get. Never a 500, never a hang, never an
upstream call the rules deny, never a secret outside ``policy.allow_secrets``."""

from __future__ import annotations

import functools
import json
import re
import socket
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from proxy import parse
from proxy.credentials import REFUSED_AGAIN_SECONDS
from tests.fakeaws import FakeAWS
from tests.faults import JSON_TYPE, answer, raw_answer, secret_value, xml_error
from tests.support import raw_request, sdk_client

# ---------------------------------------------------------------------------------------------------------
# policy: an SDK's JSON call must not see more than a Query request does


@pytest.fixture
def hidden_secret(emulator: Any) -> Iterator[str]:
    """A secret outside ``demo/*``: the app must never see its value, or learn its name."""
    name = f"attack/hidden-{uuid.uuid4().hex[:6]}"
    emulator.direct().create_secret(Name=name, SecretString="value-outside-the-policy")
    yield name
    emulator.direct().delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


def test_sdk_batch_get_by_filter_returns_only_allowed_values(start_proxy: Any, hidden_secret: str) -> None:
    proxy = start_proxy(policy={"allow_secrets": ["demo/*"]})  # the default read-only actions
    out = sdk_client(proxy.url).batch_get_secret_value(Filters=[{"Key": "name", "Values": ["attack/", "demo/"]}])
    assert [v["Name"] for v in out["SecretValues"]] == ["demo/db-password"]
    assert "value-outside-the-policy" not in str(out)


def test_sdk_list_secrets_shows_only_allowed_secrets(start_proxy: Any, hidden_secret: str) -> None:
    proxy = start_proxy(policy={"allow_secrets": ["demo/*"]})
    listed = sdk_client(proxy.url).list_secrets(MaxResults=100)["SecretList"]
    assert [s["Name"] for s in listed] == ["demo/db-password"]
    assert all(isinstance(s["LastChangedDate"], type(listed[0]["LastChangedDate"])) for s in listed)


def test_sdk_answer_about_another_secret_is_not_found(start_proxy: Any, emulator: Any, hidden_secret: str) -> None:
    """A partial ARN that the pattern admits but AWS resolves to a secret outside it (docs/interface.md, "Policy"):
    answered as a secret that does not exist (tests/integration/test_partial_arns.py has the rest)."""
    proxy = start_proxy(policy={"allow_secrets": ["attack/hidden"]})
    arn = emulator.direct().describe_secret(SecretId=hidden_secret)["ARN"]
    partial = arn.rsplit("-", 1)[0]  # arn:...:secret:attack/hidden-xxxxxx: reads as the full ARN of attack/hidden
    with pytest.raises(ClientError) as denied:
        sdk_client(proxy.url).get_secret_value(SecretId=partial)
    assert denied.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert "value-outside-the-policy" not in str(denied.value.response)


# ---------------------------------------------------------------------------------------------------------
# a hostile upstream: every answer it can make ends in an answer of docs/interface.md, "Errors", never a 500 of the proxy's own

QUERY = "/?Action=GetSecretValue&Version=2017-10-17&SecretId=app%2Fdb"
DEEP = b"[" * 100_000


def query_error(proxy: Any) -> tuple[int, str, bytes]:
    resp = raw_request(proxy.port, "GET", QUERY)
    assert resp.header("Content-Type") == "text/xml", resp.body[:200]
    return resp.status, xml_error(resp.body)[1], resp.body


@pytest.mark.parametrize(
    ("status", "body", "want_status", "want_code"),
    [
        (400, b'{"__type": ' + DEEP, 400, "BadRequest"),  # nested past the recursion limit
        (500, b'{"__type": "x", "message": ' + DEEP + b"}", 500, "InternalFailure"),
        (200, b'{"Name": ' + DEEP + b"}", 502, "BadGateway"),
        (200, b'{"Name": "app/db", "SecretString": "s3cr3t",}', 502, "BadGateway"),  # not JSON: not an empty success
        (200, b'{"Name": 1' + b"0" * 5000 + b"}", 502, "BadGateway"),  # past int's digit limit
    ],
)
def test_hostile_json_bodies(
    start_fault: Any, start_fault_proxy: Any, status: int, body: bytes, want_status: int, want_code: str
) -> None:
    fault = start_fault(answer(status, body))
    proxy = start_fault_proxy(fault.url, upstream={"max_attempts": 1})
    got_status, code, raw = query_error(proxy)
    assert (got_status, code) == (want_status, want_code), raw[:300]
    assert b"s3cr3t" not in raw and b"failed unexpectedly" not in raw


def sdk_call(proxy: Any) -> Any:
    return raw_request(
        proxy.port,
        "POST",
        "/",
        body=b'{"SecretId": "app/db"}',
        headers={"Host": "127.0.0.1", "Content-Type": JSON_TYPE, "X-Amz-Target": "secretsmanager.GetSecretValue"},
    )


@pytest.mark.parametrize(
    "behaviour",
    [
        answer(302, {"__type": "Moved"}, headers={"Location": "https://evil.example/"}),
        answer(307, b"", headers={"Location": "https://evil.example/"}),
        answer(301, "<html>moved</html>", content_type="text/html", headers={"Location": "https://evil.example/"}),
        answer(101, b"", headers={"Upgrade": "websocket", "Connection": "Upgrade"}),
    ],
    ids=["302-json", "307-empty", "301-html", "101-upgrade"],
)
def test_redirects_and_upgrades_are_502_and_not_retried(
    start_fault: Any, start_fault_proxy: Any, behaviour: Any
) -> None:
    fault = start_fault(behaviour)
    proxy = start_fault_proxy(fault.url)  # max_attempts 3
    status, code, _ = query_error(proxy)
    assert (status, code) == (502, "BadGateway")
    assert len(fault.seen) == 1  # final: another attempt would meet the same answer
    sdk = sdk_call(proxy)
    assert (sdk.status, sdk.header("Location")) == (502, None)
    assert json.loads(sdk.body)["__type"] == "BadGateway"


@pytest.mark.parametrize(
    "request_id",
    [b"\xff\xfe<evil>&amp;", b"r" * 8000, b"id\x01with-control", b"two words"],
    ids=["not-utf8", "8000-chars", "control", "space"],
)
def test_an_odd_upstream_request_id_is_replaced_by_the_proxys_own(
    start_fault: Any, start_fault_proxy: Any, request_id: bytes
) -> None:
    body = json.dumps(secret_value()).encode()
    # Connection: close, since the fault closes after each answer: without it the second request may take the
    # pooled connection before the close is read, and with max_attempts 1 that race (not the id) would fail it
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nConnection: close\r\nx-amzn-RequestId: "
    fault = start_fault(raw_answer(head + request_id + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body))
    proxy = start_fault_proxy(fault.url, upstream={"max_attempts": 1})
    for resp in (raw_request(proxy.port, "GET", QUERY), sdk_call(proxy)):
        assert resp.status == 200, resp.body[:300]
        assert str(uuid.UUID(resp.header("x-amzn-RequestId") or "")) == resp.header("x-amzn-RequestId")


def test_an_upstream_header_with_a_control_character_is_not_relayed(start_fault: Any, start_fault_proxy: Any) -> None:
    body = json.dumps(secret_value()).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nX-Junk: a\x01b\r\nX-Fine: ok"
    fault = start_fault(raw_answer(head + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body))
    proxy = start_fault_proxy(fault.url, upstream={"max_attempts": 1})
    resp = sdk_call(proxy)
    assert resp.status == 200, resp.body[:300]
    assert (resp.header("X-Junk"), resp.header("X-Fine")) == (None, "ok")


# ---------------------------------------------------------------------------------------------------------
# HTTP framing: a body that never arrives must not hold a max_concurrent_requests slot for ever

FORM = b"Action=GetSecretValue&Version=2017-10-17&SecretId=app%2Fdb"
FORM_HEAD = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"


def read_answer(sock: socket.socket, timeout: float) -> bytes:
    """One answer with a Content-Length, head and body (fails the test after ``timeout`` s)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    "request_bytes",
    [
        FORM_HEAD + b"Content-Length: %d\r\n\r\n" % (len(FORM) + 50) + FORM,  # 50 bytes short
        FORM_HEAD + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(FORM) + FORM + b"\r\n",  # no last chunk
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-amz-json-1.1\r\n"
        b"X-Amz-Target: secretsmanager.GetSecretValue\r\nContent-Length: 100\r\n\r\n{",  # an SDK call
    ],
    ids=["short-content-length", "chunked-without-end", "sdk"],
)
def test_a_body_that_stops_arriving_is_408_and_frees_its_slot(
    start_fault: Any, start_fault_proxy: Any, monkeypatch: pytest.MonkeyPatch, request_bytes: bytes
) -> None:
    monkeypatch.setattr(parse, "BODY_TIMEOUT_SECONDS", 0.5, raising=False)
    fault = start_fault(answer(200, secret_value()))
    proxy = start_fault_proxy(fault.url, limits={"max_concurrent_requests": 1})
    with socket.create_connection(("127.0.0.1", proxy.port)) as stalled:
        stalled.sendall(request_bytes)
        started = time.monotonic()
        answer_bytes = read_answer(stalled, timeout=10)
    assert time.monotonic() - started < 5
    assert answer_bytes.startswith(b"HTTP/1.1 408 "), answer_bytes[:300]
    assert b"RequestTimeout" in answer_bytes
    assert raw_request(proxy.port, "GET", QUERY).status == 200  # the one slot is free again
    assert len(fault.seen) == 1


# ---------------------------------------------------------------------------------------------------------
# credentials: an upstream that refuses every session must not turn each request into an STS call


def test_an_upstream_answering_expired_token_forever_does_not_flood_sts(aws: FakeAWS) -> None:
    aws.env_keys()
    proxy = aws.start_proxy(credentials={"role_arn": FakeAWS.ROLE_ARN})
    aws.ok(proxy)
    fetched = len(aws.sts.issued())
    expired = (400, "ExpiredTokenException", "The security token included in the request is expired")
    aws.upstream.fail_next.extend([expired] * 100)
    for _ in range(20):
        resp = aws.get_secret(proxy)
        assert (resp.status, xml_error(resp.body)[1]) == (400, "ExpiredTokenException")
    assert len(aws.sts.issued()) == fetched + 1  # one refresh for the first refusal, none per request after it
    assert aws.get(proxy, "/readyz").status == 200
    aws.advance(REFUSED_AGAIN_SECONDS)  # later, a refusal may be about age again: one more refresh
    aws.get_secret(proxy)
    assert len(aws.sts.issued()) == fetched + 2
    aws.upstream.fail_next.clear()
    aws.ok(proxy)


# ---------------------------------------------------------------------------------------------------------
# Host: an absolute-form target names the host a server must go by (RFC 9112 section 3.2.2)


@pytest.mark.parametrize(
    ("target_host", "status"),
    [("evil.example", 403), ("127.0.0.1.nip.io", 403), ("EVIL.example:8977", 403), ("127.0.0.1", 200), ("[::1]", 200)],
)
def test_an_absolute_form_target_must_name_an_allowed_host(
    start_fault: Any, start_fault_proxy: Any, target_host: str, status: int
) -> None:
    fault = start_fault(answer(200, secret_value()))
    proxy = start_fault_proxy(fault.url)
    resp = raw_request(proxy.port, "GET", f"http://{target_host}{QUERY}", headers={"Host": "127.0.0.1"})
    assert resp.status == status, resp.body[:300]
    if status == 403:
        assert xml_error(resp.body)[1] == "AccessDenied"
        assert fault.seen == []


# ---------------------------------------------------------------------------------------------------------
# bombs (these held before; kept so they keep holding)

LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10))
    + b"]><ErrorResponse><Error><Code>&lol9;</Code><Message>&lol9;</Message></Error></ErrorResponse>"
)


@functools.cache
def gzip_of_zeros(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    return b"".join(packer.compress(block) for _ in range(size >> 20)) + packer.flush()


def test_billion_laughs_in_an_error_body(start_fault: Any, start_fault_proxy: Any) -> None:
    fault = start_fault(answer(400, LAUGHS, content_type="text/xml"))
    proxy = start_fault_proxy(fault.url)
    status, code, _ = query_error(proxy)
    assert (status, code) == (400, "BadRequest")  # expat refuses the expansion: no code read from the body


@pytest.mark.parametrize("status", [200, 500])
def test_a_1_gib_gzip_bomb_is_response_too_large(start_fault: Any, start_fault_proxy: Any, status: int) -> None:
    fault = start_fault(answer(status, gzip_of_zeros(1 << 30), headers={"Content-Encoding": "gzip"}))
    proxy = start_fault_proxy(fault.url, upstream={"max_attempts": 1})
    assert query_error(proxy)[:2] == (502, "ResponseTooLarge")
