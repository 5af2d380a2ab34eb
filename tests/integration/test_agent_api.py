"""The Secrets Manager Agent's API (``agent_api``, docs/agent-api.md) through the real listener.

The proxy is served as the CLI serves it (:class:`tests.serving.Served`: the Query listener and the Agent API's
own) against moto's server over TLS with signature checking on, assuming the demo role. The requests are the
ones the Agent's README shows (its curl lines: ``/secretsmanager/get?secretId=`` with
``X-Aws-Parameters-Secrets-Token``, the same with ``refreshNow=true``), the path form, and the ways an app or an
attacker can get them wrong; upstream failures come from real aiohttp fault servers (tests/faults.py).
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.agent import ANSWER_MEMBERS
from proxy.local import DEMO_SECRET, DEMO_SECRET_VALUE
from tests.conftest import Emulator
from tests.faults import (
    Certs,
    FaultServer,
    delayed,
    fault_config,
    never,
    ok,
    proxy_environ,
    raw_answer,
    secret_value,
)
from tests.process import ProxyProcess
from tests.serving import Served
from tests.support import RawResponse, legacy_client, poll, proxy_config, raw_request

TOKEN = "agent-token-" + "x" * 20
TOKEN_HEADER = "X-Aws-Parameters-Secrets-Token"


def unique(prefix: str) -> str:
    return f"agent/{prefix}-{uuid.uuid4().hex[:8]}"


class Agent:
    """A proxy with the Agent API on: ``get(target)`` sends ``GET target`` to the Agent API's port with the token."""

    def __init__(self, served: Served, token_file: Path) -> None:
        self.served = served
        self.token_file = token_file
        assert served.agent_port
        self.port: int = served.agent_port

    def request(self, method: str, target: str, headers: dict[str, str] | None = None) -> RawResponse:
        return raw_request(self.port, method, target, headers=headers)

    def get(self, target: str, token: str | None = TOKEN, **headers: str) -> RawResponse:
        sent = {TOKEN_HEADER: token} if token is not None else {}
        return self.request("GET", target, {**sent, **headers})

    def secret(self, secret_id: str, **params: str) -> dict[str, Any]:
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in {"secretId": secret_id, **params}.items())
        resp = self.get(f"/secretsmanager/get?{query}")
        assert resp.status == 200, (resp.status, resp.body)
        doc: dict[str, Any] = json.loads(resp.body)
        return doc

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the proxy's /metrics (on the Query listener), 0 when absent."""
        text = raw_request(self.served.port, "GET", "/metrics").body.decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == f"query_signing_proxy_{name}" and sample.labels == labels:
                    return float(sample.value)
        return 0.0


StartAgent = Callable[..., Agent]


@pytest.fixture
def start_agent(emulator: Emulator, demo_env: None, tmp_path: Path) -> Iterator[StartAgent]:
    """``start_agent(**sections)``: the proxy against moto with ``agent_api`` on (any free port) and the caller
    token in a file; ``sections`` are merged over that config. Stopped after the test."""
    started: list[Served] = []
    token_file = tmp_path / "awssmatoken"
    token_file.write_text(TOKEN + "\n")

    def start(**sections: Any) -> Agent:
        policy = {"token_header": TOKEN_HEADER, "token_file": str(token_file), **sections.pop("policy", {})}
        cfg = proxy_config(emulator.server, agent_api={"port": 0}, policy=policy, **sections)
        served = Served(cfg).__enter__()
        started.append(served)
        return Agent(served, token_file)

    yield start
    for served in reversed(started):
        served.__exit__(None, None, None)


@pytest.fixture
def agent(start_agent: StartAgent) -> Agent:
    """The Agent API with the cache on, as the Agent has it by default (300 s)."""
    return start_agent(cache={"enabled": True})


