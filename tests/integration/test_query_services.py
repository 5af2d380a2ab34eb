"""Services that speak awsQuery (issue 9): ``upstream.service: sts`` / ``sns`` against moto with signature
checking on. The form is validated against botocore's model and re-encoded, the XML answer relayed
unchanged; operations that hand out credentials are refused unless named in ``allow_actions``."""

from __future__ import annotations

import fnmatch
import json
import uuid
from typing import Any
from xml.etree import ElementTree

import botocore.session
import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError

from proxy.local import ACCOUNT_ID, DEMO_USER, REGION
from tests.integration.conftest import PASS_ROLE, PASS_ROLE_ARN
from tests.support import ServerThread, raw_request, sdk_client

STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"


def reads(service: str) -> list[str]:
    """The read-only patterns Secrets Manager allows by default (``Get*``, ``Describe*``, ``List*``,
    ``BatchGet*``) that match an operation of ``service``: any other service must list its operations."""
    names = botocore.session.get_session().get_service_model(service).operation_names
    return [p for p in ("Get*", "Describe*", "List*", "BatchGet*") if any(fnmatch.fnmatchcase(n, p) for n in names)]


def service_proxy(start_proxy: Any, role: str, service: str, **policy: Any) -> ServerThread:
    """The proxy fronting ``service`` as ``role``; ``allow_actions`` defaults to :func:`reads`."""
    policy.setdefault("allow_actions", reads(service))
    proxy: ServerThread = start_proxy(
        upstream={"service": service}, credentials={"role_arn": role, "role_session_name": "tests"}, policy=policy
    )
    return proxy


def client(service: str, url: str, signed: bool = True) -> Any:
    """botocore's own client for ``service`` at the proxy: an SDK (placeholder keys) or, unsigned, a legacy app."""
    return sdk_client(url, service=service, **({} if signed else {"signature_version": UNSIGNED}))


@pytest.mark.parametrize("signed", [True, False], ids=["sdk", "unsigned"])
def test_sts_get_caller_identity(start_proxy: Any, passthrough_role: str, signed: bool) -> None:
    proxy = service_proxy(start_proxy, passthrough_role, "sts")
    identity = client("sts", proxy.url, signed).get_caller_identity()
    assert identity["Account"] == ACCOUNT_ID
    assert identity["Arn"] == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{PASS_ROLE}/tests"


def test_sts_answer_is_relayed_unchanged(start_proxy: Any, passthrough_role: str) -> None:
    proxy = service_proxy(start_proxy, passthrough_role, "sts")
    r = raw_request(proxy.port, "GET", "/?Action=GetCallerIdentity&Version=2011-06-15")
    assert r.status == 200
    root = ElementTree.fromstring(r.body)
    assert root.tag == f"{STS_NS}GetCallerIdentityResponse"
    assert root.findtext(f"{STS_NS}GetCallerIdentityResult/{STS_NS}Account") == ACCOUNT_ID
    assert r.header("x-amzn-RequestId")


def test_sns_list_topics(start_proxy: Any, passthrough_role: str, emulator: Any) -> None:
    name = f"passthrough-{uuid.uuid4().hex[:8]}"
    arn = emulator.direct("sns").create_topic(Name=name)["TopicArn"]
    proxy = service_proxy(start_proxy, passthrough_role, "sns")
    for signed in (True, False):
        topics = client("sns", proxy.url, signed).list_topics()["Topics"]
        assert {"TopicArn": arn} in topics
        assert topics == emulator.direct("sns").list_topics()["Topics"]


