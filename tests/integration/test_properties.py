"""Property tests (hypothesis) through the real listener against a recording upstream: arbitrary query strings,
form bodies and header sets never get a 500, every answer the application writes is well-formed XML with one
request id, and no upstream call is ever made that the rules deny.

The oracle for "denied" is written here from docs/interface.md, "Policy", independently of proxy.policy: with the
default ``allow_actions`` only ``Get*``/``Describe*``/``List*``/``BatchGet*`` operations may reach the upstream,
with ``allow_secrets: [app/*]`` only secrets named ``app/...`` (or ARNs of them), and only for requests that
carry the caller token and an allowed Host. The example budget is fixed (CI time stays small).
"""

from __future__ import annotations

import http.client
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.checks import parse_error
from tests.integration.conftest import StartRecorded
from tests.recorder import Recorded, RecordingUpstream
from tests.support import RawResponse, ServerThread

TOKEN = "prop-token-0123456789"
TOKEN_HEADER = "X-Proxy-Token"
BUDGET = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
_ARN = re.compile(r"^arn:[\w-]+:secretsmanager:[\w-]*:\d*:secret:(?P<name>.+?)(?:-[A-Za-z0-9]{6})?$")


# --- the independent oracle ------------------------------------------------------------------------------


def allowed_secret(value: str) -> bool:
    m = _ARN.match(value)
    return value.startswith("app/") or (m is not None and m["name"].startswith("app/"))


def named_secrets(body: Any) -> list[str]:
    """Every string under a key that names a secret in Secrets Manager's inputs."""
    found: list[str] = []
    if isinstance(body, dict):
        for key, value in body.items():
            if key in ("SecretId", "Name", "CrossAccountPrimaryARN", "CrossAccountReplicaARN") and isinstance(
                value, str
            ):
                found.append(value)
            elif key == "SecretIdList" and isinstance(value, list):
                found.extend(v for v in value if isinstance(v, str))
            else:
                found.extend(named_secrets(value))
    elif isinstance(body, list):
        for item in body:
            found.extend(named_secrets(item))
    return found


def assert_allowed_call(call: Recorded) -> None:
    assert call.operation.startswith(("Get", "Describe", "List", "BatchGet")), call.operation
    for secret in named_secrets(call.json()):
        assert allowed_secret(secret), secret


# --- a raw HTTP/1.1 client: any bytes in the target, any header set ------------------------------------------


def send(
    port: int, method: str, target: bytes, headers: list[tuple[str, str]], body: bytes | None = None
) -> RawResponse:
    lines = [method.encode() + b" " + target + b" HTTP/1.1"]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}".encode())
    lines.append(b"Connection: close")
    data = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        return RawResponse(resp.status, dict(resp.getheaders()), resp.read())


@dataclass
class Prop:
    proxy: ServerThread
    upstream: RecordingUpstream

    def check(self, resp: RawResponse, method: str, may_reach_upstream: bool) -> None:
        calls = self.upstream.take()
        codes = re.findall(rb"<Code>(.*?)</Code>", resp.body)[:1]
        event(f"{resp.status} {codes[0].decode() if codes else resp.body[:40]!r} calls={len(calls)}")
        assert resp.status != 500, resp.body[:300]
        if resp.status >= 500:
            # the recording upstream is healthy: the only 5xx is a value its echo made that XML cannot carry
            assert codes == [b"UnrepresentableValue"] and len(calls) == 1, (resp.status, resp.body[:300])
        assert len(calls) <= 1
        for call in calls:
            assert may_reach_upstream, "a request without the token or with a foreign Host reached the upstream"
            assert_allowed_call(call)
        content_type = resp.header("Content-Type") or ""
        if not content_type.startswith("text/xml"):
            # only the HTTP parser answers before the application (docs/interface.md, "Errors"): a 4xx in plain text
            assert 400 <= resp.status < 500 and not calls, (resp.status, resp.headers)
            return
        if method == "HEAD":
            return
        root = ElementTree.fromstring(resp.body)  # well-formed XML
        request_id = resp.header("x-amzn-RequestId")
        assert request_id
        if resp.status >= 300:
            assert root.tag == "ErrorResponse"
            parsed = parse_error(resp)
            assert parsed["Error"]["Code"] and parsed["ResponseMetadata"]["RequestId"] == request_id
        else:
            ns = {"q": root.tag.partition("}")[0][1:]}
            assert root.find("q:ResponseMetadata/q:RequestId", ns) is not None
            # a success came from the upstream, except a listing whose filter no allowed secret can match: the
            # proxy answers it empty itself (docs/interface.md, "Policy")
            listing = root.tag.rpartition("}")[2] in ("ListSecretsResponse", "BatchGetSecretValueResponse")
            assert len(calls) == 1 or (listing and not calls), (root.tag, len(calls))