def error_of(resp: RawResponse) -> dict[str, Any]:
    """The Agent's JSON error body (``{"__type":"<code>", "message":"..."}``), checked for its exact layout."""
    assert resp.body.startswith(b'{"__type":"'), resp.body
    doc: dict[str, Any] = json.loads(resp.body)
    assert set(doc) <= {"__type", "message"}
    return doc


# ---------------------------------------------------------------------------------------------------------
# the requests of the Agent's README


def test_the_readme_request_answers_get_secret_value(agent: Agent, emulator: Emulator) -> None:
    resp = agent.get(f"/secretsmanager/get?secretId={quote(DEMO_SECRET, safe='')}")
    assert resp.status == 200
    assert (resp.header("Content-Type") or "").startswith("application/json")
    doc = json.loads(resp.body)
    direct = emulator.direct().get_secret_value(SecretId=DEMO_SECRET)
    assert list(doc) == ["ARN", "Name", "VersionId", "SecretString", "VersionStages", "CreatedDate"]
    assert doc["SecretString"] == DEMO_SECRET_VALUE == direct["SecretString"]
    assert (doc["ARN"], doc["Name"], doc["VersionId"]) == (direct["ARN"], direct["Name"], direct["VersionId"])
    assert doc["VersionStages"] == ["AWSCURRENT"]
    # the Agent writes CreatedDate as a string of epoch seconds
    assert isinstance(doc["CreatedDate"], str) and float(doc["CreatedDate"]) == direct["CreatedDate"].timestamp()
    assert resp.body == json.dumps(doc, separators=(",", ":")).encode()  # compact, as the Agent's serde_json


def test_a_slash_in_the_name_may_be_sent_unescaped(agent: Agent) -> None:
    resp = agent.get(f"/secretsmanager/get?secretId={DEMO_SECRET}")  # demo/db-password, '/' as is
    assert resp.status == 200 and json.loads(resp.body)["SecretString"] == DEMO_SECRET_VALUE


def test_refresh_now_skips_the_cache_and_refreshes_it(agent: Agent, emulator: Emulator) -> None:
    name = unique("refresh")
    direct = emulator.direct()
    direct.create_secret(Name=name, SecretString="v1")
    assert agent.secret(name)["SecretString"] == "v1"
    direct.put_secret_value(SecretId=name, SecretString="v2")  # a rotation behind the proxy's back
    assert agent.secret(name)["SecretString"] == "v1"  # from the cache, as the Agent within its TTL
    assert agent.secret(name, refreshNow="true")["SecretString"] == "v2"
    assert agent.secret(name)["SecretString"] == "v2"  # the refresh updated the entry
    assert agent.metric("cache_misses_total") == 2
    assert agent.metric("cache_hits_total", freshness="fresh") == 2
    for value in ("TRUE", "1", "false", "0", "False"):
        assert agent.secret(name, refreshNow=value)["SecretString"] == "v2"
    assert agent.metric("cache_misses_total") == 4  # TRUE and 1 went upstream; the false ones did not


def test_refresh_now_that_fails_is_an_error_not_the_cached_value(agent: Agent, emulator: Emulator) -> None:
    name = unique("refresh-gone")
    direct = emulator.direct()
    direct.create_secret(Name=name, SecretString="v1")
    assert agent.secret(name)["SecretString"] == "v1"
    direct.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    assert agent.secret(name)["SecretString"] == "v1"  # still cached
    resp = agent.get(f"/secretsmanager/get?secretId={quote(name, safe='')}&refreshNow=true")
    assert resp.status >= 400 and error_of(resp)["__type"] == "ResourceNotFoundException"


