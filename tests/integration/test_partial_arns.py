"""ARNs that AWS may read as a partial ARN of another secret, through the real listeners against moto.

``arn:...:secret:NAME-backup`` reads as the full ARN of the secret ``NAME`` (with the suffix ``backup``), which
``allow_secrets: [NAME]`` admits; when no secret has that ARN, AWS may read it as a partial ARN of the secret
named ``NAME-backup`` (moto does). With that secret hidden by the policy:

- a write (or a batch, whose answer cannot be checked) must not reach it: refused before any upstream call;
- a read is checked on its answer, and that answer must not tell whether the hidden secret exists: it is the
  answer for an ARN that reaches no secret at all, for Query, SDK and Agent API callers alike.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from botocore.exceptions import ClientError

from tests.faults import xml_error
from tests.integration.test_agent_api import StartAgent, start_agent  # noqa: F401 (the fixture)
from tests.integration.test_sdk import sdk_client
from tests.support import raw_request

HIDDEN_VALUE = "value-of-the-hidden-secret"


@pytest.fixture
def pair(emulator: Any) -> Iterator[dict[str, str]]:
    """``p/db`` (to allow) and ``p/db-backup`` (hidden: its name is p/db, a hyphen and six letters), and the
    ARNs an app can write: the real one of p/db, one that reaches p/db-backup, one that reaches nothing."""
    p = f"parn-{uuid.uuid4().hex[:8]}"
    direct = emulator.direct()
    arn = direct.create_secret(Name=f"{p}/db", SecretString="value-of-db")["ARN"]
    direct.create_secret(Name=f"{p}/db-backup", SecretString=HIDDEN_VALUE)
    prefix = arn.rsplit(":secret:", 1)[0] + ":secret:"
    yield {
        "prefix": p,
        "name": f"{p}/db",
        "arn": arn,
        "hidden": f"{prefix}{p}/db-backup",
        "none": f"{prefix}{p}/db-nohere",
    }
    for name in (f"{p}/db", f"{p}/db-backup"):
        direct.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


def query(port: int, action: str, **params: str) -> tuple[int, str | None, bytes]:
    encoded = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    r = raw_request(port, "GET", f"/?Action={action}&Version=2017-10-17&{encoded}")
    return r.status, xml_error(r.body)[1] if r.status != 200 else None, r.body


def query_answer(port: int, action: str, **params: str) -> tuple[int, str | None, str | None]:
    """(status, code, message) of a Query request, without the request id."""
    status, code, body = query(port, action, **params)
    message = None
    if code is not None:
        message = body.split(b"<Message>", 1)[1].split(b"</Message>", 1)[0].decode()
    return status, code, message


def sdk_answer(call: Any) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as refused:
        call()
    error = refused.value.response
    return error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Code"], error["Error"]["Message"]


@pytest.mark.parametrize("action", ["GetSecretValue", "DescribeSecret"])  # moto fails ListSecretVersionIds with 500
def test_a_read_that_reaches_a_hidden_secret_answers_as_one_that_reaches_none(
    start_proxy: Any, pair: dict[str, str], action: str
) -> None:
    proxy = start_proxy(policy={"allow_secrets": [pair["name"]]})  # the read-only default actions
    status, code, body = query(proxy.port, action, SecretId=pair["arn"])
    assert status == 200, body  # the real ARN of the allowed secret reads as ever
    hidden = query_answer(proxy.port, action, SecretId=pair["hidden"])
    assert hidden == query_answer(proxy.port, action, SecretId=pair["none"])
    assert hidden == (400, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
    sdk = sdk_client(proxy.url)
    method = getattr(sdk, {"GetSecretValue": "get_secret_value", "DescribeSecret": "describe_secret"}[action])
    assert method(SecretId=pair["arn"])["ARN"] == pair["arn"]
    seen = sdk_answer(lambda: method(SecretId=pair["hidden"]))
    assert seen == sdk_answer(lambda: method(SecretId=pair["none"]))
    assert seen[:2] == (400, "ResourceNotFoundException")


def test_the_agent_api_answers_the_same_whether_the_hidden_secret_exists(
    start_agent: StartAgent, pair: dict[str, str]  # noqa: F811
) -> None:
    agent = start_agent(cache={"enabled": True}, policy={"allow_secrets": [pair["name"]]})
    assert agent.secret(pair["arn"])["Name"] == pair["name"]
    answers = []
    for secret_id in (pair["hidden"], pair["none"], pair["hidden"]):  # the last one after a cache fill
        resp = agent.get(f"/secretsmanager/get?secretId={quote(secret_id, safe='')}")
        answers.append((resp.status, resp.body))
        assert HIDDEN_VALUE.encode() not in resp.body
    assert answers[0] == answers[1] == answers[2], answers
    assert answers[0][0] == 400 and json.loads(answers[0][1])["__type"] == "ResourceNotFoundException"


@pytest.mark.parametrize(
    ("action", "params"),
    [
        ("PutSecretValue", {"SecretString": "overwritten"}),
        ("UpdateSecret", {"SecretString": "overwritten"}),
        ("DeleteSecret", {"ForceDeleteWithoutRecovery": "true"}),
        ("TagResource", {"Tags.member.1.Key": "k", "Tags.member.1.Value": "v"}),
        ("PutResourcePolicy", {"ResourcePolicy": '{"Version":"2012-10-17","Statement":[]}'}),
    ],
)
def test_a_write_that_may_reach_a_hidden_secret_is_refused_before_any_call(
    start_proxy: Any, emulator: Any, pair: dict[str, str], action: str, params: dict[str, str]
) -> None:
    proxy = start_proxy(policy={"allow_secrets": [pair["name"]], "allow_actions": ["*"]})
    for secret_id in (pair["hidden"], pair["none"]):  # the same answer whether the hidden secret exists or not
        status, code, body = query(proxy.port, action, SecretId=secret_id, **params)
        assert (status, code) == (403, "AccessDenied"), body
        assert b"name the secret by its name" in body
    sdk = sdk_client(proxy.url)
    status, code, message = sdk_answer(lambda: sdk.put_secret_value(SecretId=pair["hidden"], SecretString="x"))
    assert (status, code) == (400, "AccessDeniedException")  # an SDK caller's denial (docs/interface.md, "SDK callers")
    direct = emulator.direct()
    assert direct.get_secret_value(SecretId=f"{pair['prefix']}/db-backup")["SecretString"] == HIDDEN_VALUE
    assert "Tags" not in direct.describe_secret(SecretId=f"{pair['prefix']}/db-backup")
    metrics = raw_request(proxy.port, "GET", "/metrics").body.decode()
    assert f'query_signing_proxy_upstream_attempts_count{{action="{action}"}}' not in metrics  # no upstream call
    # a batch cannot be checked on its answer either
    r = raw_request(
        proxy.port,
        "GET",
        f"/?Action=BatchGetSecretValue&Version=2017-10-17&SecretIdList.member.1={quote(pair['hidden'], safe='')}",
    )
    assert r.status == 403 and xml_error(r.body)[1] == "AccessDenied"
    # by name, the write goes through
    assert query(proxy.port, "PutSecretValue", SecretId=pair["name"], SecretString="new")[0] == 200


def test_patterns_that_cover_the_longer_name_let_writes_by_arn_through(
    start_proxy: Any, emulator: Any, pair: dict[str, str], tmp_path: Path
) -> None:
    """``p/*`` admits p/db-backup too, and a pattern that is the ARN itself names it exactly: nothing is hidden
    behind either, so a write by ARN goes through."""
    for allow in ([f"{pair['prefix']}/*"], [pair["name"], pair["arn"]]):
        proxy = start_proxy(policy={"allow_secrets": allow, "allow_actions": ["*"]})
        status, code, body = query(proxy.port, "PutSecretValue", SecretId=pair["arn"], SecretString="by-arn")
        assert status == 200, body
    assert emulator.direct().get_secret_value(SecretId=pair["name"])["SecretString"] == "by-arn"