@pytest.fixture
def prop(start_recorded: StartRecorded, recording: RecordingUpstream, tmp_path: Path) -> Iterator[Prop]:
    (tmp_path / "token").write_text(TOKEN)
    proxy = start_recorded(
        policy={"allow_secrets": ["app/*"], "token_header": TOKEN_HEADER, "token_file": str(tmp_path / "token")},
        limits={"max_parameters": 40, "max_list_members": 8},
    )
    yield Prop(proxy, recording)


# --- strategies ----------------------------------------------------------------------------------------


def mostly(likely: st.SearchStrategy[Any], other: st.SearchStrategy[Any], odds: int = 4) -> st.SearchStrategy[Any]:
    """``likely`` about ``odds`` times in ``odds + 1`` (one_of would weigh the two alike)."""
    return st.integers(0, odds).flatmap(lambda i: likely if i < odds else other)


ACTIONS = mostly(
    st.sampled_from(["GetSecretValue", "BatchGetSecretValue", "ListSecrets", "DescribeSecret", "ListSecretVersionIds"]),
    st.sampled_from(["GetRandomPassword", "PutSecretValue", "DeleteSecret", "CreateSecret", "UpdateSecret",
                     "RotateSecret", "TagResource", "getsecretvalue", "", "Bogus"]),
)  # fmt: skip
SECRETS = st.sampled_from(
    ["app/a", "app/b", "prod/x", "app", "app/", "apps/a", "arn:aws:secretsmanager:us-east-1:1:secret:app/a-AbCdEf",
     "arn:aws:secretsmanager:us-east-1:1:secret:prod/x-AbCdEf", "arn:aws:secretsmanager:us-east-1:1:secret:app/a",
     "arn:aws:secretsmanager:us-east-1:1:secret:prod/app/a", "app/a/../../prod/x", "APP/a", " app/a", "app/a\x00"]
)  # fmt: skip
NAMES = mostly(
    st.sampled_from(
        ["SecretId", "VersionId", "VersionStage", "SecretIdList.member.1", "SecretIdList.member.2",
         "SecretIdList.member.3", "SecretIdList.member.0", "Filters.member.1.Key", "Filters.member.1.Values.member.1",
         "MaxResults", "NextToken", "IncludePlannedDeletion", "SortOrder", "SecretString", "Name", "Version",
         "Action", "X-Amz-Signature", "AWSAccessKeyId", "Tags.member.1.Key", "SecretId.x", "", "a..b"]
    ),
    st.text(min_size=1, max_size=12),
)  # fmt: skip
VALUES = mostly(
    SECRETS | st.sampled_from(["2017-10-17", "true", "10", "-1", "name", "desc", "AWSCURRENT", ""]),
    st.text(max_size=20),
)


@st.composite
def encoded(draw: st.DrawFn, text: str) -> bytes:
    """``text`` percent-encoded, sometimes with a plus for a space, sometimes raw (when it can go raw in a
    request line), rarely broken."""
    how = draw(mostly(st.sampled_from(["quote", "quote", "plus", "raw"]), st.just("broken"), odds=15))
    if how == "plus":
        return quote(text, safe="/ ").replace(" ", "+").encode()
    if how == "raw" and re.fullmatch(r"[!-~]*", text) and not set("&=#%") & set(text):
        return text.encode()
    if how == "broken":
        broken = draw(st.sampled_from([b"%", b"%Z", b"%zz", b"%FF", b"%C3%28", b"%ED%A0%80", b"\xff"]))
        return quote(text, safe="").encode() + broken
    return quote(text, safe="").encode()


TAKES_SECRET_ID = {"GetSecretValue", "DescribeSecret", "ListSecretVersionIds", "PutSecretValue", "DeleteSecret",
                   "UpdateSecret", "RotateSecret", "TagResource", "getsecretvalue", "Bogus"}  # fmt: skip


@st.composite
def query(draw: st.DrawFn) -> bytes:
    """A Query parameter string: an Action, maybe a Version, the secrets it may name, then noise."""
    action = draw(ACTIONS)
    pairs = [(b"Action", draw(encoded(action)))]
    if draw(st.booleans()):
        pairs.append((b"Version", draw(mostly(st.just(b"2017-10-17"), st.sampled_from([b"2010-05-08", b""])))))
    if action in TAKES_SECRET_ID and draw(mostly(st.just(True), st.just(False))):
        pairs.append((b"SecretId", draw(encoded(draw(SECRETS)))))
    if action == "BatchGetSecretValue":
        if draw(st.booleans()):
            for i in range(1, draw(st.integers(1, 3)) + 1):
                pairs.append((f"SecretIdList.member.{i}".encode(), draw(encoded(draw(SECRETS)))))
        else:
            pairs.append((b"Filters.member.1.Key", b"name"))
            pairs.append((b"Filters.member.1.Values.member.1", draw(encoded(draw(SECRETS)))))
    for name, value in draw(mostly(st.just([]), st.lists(st.tuples(NAMES, VALUES), max_size=3), odds=2)):
        pairs.append((draw(encoded(name)), draw(encoded(value))))
    order = draw(st.permutations(pairs))
    sep = draw(mostly(st.just(b"&"), st.sampled_from([b"&&", b";"]), odds=9))
    return sep.join(k if draw(st.integers(0, 29)) == 0 else k + b"=" + v for k, v in order)