def test_the_path_form_answers_as_the_query_form(agent: Agent, emulator: Emulator) -> None:
    name = unique("path")
    direct = emulator.direct()
    first = direct.create_secret(Name=name, SecretString="v1")["VersionId"]
    direct.put_secret_value(SecretId=name, SecretString="v2")
    by_path = agent.get(f"/v1/{name}")  # the '/' in the name as is
    by_query = agent.get(f"/secretsmanager/get?secretId={quote(name, safe='')}")
    assert by_path.status == by_query.status == 200
    assert json.loads(by_path.body) == json.loads(by_query.body)
    assert json.loads(by_path.body)["SecretString"] == "v2"
    assert json.loads(agent.get(f"/v1/{quote(name, safe='')}").body)["SecretString"] == "v2"  # %2F decoded
    previous = json.loads(agent.get(f"/v1/{name}?versionStage=AWSPREVIOUS").body)
    assert (previous["SecretString"], previous["VersionId"]) == ("v1", first)
    assert previous["VersionStages"] == ["AWSPREVIOUS"]
    by_id = json.loads(agent.get(f"/v1/{name}?versionId={first}").body)
    assert by_id["SecretString"] == "v1"


def test_version_selectors_in_the_query_form(agent: Agent, emulator: Emulator) -> None:
    name = unique("versions")
    direct = emulator.direct()
    first = direct.create_secret(Name=name, SecretString="v1")["VersionId"]
    direct.put_secret_value(SecretId=name, SecretString="v2")
    assert agent.secret(name, versionStage="AWSPREVIOUS")["SecretString"] == "v1"
    assert agent.secret(name, versionId=first)["VersionId"] == first
    assert agent.secret(name, versionStage="AWSCURRENT")["SecretString"] == "v2"


def test_a_binary_secret_is_base64_without_secret_string(agent: Agent, emulator: Emulator) -> None:
    name = unique("binary")
    emulator.direct().create_secret(Name=name, SecretBinary=b"\x00\x01binary\xff")
    doc = agent.secret(name)
    assert "SecretString" not in doc and base64.b64decode(doc["SecretBinary"]) == b"\x00\x01binary\xff"
    assert list(doc) == ["ARN", "Name", "VersionId", "SecretBinary", "VersionStages", "CreatedDate"]


def test_an_arn_reads_the_same_secret(agent: Agent, emulator: Emulator) -> None:
    arn = emulator.direct().describe_secret(SecretId=DEMO_SECRET)["ARN"]
    assert agent.secret(arn)["Name"] == DEMO_SECRET


def test_a_missing_secret_is_the_upstream_error_in_the_agents_shape(agent: Agent, emulator: Emulator) -> None:
    resp = agent.get("/secretsmanager/get?secretId=agent%2Fno-such-secret")
    direct = raw_direct_status(emulator, "agent/no-such-secret")
    assert resp.status == direct  # the upstream's status, as the Agent relays it (moto: 404, AWS: 400)
    doc = error_of(resp)
    assert doc["__type"] == "ResourceNotFoundException" and doc["message"]
    assert resp.body.startswith(b'{"__type":"ResourceNotFoundException", "message":"')


def raw_direct_status(emulator: Emulator, secret_id: str) -> int:
    from botocore.exceptions import ClientError

    try:
        emulator.direct().get_secret_value(SecretId=secret_id)
    except ClientError as exc:
        status: int = exc.response["ResponseMetadata"]["HTTPStatusCode"]
        return status
    raise AssertionError(f"{secret_id} exists")


# ---------------------------------------------------------------------------------------------------------
# the token, forwarding, methods, paths, parameters: the Agent's own answers


def test_the_token_is_required(agent: Agent) -> None:
    target = f"/secretsmanager/get?secretId={quote(DEMO_SECRET, safe='')}"
    for resp in (
        agent.get(target, token=None),
        agent.get(target, token="wrong"),
        agent.get(target, token=""),
        agent.get(target, token=TOKEN + "x"),
        agent.get(target, token=None, **{"X-Other-Token": TOKEN}),
        agent.get(f"/v1/{DEMO_SECRET}", token=None),
        agent.get(f"{target}&refreshNow=true", token=None),
    ):
        assert (resp.status, resp.body) == (403, b"Bad Token")
    assert agent.get(target, token=None, **{"X-Vault-Token": TOKEN}).status == 200  # the Agent's other header
    assert agent.get(target, token=f"  {TOKEN} ").status == 200  # surrounding whitespace, as a file read gives