def test_sns_upstream_errors_are_relayed(start_proxy: Any, passthrough_role: str, emulator: Any) -> None:
    proxy = service_proxy(start_proxy, passthrough_role, "sns")
    missing = f"arn:aws:sns:{REGION}:{ACCOUNT_ID}:missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ClientError) as via_proxy:
        client("sns", proxy.url).get_topic_attributes(TopicArn=missing)
    with pytest.raises(ClientError) as straight:
        emulator.direct("sns").get_topic_attributes(TopicArn=missing)
    assert via_proxy.value.response["Error"] == straight.value.response["Error"]
    assert (
        via_proxy.value.response["ResponseMetadata"]["HTTPStatusCode"]
        == straight.value.response["ResponseMetadata"]["HTTPStatusCode"]
    )


def test_the_form_is_validated_against_the_model(start_proxy: Any, passthrough_role: str) -> None:
    proxy = service_proxy(start_proxy, passthrough_role, "sns")
    cases = [
        ("/?Action=ListTopics&Version=2010-03-31&Bogus=1", 400, "UnknownParameter"),
        ("/?Action=GetTopicAttributes&Version=2010-03-31", 400, "InvalidParameter"),  # SNS's own code
        ("/?Action=ListTopics&Version=2011-06-15", 400, "NoSuchVersion"),
        ("/?Action=NoSuchAction", 400, "InvalidAction"),
    ]
    for target, status, code in cases:
        r = raw_request(proxy.port, "GET", target)
        assert r.status == status, (target, r.body)
        assert r.header("Content-Type") == "text/xml"
        assert f"<Code>{code}</Code>".encode() in r.body


def test_sdk_json_calls_to_an_awsquery_service_are_415(start_proxy: Any, passthrough_role: str) -> None:
    proxy = service_proxy(start_proxy, passthrough_role, "sts")
    r = raw_request(
        proxy.port,
        "POST",
        "/",
        b"{}",
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "sts.GetCallerIdentity"},
    )
    assert r.status == 415 and json.loads(r.body)["__type"] == "UnsupportedMediaType"


@pytest.mark.parametrize(
    ("service", "policy", "call"),
    [
        ("sts", {"allow_actions": ["*"]}, lambda c: c.assume_role(RoleArn=PASS_ROLE_ARN, RoleSessionName="app")),
        ("sts", {"allow_actions": ["Get*"]}, lambda c: c.get_session_token()),
        ("sts", {"allow_actions": reads("sts")}, lambda c: c.get_session_token()),  # the reads include Get*
        ("sts", {"allow_actions": ["*"]}, lambda c: c.get_federation_token(Name="app")),
        ("iam", {"allow_actions": ["*"]}, lambda c: c.create_access_key(UserName=DEMO_USER)),
    ],
    ids=["AssumeRole-star", "GetSessionToken-glob", "GetSessionToken-reads", "GetFederationToken", "CreateAccessKey"],
)
def test_operations_that_hand_out_credentials_are_denied(
    start_proxy: Any, passthrough_role: str, emulator: Any, service: str, policy: dict[str, Any], call: Any
) -> None:
    proxy = service_proxy(start_proxy, passthrough_role, service, **policy)
    keys_before = emulator.direct("iam").list_access_keys(UserName=DEMO_USER)["AccessKeyMetadata"]
    with pytest.raises(ClientError) as denied:
        call(client(service, proxy.url))
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "hands out credentials" in denied.value.response["Error"]["Message"]
    assert emulator.direct("iam").list_access_keys(UserName=DEMO_USER)["AccessKeyMetadata"] == keys_before


def test_a_credential_operation_named_exactly_is_served(start_proxy: Any, passthrough_role: str) -> None:
    proxy = service_proxy(start_proxy, passthrough_role, "sts", allow_actions=["GetSessionToken", "Get*"])
    sts = client("sts", proxy.url)
    assert sts.get_caller_identity()["Account"] == ACCOUNT_ID
    creds = sts.get_session_token()["Credentials"]  # the operator named it: served
    assert creds["AccessKeyId"] and creds["SessionToken"]
    with pytest.raises(ClientError) as denied:  # Get* does not reach GetFederationToken
        sts.get_federation_token(Name="app")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