RAW_QUERY = st.binary(max_size=200).map(lambda b: bytes(c for c in b if c not in b" \r\n\t#"))


def valid_headers(port: int) -> list[tuple[str, str]]:
    return [("Host", f"127.0.0.1:{port}"), (TOKEN_HEADER, TOKEN)]


# --- properties ------------------------------------------------------------------------------------------


@BUDGET
@given(q=mostly(query(), RAW_QUERY), path=mostly(st.just(b"/"), st.sampled_from([b"//", b"/x", b"/%2F", b"/./"])))
def test_any_query_string(prop: Prop, q: bytes, path: bytes) -> None:
    resp = send(prop.proxy.port, "GET", path + b"?" + q, valid_headers(prop.proxy.port))
    prop.check(resp, "GET", may_reach_upstream=True)


FORM_TYPES = mostly(
    st.sampled_from(["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8",
                     "APPLICATION/X-WWW-FORM-URLENCODED"]),
    st.sampled_from(["text/plain", "application/x-amz-json-1.1", "multipart/form-data", ""]),
)  # fmt: skip


@BUDGET
@given(
    body=mostly(query(), st.binary(max_size=300)),
    content_type=FORM_TYPES,
    q=st.sampled_from([b"", b"Version=2017-10-17"]),
)
def test_any_form_body(prop: Prop, body: bytes, content_type: str, q: bytes) -> None:
    headers = valid_headers(prop.proxy.port)
    if content_type:
        headers.append(("Content-Type", content_type))
    resp = send(prop.proxy.port, "POST", b"/?" + q if q else b"/", headers, body)
    prop.check(resp, "POST", may_reach_upstream=True)


HEADER_NAMES = st.sampled_from(
    ["Authorization", "X-Amz-Target", "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-Sha256", "Cookie",
     "Proxy-Authorization", "X-Forwarded-For", "X-Forwarded-Host", "Forwarded", "Connection", "Keep-Alive", "TE",
     "Trailer", "Upgrade", "Accept-Encoding", "Content-Encoding", "Content-Type", "Expect", "X-Http-Method-Override",
     "User-Agent", "Host", TOKEN_HEADER, "x-proxy-token", "Via", "Origin"]
) | st.from_regex(r"\A[A-Za-z0-9-]{1,20}\Z")  # fmt: skip
HEADER_VALUES = st.sampled_from(
    [TOKEN, TOKEN + " ", "localhost", "127.0.0.1", "evil.example", "gzip", "identity", "close", "keep-alive",
     "Upgrade", "websocket", "100-continue", "application/x-www-form-urlencoded", "application/x-amz-json-1.1",
     "secretsmanager.DeleteSecret", ""]
) | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)  # fmt: skip


@BUDGET
@given(
    extra=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6),
    keep_host=mostly(st.just(True), st.just(False)),
    keep_token=mostly(st.just(True), st.just(False)),
    method=st.sampled_from(["GET", "POST", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
    secret=st.sampled_from(["app%2Fa", "prod%2Fx"]),
    action=st.sampled_from(["GetSecretValue", "DeleteSecret"]),
)
def test_any_header_set(
    prop: Prop, extra: list[tuple[str, str]], keep_host: bool, keep_token: bool, method: str, secret: str, action: str
) -> None:
    port = prop.proxy.port
    extra = [(k, v) for k, v in extra if k.lower() not in ("content-length", "transfer-encoding")]
    headers: list[tuple[str, str]] = []
    if keep_host:
        headers.append(("Host", f"127.0.0.1:{port}"))
    if keep_token:
        headers.append((TOKEN_HEADER, TOKEN))
    headers += extra
    names = [k.lower() for k, _ in headers]
    hosts = [v for k, v in headers if k.lower() == "host"]
    tokens = [v.strip() for k, v in headers if k.lower() == TOKEN_HEADER.lower()]
    # the oracle: the first Host must be loopback/localhost and the first token right for any upstream call
    host_ok = bool(hosts) and re.fullmatch(r"(127\.0\.0\.1|localhost)(:\d+)?", hosts[0].strip(), re.I) is not None
    may_reach = host_ok and bool(tokens) and tokens[0] == TOKEN and names.count("host") == 1
    params = f"Action={action}&SecretId={secret}".encode()
    if method == "POST":
        if "content-type" not in names:
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
        resp = send(port, method, b"/", headers, params)
    else:
        resp = send(port, method, b"/?" + params, headers, b"" if method in ("PUT", "PATCH") else None)
    prop.check(resp, method, may_reach_upstream=may_reach)