def test_a_new_token_in_the_file_takes_over(agent: Agent) -> None:
    target = f"/secretsmanager/get?secretId={quote(DEMO_SECRET, safe='')}"
    assert agent.get(target).status == 200
    agent.token_file.write_text("rotated-token-0123456789\n")
    poll(lambda: agent.get(target, token="rotated-token-0123456789").status == 200, 10, "the new token")
    assert agent.get(target).status == 403
    agent.token_file.unlink()  # unreadable: every request is refused
    poll(lambda: agent.get(target, token="rotated-token-0123456789").status == 403, 10, "refusal")


def test_the_query_listener_takes_the_same_token(agent: Agent) -> None:
    target = f"/?Action=GetSecretValue&SecretId={quote(DEMO_SECRET, safe='')}&Version=2017-10-17"
    assert raw_request(agent.served.port, "GET", target).status == 403
    assert raw_request(agent.served.port, "GET", target, headers={TOKEN_HEADER: TOKEN}).status == 200


@pytest.mark.parametrize("header", ["X-Forwarded-For", "x-forwarded-for", "Forwarded"])
def test_forwarded_requests_are_refused(agent: Agent, header: str) -> None:
    target = f"/secretsmanager/get?secretId={quote(DEMO_SECRET, safe='')}"
    resp = agent.get(target, **{header: "127.0.0.1"})
    assert (resp.status, resp.body) == (400, b"Forwarded")
    assert agent.get(target, token=None, **{header: "for=1.2.3.4"}).status == 400  # before the token


def test_ping_needs_no_token(agent: Agent) -> None:
    for headers in ({}, {TOKEN_HEADER: TOKEN}, {TOKEN_HEADER: "wrong"}):
        resp = agent.request("GET", "/ping", headers)
        assert (resp.status, resp.body) == (200, b"healthy")
    assert agent.request("POST", "/ping", {}).status == 405


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_only_get_is_served(agent: Agent, method: str) -> None:
    target = f"/secretsmanager/get?secretId={quote(DEMO_SECRET, safe='')}"
    resp = agent.request(method, target, {TOKEN_HEADER: TOKEN})
    assert resp.status == 405
    if method != "HEAD":
        assert resp.body == b"Not allowed"
    assert agent.request(method, target, {}).status == 403  # the token is checked first, as in the Agent


@pytest.mark.parametrize(
    "target",
    ["/", "/secretsmanager", "/secretsmanager/get/", "/secretsmanager/GET?secretId=x", "/v2/x", "/v1", "/?Action=x"],
)
def test_other_paths_are_not_found(agent: Agent, target: str) -> None:
    resp = agent.get(target)
    assert (resp.status, resp.body) == (404, b"Not found")


@pytest.mark.parametrize("method,target", [("CONNECT", "127.0.0.1:443"), ("OPTIONS", "*")])
def test_targets_that_are_not_origin_form_are_refused(agent: Agent, method: str, target: str) -> None:
    resp = agent.request(method, target, {TOKEN_HEADER: TOKEN})  # the Host rule refuses them first
    assert resp.status == 403 and error_of(resp)["__type"] == "AccessDenied"


@pytest.mark.parametrize(
    "target,message",
    [
        ("/secretsmanager/get?secretId=x&abc=123", b"unknown parameter: abc"),
        ("/secretsmanager/get?secretid=x", b"unknown parameter: secretid"),
        ("/secretsmanager/get?versionStage=AWSCURRENT", b"missing parameter secretId"),
        ("/secretsmanager/get?secretId=", b"missing parameter secretId"),
        ("/secretsmanager/get", b"missing parameter secretId"),
        ("/secretsmanager/get?secretId=x&refreshNow=123", b"invalid refreshNow value"),
        ("/secretsmanager/get?secretId=x&refreshNow=", b"invalid refreshNow value"),
        ("/v1/?versionStage=AWSCURRENT", b"missing secret ID"),
        ("/v1/x?secretId=y", b"unknown parameter: secretId"),
    ],
)
def test_bad_parameters_are_the_agents_400(agent: Agent, target: str, message: bytes) -> None:
    resp = agent.get(target)
    assert (resp.status, resp.body) == (400, message)


