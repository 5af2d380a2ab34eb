"""The Agent API's pure parts (proxy/agent.py): the request parser against the cases of the Agent's ``parse.rs``,
the answer and error shapes of its ``cache_manager.rs`` / ``utils.rs``, and the ``agent_api`` config rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy import errors
from proxy.agent import (
    AgentQuery,
    AgentRequestError,
    agent_answer,
    agent_error_document,
    epoch_text,
    parse_agent_request,
    render_agent_error,
)
from proxy.config import ConfigError, load_config
from proxy.middleware import RequestContext


@pytest.mark.parametrize(
    "path,query,expected",
    [
        ("/secretsmanager/get", "secretId=MyTest", AgentQuery("MyTest")),
        ("/secretsmanager/get", "secretId=MyTest&refreshNow=true", AgentQuery("MyTest", refresh_now=True)),
        ("/secretsmanager/get", "secretId=MyTest&refreshNow=0", AgentQuery("MyTest")),
        ("/secretsmanager/get", "secretId=MyTest&refreshNow=FALSE", AgentQuery("MyTest")),
        ("/secretsmanager/get", "secretId=MyTest&refreshNow=True", AgentQuery("MyTest", refresh_now=True)),
        (
            "/secretsmanager/get",
            "secretId=a%2Fb+c&versionId=v&versionStage=dev",
            AgentQuery("a/b c", version_id="v", version_stage="dev"),
        ),
        ("/secretsmanager/get", "&&secretId=x&", AgentQuery("x")),
        ("/v1/MyTest", "versionId=myversion&versionStage=dev", AgentQuery("MyTest", "myversion", "dev")),
        ("/v1/prod/app/db", "", AgentQuery("prod/app/db")),
        ("/v1/prod%2Fapp%2Fdb", "", AgentQuery("prod/app/db")),
        ("/v1/a+b", "", AgentQuery("a+b")),  # a path keeps '+', unlike a query string
        ("/v1/caf%C3%A9", "refreshNow=1", AgentQuery("caf\u00e9", refresh_now=True)),
        ("/v1/a//b", "", AgentQuery("a//b")),
    ],
)
def test_parse(path: str, query: str, expected: AgentQuery) -> None:
    assert parse_agent_request(path, query) == expected


@pytest.mark.parametrize(
    "path,query,status,message",
    [
        (
            "/secretsmanager/get",
            "secretId=MyTest&versionId=v&versionStage=dev&refreshNow=123",
            400,
            "invalid refreshNow value",
        ),
        ("/secretsmanager/get", "secretId=MyTest&abc=123", 400, "unknown parameter: abc"),
        ("/v1/MyTest", "versionId=v&abc=123", 400, "unknown parameter: abc"),
        ("/secretsmanager/get", "&versionId=v&versionStage=dev", 400, "missing parameter secretId"),
        ("/v1/", "versionId=v&abc=123", 400, "missing secret ID"),
        ("/ping2", "", 404, "Not found"),
        ("/V1/x", "", 404, "Not found"),
        (
            "/secretsmanager/get",
            "secretId=%G1",
            400,
            "the query string has a malformed percent-escape (use %XX with hex digits)",
        ),
        ("/secretsmanager/get", "secretId=%FF", 400, "the query string is not UTF-8 after percent-decoding"),
        ("/v1/%FF", "", 400, "the secret ID in the path is not UTF-8"),
        (
            "/v1/a/./b",
            "",
            400,
            "the secret ID in the path has a '.' or '..' segment; send it as secretId= to /secretsmanager/get",
        ),
        ("/secretsmanager/get", "secretId=x&" + "n" * 100 + "=1", 400, "unknown parameter: " + "n" * 40 + "..."),
    ],
)
def test_parse_refuses(path: str, query: str, status: int, message: str) -> None:
    with pytest.raises(AgentRequestError) as info:
        parse_agent_request(path, query)
    assert (info.value.status, info.value.message) == (status, message)


def test_dots_inside_a_name_are_not_segments() -> None:
    assert parse_agent_request("/v1/app.config/..x", "") == AgentQuery("app.config/..x")
    assert parse_agent_request("/secretsmanager/get", "secretId=a%2F..%2Fb") == AgentQuery("a/../b")  # a literal name


@pytest.mark.parametrize(
    "value,text",
    [
        (1569534789, "1569534789"),
        (1569534789.046, "1569534789.046"),
        (1.523477145713e9, "1523477145.713"),
        (1700000000.0, "1700000000"),
        (1700000000.5, "1700000000.5"),
        ("2024-01-01", "2024-01-01"),
        (None, None),
    ],
)
def test_created_date_as_the_agent_writes_it(value: object, text: object) -> None:
    assert epoch_text(value) == text


def test_the_answer_has_the_agents_members_in_its_order() -> None:
    upstream = {
        "CreatedDate": 1.5e9,
        "VersionStages": ["AWSCURRENT"],
        "SecretString": "s",
        "VersionId": "v",
        "Name": "n",
        "ARN": "a",
        "ResponseMetadata": {"ignored": True},
    }
    assert agent_answer(upstream) == (
        b'{"ARN":"a","Name":"n","VersionId":"v","SecretString":"s","VersionStages":["AWSCURRENT"],'
        b'"CreatedDate":"1500000000"}'
    )
    # members the Agent always writes are null when absent; the others are left out
    assert json.loads(agent_answer({"SecretBinary": "AAE="})) == {
        "ARN": None,
        "Name": None,
        "VersionId": None,
        "SecretBinary": "AAE=",
        "CreatedDate": None,
    }


def test_the_answer_is_utf8_and_survives_a_lone_surrogate() -> None:
    assert agent_answer({"SecretString": "\u00e9"}).count("\u00e9".encode()) == 1
    body = agent_answer({"SecretString": "\ud800x"})
    assert json.loads(body)["SecretString"] == "\ud800x" and b"\\ud800" in body


def test_error_documents() -> None:
    assert agent_error_document("ResourceNotFoundException", "Secrets Manager can't find the specified secret.") == (
        b'{"__type":"ResourceNotFoundException", "message":"Secrets Manager can\'t find the specified secret."}'
    )
    assert agent_error_document("InternalFailure", "anything") == b'{"__type":"InternalFailure"}'
    assert agent_error_document("Whatever", "") == b'{"__type":"InternalFailure"}'
    assert json.loads(agent_error_document("X", 'a "quoted"\nline')) == {"__type": "X", "message": 'a "quoted"\nline'}


@pytest.mark.parametrize(
    "error,status,body",
    [
        (AgentRequestError(403, "BadToken", "Bad Token"), 403, b"Bad Token"),
        (errors.ServiceUnavailable("too many"), 429, b"Connection limit exceeded"),
        (errors.GatewayTimeout("upstream request failed: TimeoutError"), 504, b'{"__type":"TimeoutError", "message"'),
        (errors.BadGateway("refused"), 502, b'{"__type":"ConnectionError", "message":"refused"}'),
        (errors.UpstreamCertificateInvalid("bad cert"), 502, b'{"__type":"ConnectionError", "message":"bad cert"}'),
        (
            errors.UpstreamError(400, "DecryptionFailure", "kms"),
            400,
            b'{"__type":"DecryptionFailure", "message":"kms"}',
        ),
        (errors.UpstreamError(503, "ServiceUnavailable", "busy"), 503, b'{"__type":"ServiceUnavailable", "message"'),
        (errors.AccessDenied("policy"), 403, b'{"__type":"AccessDenied", "message":"policy"}'),
        (errors.CredentialsUnavailable("none"), 503, b'{"__type":"CredentialsUnavailable", "message":"none"}'),
        (errors.ProxyError("the proxy failed unexpectedly"), 500, b'{"__type":"InternalFailure"}'),
    ],
)
def test_errors_are_rendered_as_the_agent_renders_them(error: errors.ProxyError, status: int, body: bytes) -> None:
    response = render_agent_error(error, RequestContext())
    assert response.status == status
    assert isinstance(response.body, bytes) and response.body.startswith(body)
    assert response.headers["x-amzn-RequestId"]


# ---------------------------------------------------------------------------------------------------------
# config


def config(tmp_path: Path, text: str) -> None:
    token = tmp_path / "token"
    token.write_text("t0k3n")
    path = tmp_path / "proxy.yaml"
    path.write_text(text.replace("TOKEN_FILE", str(token)))
    load_config(str(path), region_from_env="us-east-1")


POLICY = "policy: {token_header: X-Aws-Parameters-Secrets-Token, token_file: TOKEN_FILE}\n"


def test_agent_api_with_a_token_loads(tmp_path: Path) -> None:
    config(tmp_path, "agent_api: {port: 2773}\n" + POLICY)
    config(tmp_path, "agent_api: {host: localhost, port: 0}\n" + POLICY)
    config(tmp_path, "agent_api: {host: '::1', port: 2773}\n" + POLICY)
    config(tmp_path, "agent_api: {port: null}\n")  # off: no token needed


@pytest.mark.parametrize(
    "text,message",
    [
        ("agent_api: {port: 2773}\n", "policy.token_file: required when agent_api.port is set"),
        ("agent_api: {port: 2773}\npolicy: {token_file: TOKEN_FILE}\n", "policy.token_header: required"),
        ("agent_api: {port: 2773, host: 0.0.0.0}\n" + POLICY, "agent_api.host: 0.0.0.0 is not a loopback address"),
        ("agent_api: {port: 2773, host: 10.0.0.1}\n" + POLICY, "agent_api.host: 10.0.0.1 is not a loopback"),
        ("agent_api: {port: 8977}\n" + POLICY, "agent_api.port: 8977 is already taken by listen.port"),
        (
            "agent_api: {port: 9000}\nadmin: {host: 127.0.0.1, port: 9000}\n" + POLICY,
            "agent_api.port: 9000 is already taken by admin.port",
        ),
        ("agent_api: {port: 9001}\nroutes: [{port: 9001, upstream: {service: sts}}]\n" + POLICY, "routes[0].port"),
        ("agent_api: {port: 2773}\nupstream: {service: sts}\n" + POLICY, "agent_api.port: the Agent API serves"),
        ("agent_api: {port: 70000}\n" + POLICY, "agent_api.port: must be at most 65535"),
        ("agent_api: {port: '2773'}\n" + POLICY, "agent_api.port: must be an integer"),
        ("agent_api: {prot: 2773}\n", "agent_api.prot: unknown key"),
    ],
)
def test_agent_api_config_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config(tmp_path, text)