def test_the_last_of_a_repeated_parameter_wins(agent: Agent) -> None:
    resp = agent.get(f"/secretsmanager/get?secretId=nothing&secretId={quote(DEMO_SECRET, safe='')}")
    assert resp.status == 200 and json.loads(resp.body)["Name"] == DEMO_SECRET


def test_values_outside_the_model_are_invalid_parameters(agent: Agent) -> None:
    resp = agent.get(f"/secretsmanager/get?secretId={quote(DEMO_SECRET, safe='')}&versionId=short")
    assert resp.status == 400 and error_of(resp)["__type"] == "InvalidParameterException"  # the service's own
    assert error_of(resp)["message"] == "VersionId must be 32-64 characters long."
    resp = agent.get(f"/secretsmanager/get?secretId={quote(DEMO_SECRET, safe='')}&versionStage=")
    assert resp.status == 400 and error_of(resp)["__type"] == "InvalidParameterException"


# ---------------------------------------------------------------------------------------------------------
# attacks


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:2773", "169.254.169.254", "localhost.evil.example", "127.0.0.1.nip.io"]
)
def test_a_foreign_host_header_is_refused(agent: Agent, host: str) -> None:
    target = f"/secretsmanager/get?secretId={quote(DEMO_SECRET, safe='')}"
    resp = agent.request("GET", target, {"Host": host, TOKEN_HEADER: TOKEN})
    assert resp.status == 403 and error_of(resp)["__type"] == "AccessDenied" and "Host" in error_of(resp)["message"]
    assert agent.request("GET", "/ping", {"Host": host}).status == 403  # the health check too
    assert agent.request("GET", target, {"Host": f"localhost:{agent.port}", TOKEN_HEADER: TOKEN}).status == 200
    assert agent.request("GET", target, {"Host": f"127.0.0.1:{agent.port}", TOKEN_HEADER: TOKEN}).status == 200


def test_an_absolute_form_target_to_another_host_is_refused(agent: Agent) -> None:
    target = f"http://evil.example/secretsmanager/get?secretId={quote(DEMO_SECRET, safe='')}"
    assert agent.get(target).status == 403
    ok_target = f"http://127.0.0.1:{agent.port}/secretsmanager/get?secretId={quote(DEMO_SECRET, safe='')}"
    assert agent.get(ok_target).status == 200


def test_listen_allowed_hosts_apply(start_agent: StartAgent) -> None:
    agent = start_agent(listen={"host": "127.0.0.1", "port": 0, "allowed_hosts": ["proxy.internal"]})
    target = f"/secretsmanager/get?secretId={quote(DEMO_SECRET, safe='')}"
    assert agent.request("GET", target, {"Host": "proxy.internal:2773", TOKEN_HEADER: TOKEN}).status == 200


def test_a_huge_secret_id_is_refused_before_anything_is_sent(agent: Agent) -> None:
    resp = agent.get("/secretsmanager/get?secretId=" + "a" * 3000)
    assert resp.status == 414 and b"limits.max_get_url_bytes" in resp.body
    resp = agent.get("/v1/" + "a" * 3000)
    assert resp.status == 414
    assert agent.metric("upstream_attempts_count", action="GetSecretValue") == 0


def test_a_secret_id_longer_than_the_model_allows(start_agent: StartAgent) -> None:
    agent = start_agent(limits={"max_get_url_bytes": 8192})
    resp = agent.get("/secretsmanager/get?secretId=" + "a" * 2049)
    assert resp.status == 400 and error_of(resp)["__type"] == "InvalidParameterException"
    assert agent.metric("upstream_attempts_count", action="GetSecretValue") == 0


@pytest.mark.parametrize(
    "target",
    [
        "/v1/../secretsmanager/get?secretId=demo%2Fdb-password",
        "/v1/demo/../demo/db-password",
        "/v1/./demo/db-password",
        "/v1/%2e%2e/x",
        "/v1/demo%2F..%2Fdb-password",
        "/v1/..",
    ],
)
def test_dot_segments_in_the_path_form_are_refused(agent: Agent, target: str) -> None:
    resp = agent.get(target)
    assert resp.status == 400 and b"'.' or '..' segment" in resp.body


@pytest.mark.parametrize("target", ["/v1/%zz", "/v1/%ff%fe", "/secretsmanager/get?secretId=%zz", "/v1/a%"])
def test_undecodable_ids_are_refused(agent: Agent, target: str) -> None:
    assert agent.get(target).status == 400


def test_a_control_character_in_a_parameter_name_is_shown_escaped(agent: Agent) -> None:
    resp = agent.get("/secretsmanager/get?secretId=x&a%00%1b=1")
    assert (resp.status, resp.body) == (400, b"unknown parameter: a\\x00\\x1b")


def test_policy_applies_before_the_cache_and_the_upstream(start_agent: StartAgent, emulator: Emulator) -> None:
    allowed, denied = unique("allowed"), unique("denied")
    direct = emulator.direct()
    direct.create_secret(Name=allowed, SecretString="a")
    arn = direct.create_secret(Name=denied, SecretString="d")["ARN"]
    agent = start_agent(cache={"enabled": True}, policy={"allow_secrets": ["agent/allowed-*"]})
    assert agent.secret(allowed)["SecretString"] == "a"
    for target in (
        f"/secretsmanager/get?secretId={quote(denied, safe='')}",
        f"/v1/{denied}",
        f"/secretsmanager/get?secretId={quote(arn, safe='')}",
    ):
        resp = agent.get(target)
        assert resp.status == 403 and error_of(resp)["__type"] == "AccessDenied"
        assert b"policy.allow_secrets" in resp.body
    assert agent.metric("upstream_attempts_count", action="GetSecretValue") == 1  # only the allowed read
    assert agent.metric("cache_misses_total") == 1


def test_a_write_through_the_query_listener_invalidates_what_the_agent_cached(
    start_agent: StartAgent, emulator: Emulator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    agent = start_agent(cache={"enabled": True}, policy={"allow_actions": ["*"]})
    name = unique("shared-cache")
    emulator.direct().create_secret(Name=name, SecretString="v1")
    assert agent.secret(name)["SecretString"] == "v1"
    legacy = legacy_client(f"http://127.0.0.1:{agent.served.port}", str(tmp_path_factory.getbasetemp()))
    legacy.meta.events.register("before-send", lambda request, **_: request.headers.__setitem__(TOKEN_HEADER, TOKEN))
    legacy.put_secret_value(SecretId=name, SecretString="v2")
    assert agent.secret(name)["SecretString"] == "v2"
    assert agent.metric("cache_misses_total") == 2


def test_metrics_and_the_access_line(agent: Agent, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    target = f"/secretsmanager/get?secretId={quote(DEMO_SECRET, safe='')}"
    assert agent.get(target).status == 200
    assert agent.get(target, token=None).status == 403
    assert agent.request("GET", "/ping").status == 200  # a health check: no access line, not counted
    lines = poll(lambda: [r for r in caplog.records if r.name == "proxy.access"][:2], 5, "two access lines")
    ok_line, denied = (vars(r) for r in lines)
    assert (ok_line["action"], ok_line["secret_id"], ok_line["status"]) == ("GetSecretValue", DEMO_SECRET, 200)
    assert ok_line["upstream_status"] == 200 and ok_line["attempts"] == 1
    assert (denied["action"], denied["status"], denied["upstream_status"]) == (None, 403, None)
    assert len([r for r in caplog.records if r.name == "proxy.access"]) == 2
    assert agent.metric("requests_total", action="GetSecretValue", code="OK") == 1
    assert agent.metric("requests_total", action="-", code="BadToken") == 1
    assert TOKEN not in caplog.text


# ---------------------------------------------------------------------------------------------------------
# upstream failures and limits, against fault servers


@pytest.fixture
def fault_agent(
    certs: Certs, static_keys: None, tmp_path: Path, start_fault: Callable[..., FaultServer]
) -> Iterator[Callable[..., tuple[Agent, FaultServer]]]:
    """``fault_agent(behaviour, **sections)``: a fault server as the upstream and the proxy with the Agent API
    on in front of it (static keys, short deadlines)."""
    started: list[Served] = []
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)

    def start(behaviour: Any, **sections: Any) -> tuple[Agent, FaultServer]:
        upstream = start_fault(behaviour)
        policy = {"token_header": TOKEN_HEADER, "token_file": str(token_file)}
        cfg = fault_config(upstream.url, certs.ca_file, agent_api={"port": 0}, policy=policy, **sections)
        served = Served(cfg).__enter__()
        started.append(served)
        return Agent(served, token_file), upstream

    yield start
    for served in reversed(started):
        served.__exit__(None, None, None)


def test_an_upstream_timeout_is_the_agents_504(fault_agent: Any) -> None:
    agent, _ = fault_agent(never(), upstream={"max_attempts": 1})
    resp = agent.get("/secretsmanager/get?secretId=app%2Fdb")
    assert resp.status == 504 and error_of(resp)["__type"] == "TimeoutError"


def test_an_upstream_500_is_internal_failure(fault_agent: Any) -> None:
    body = json.dumps({"__type": "InternalServiceError", "message": "boom"}).encode()
    agent, upstream = fault_agent(
        raw_answer(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n"
            b"Content-Type: application/x-amz-json-1.1\r\n\r\n%s" % (len(body), body)
        )
    )
    resp = agent.get("/secretsmanager/get?secretId=app%2Fdb")
    assert resp.status == 500 and error_of(resp)["__type"] == "InternalServiceError"
    assert len(upstream.seen) == 3  # retried as every read is


def test_an_unreachable_upstream_is_a_connection_error(fault_agent: Any) -> None:
    agent, upstream = fault_agent(ok())
    upstream.__exit__(None, None, None)  # nothing listens there any more
    resp = agent.get("/secretsmanager/get?secretId=app%2Fdb")
    assert resp.status == 502 and error_of(resp)["__type"] == "ConnectionError"


def test_the_answer_is_the_agents_shape_of_the_upstreams(fault_agent: Any) -> None:
    value = {**secret_value("app/db", 'multi\nline "quoted" \u00e9\u2603'), "CreatedDate": 1.523477145713e9}
    body = json.dumps(value).encode()
    agent, _ = fault_agent(raw_answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)))
    resp = agent.get("/v1/app/db")
    assert resp.status == 200
    doc = json.loads(resp.body)
    assert doc["SecretString"] == 'multi\nline "quoted" \u00e9\u2603'
    assert doc["CreatedDate"] == "1523477145.713"
    assert "\u2603".encode() in resp.body  # UTF-8, not \\u escapes
    assert list(doc) == [m for m in ANSWER_MEMBERS if m in doc]


def test_too_many_requests_in_flight_is_the_agents_429(fault_agent: Any) -> None:
    agent, upstream = fault_agent(delayed(0.5, ok()), limits={"max_concurrent_requests": 1})
    target = "/secretsmanager/get?secretId=app%2Fdb"
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(agent.get, target)
        poll(lambda: len(upstream.seen) == 1, 10, "the first request upstream")
        resp = agent.get(target)
        assert (resp.status, resp.body) == (429, b"Connection limit exceeded")
        assert first.result().status == 200
    assert agent.request("GET", "/ping").status == 200


def test_a_request_in_flight_at_shutdown_is_answered(fault_agent: Any) -> None:
    agent, upstream = fault_agent(delayed(0.5, ok()), shutdown_grace_seconds=10)
    target = "/secretsmanager/get?secretId=app%2Fdb"
    answers: list[RawResponse] = []
    thread = threading.Thread(target=lambda: answers.append(agent.get(target)))
    thread.start()
    poll(lambda: len(upstream.seen) == 1, 10, "the request upstream")
    agent.served.__exit__(None, None, None)  # stop: SIGTERM's path, while the request waits on the upstream
    thread.join(20)
    assert [a.status for a in answers] == [200]
    assert json.loads(answers[0].body)["SecretString"] == "s3cr3t"


# ---------------------------------------------------------------------------------------------------------
# the real CLI


def cli_config(tmp_path: Path, upstream: dict[str, Any], **extra: Any) -> str:
    token_file = tmp_path / "awssmatoken"
    token_file.write_text(TOKEN + "\n")
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstream": upstream,
        "policy": {"token_header": TOKEN_HEADER, "token_file": str(token_file)},
        "agent_api": {"port": 0},
        "cache": {"enabled": True},
        **extra,
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_the_cli_serves_the_agent_api_and_names_its_port(emulator: Emulator, demo_env: None, tmp_path: Path) -> None:
    from proxy.local import DEMO_ROLE_ARN

    upstream = {"endpoint_url": emulator.url, "ca_bundle": emulator.ca_file}
    path = cli_config(tmp_path, upstream, credentials={"role_arn": DEMO_ROLE_ARN, "role_session_name": "agent"})
    with ProxyProcess(["--config", path], tmp_path) as proxy:
        line = proxy.wait_listening()
        port = line["agent_api_port"]
        assert port and port not in (proxy.port, proxy.admin_port)
        proxy.wait_status(f"http://127.0.0.1:{proxy.admin_port}/readyz", 200)
        resp = raw_request(port, "GET", f"/secretsmanager/get?secretId={DEMO_SECRET}", headers={TOKEN_HEADER: TOKEN})
        assert resp.status == 200 and json.loads(resp.body)["SecretString"] == DEMO_SECRET_VALUE
        assert raw_request(port, "GET", "/ping").body == b"healthy"
        assert proxy.stop() == 0
        access = [entry for entry in proxy.lines() if entry.get("action") == "GetSecretValue"]
        assert [(entry["status"], entry["secret_id"]) for entry in access] == [(200, DEMO_SECRET)]
        assert TOKEN not in proxy.log_path.read_text() and DEMO_SECRET_VALUE not in proxy.log_path.read_text()


def test_the_cli_refuses_agent_api_without_a_token_file(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump({"upstream": {"region": "us-east-1"}, "agent_api": {"port": 2773}}))
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "config error: policy.token_file: required when agent_api.port is set" in done.stderr


def test_workers_share_the_agent_api_port(
    start_fault: Callable[..., FaultServer], certs: Certs, tmp_path: Path
) -> None:
    fault = start_fault(ok())
    path = cli_config(tmp_path, {"region": "us-east-1", "endpoint_url": fault.url, "ca_bundle": certs.ca_file})
    with ProxyProcess(["--config", path, "--workers", "2"], tmp_path, proxy_environ()) as proxy:
        lines = poll(
            lambda: len(found := [x for x in proxy.lines() if x.get("message") == "listening"]) == 2 and found,
            30,
            "two workers to listen",
        )
        ports = {line["agent_api_port"] for line in lines}
        assert len(ports) == 1
        (port,) = ports
        statuses = [
            raw_request(port, "GET", "/v1/app/db?refreshNow=true", headers={TOKEN_HEADER: TOKEN}, timeout=10).status
            for _ in range(20)
        ]
        assert statuses == [200] * 20
        assert len(fault.seen) == 20
        assert proxy.stop() == 0
