"""Issue 13, item 1: no fronted service hands the app a credential (docs/interface.md, "Policy").

Through the real listener: ECR and Redshift against moto (signature checking on), ecr-public and Lightsail
(which moto does not serve) against a fault server that records what reaches it. Every operation the
detector flags (:mod:`proxy.guard`) is refused before any upstream call (403 ``AccessDenied`` for a Query
request, 400 ``AccessDeniedException`` for an SDK call, docs/interface.md, "Errors"), unless ``allow_actions`` names it exactly; any service but Secrets Manager
must be given ``allow_actions`` (a config error naming the key otherwise).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.exceptions import ClientError

from proxy.config import ConfigError
from proxy.local import REGION, clean_aws_environ
from tests.faults import answer, xml_error
from tests.integration.test_query_services import client, reads
from tests.support import ServerThread, raw_request

ROOT = Path(__file__).resolve().parents[2]
ECR_VERSION = "2015-09-21"
ECR_TARGET = "AmazonEC2ContainerRegistry_V20150921"


def fronting(start_proxy: Any, role: str, service: str, allow_actions: list[str]) -> ServerThread:
    proxy: ServerThread = start_proxy(
        upstream={"service": service},
        credentials={"role_arn": role, "role_session_name": "guard"},
        policy={"allow_actions": allow_actions},
    )
    return proxy


def denied(call: Any, query: bool = False) -> dict[str, Any]:
    """The refusal: for an SDK's JSON call what AWS answers a denial with (400 ``AccessDeniedException``), for a
    Query request (an awsQuery service's client, or the legacy app) the Query table's 403 ``AccessDenied``."""
    with pytest.raises(ClientError) as refused:
        call()
    response: dict[str, Any] = refused.value.response
    expected = (403, "AccessDenied") if query else (400, "AccessDeniedException")
    assert (response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]) == expected, response
    assert "hands out credentials" in response["Error"]["Message"]
    assert "hands out credentials" in response["Error"]["Message"]
    return response


def sdk_call(port: int, target: str, body: bytes = b"{}", content_type: str = "application/x-amz-json-1.1") -> Any:
    return raw_request(port, "POST", "/", body, headers={"Content-Type": content_type, "X-Amz-Target": target})


# ---------------------------------------------------------------------------------------------------------
# ECR against moto


@pytest.mark.parametrize(
    "allow",
    [
        reads("ecr"),
        ["*"],
        ["Get*"],
        ["GetAuthorization*"],
        ["GetAuthorizationToke?"],  # patterns that match the name alone are still patterns
        ["[G]etAuthorizationToken"],
        ["GetAuthorizationTok[e]n", "Describe*"],
    ],
    ids=["reads", "star", "Get", "prefix", "one-char", "class", "class-and-reads"],
)
def test_ecr_authorization_tokens_are_refused_unless_named(
    start_proxy: Any,
    passthrough_role: str,
    allow: list[str],
) -> None:
    proxy = fronting(start_proxy, passthrough_role, "ecr", allow)
    ecr = client("ecr", proxy.url)
    denied(ecr.get_authorization_token)
    denied(lambda: ecr.get_authorization_token(registryIds=["123456789012"]))
    # Query callers: the same refusal, as the XML error table
    r = raw_request(proxy.port, "GET", f"/?Action=GetAuthorizationToken&Version={ECR_VERSION}")
    assert r.status == 403 and xml_error(r.body)[1] == "AccessDenied"
    r = raw_request(
        proxy.port,
        "POST",
        "/",
        f"Action=GetAuthorization%54oken&Version={ECR_VERSION}".encode(),  # percent-encoded: the same operation
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status == 403 and xml_error(r.body)[1] == "AccessDenied"
    if "Describe*" in allow or "*" in allow:  # reads that carry no credential are still served, both ways
        assert "repositories" in ecr.describe_repositories()
        r = raw_request(proxy.port, "GET", f"/?Action=DescribeRepositories&Version={ECR_VERSION}")
        assert r.status == 200, r.body


def test_an_ecr_authorization_token_named_exactly_is_served(start_proxy: Any, passthrough_role: str) -> None:
    proxy = fronting(start_proxy, passthrough_role, "ecr", ["GetAuthorizationToken", "Describe*"])
    data = client("ecr", proxy.url).get_authorization_token()["authorizationData"]
    assert data and data[0]["authorizationToken"]  # the operator named it: served


@pytest.mark.parametrize(
    ("target", "content_type", "status", "code"),
    [
        (f"{ECR_TARGET}.GetAuthorizationToken", "application/x-amz-json-1.1", 400, "AccessDeniedException"),
        (f"{ECR_TARGET}.getauthorizationtoken", "application/x-amz-json-1.1", 400, "UnknownOperationException"),
        (f" {ECR_TARGET}.GetAuthorizationToken ", "application/x-amz-json-1.1", 400, "AccessDeniedException"),
        (f"{ECR_TARGET}.GetAuthorizationToken", "application/x-amz-json-1.0", 415, "UnsupportedMediaType"),
        ("AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken.", "application/x-amz-json-1.1", 400, None),
    ],
    ids=["exact", "lower-case", "spaces", "json-1.0", "trailing-dot"],
)
def test_sdk_spellings_of_a_credential_operation_are_never_served(
    start_proxy: Any,
    passthrough_role: str,
    target: str,
    content_type: str,
    status: int,
    code: str | None,
) -> None:
    proxy = fronting(start_proxy, passthrough_role, "ecr", ["*"])
    r = sdk_call(proxy.port, target, content_type=content_type)
    assert r.status == status, r.body
    if code is not None:
        assert json.loads(r.body)["__type"] == code


def test_query_spellings_of_a_credential_operation_are_never_served(start_proxy: Any, passthrough_role: str) -> None:
    proxy = fronting(start_proxy, passthrough_role, "ecr", ["*"])
    for target in [
        f"/?Action=GetAuthorizationToken&Version={ECR_VERSION}&registryIds.member.1=123456789012",
        f"/?Action=getAuthorizationToken&Version={ECR_VERSION}",
        f"/?Action=GetAuthorizationToken%00&Version={ECR_VERSION}",
        f"/?Action=DescribeRepositories&Action=GetAuthorizationToken&Version={ECR_VERSION}",
        f"/?Action=GetAuthorizationToken&Action=DescribeRepositories&Version={ECR_VERSION}",
        "/?Action=GetAuthorizationToken",  # no Version: the model's is assumed
    ]:
        r = raw_request(proxy.port, "GET", target)
        assert r.status in (400, 403), (target, r.status, r.body)
        assert b"authorizationToken" not in r.body


# ---------------------------------------------------------------------------------------------------------
# Redshift (awsQuery) against moto


def test_redshift_cluster_credentials_are_refused_unless_named(start_proxy: Any, passthrough_role: str) -> None:
    proxy = fronting(start_proxy, passthrough_role, "redshift", ["Get*", "Describe*"])
    redshift = client("redshift", proxy.url)
    # redshift speaks awsQuery: its SDK sends Query requests, answered with the Query table
    denied(lambda: redshift.get_cluster_credentials(DbUser="app", ClusterIdentifier="c1"), query=True)
    denied(lambda: redshift.get_cluster_credentials_with_iam(ClusterIdentifier="c1"), query=True)
    # DescribeClusters' answer can hold PendingModifiedValues.MasterUserPassword (marked sensitive): refused too
    denied(redshift.describe_clusters, query=True)
    assert "Snapshots" in redshift.describe_cluster_snapshots()  # a read without one is served
    legacy = client("redshift", proxy.url, signed=False)
    denied(lambda: legacy.get_cluster_credentials(DbUser="app", ClusterIdentifier="c1"), query=True)


# ---------------------------------------------------------------------------------------------------------
# ecr-public and Lightsail against a recording fault server (moto serves neither)


@pytest.mark.parametrize(
    ("service", "operation", "params"),
    [
        ("ecr-public", "GetAuthorizationToken", {}),
        ("lightsail", "GetRelationalDatabaseMasterUserPassword", {"relationalDatabaseName": "db"}),
        ("lightsail", "GetKeyPair", {"keyPairName": "k"}),
        ("lightsail", "GetInstanceAccessDetails", {"instanceName": "i"}),
        ("lightsail", "DownloadDefaultKeyPair", {}),
        ("lightsail", "GetBucketAccessKeys", {"bucketName": "bucket"}),
        ("kms", "GenerateDataKey", {"KeyId": "alias/app", "NumberOfBytes": 32}),
        ("kms", "Decrypt", {"CiphertextBlob": "AAAA"}),
        ("ssm", "GetParameter", {"Name": "/app/db", "WithDecryption": True}),
        ("glue", "GetConnection", {"Name": "db"}),
        # a password under another name: registers any machine as a managed node holding the activation's role
        ("ssm", "CreateActivation", {"IamRole": "SSMServiceRole"}),
        # items of a list marked sensitive (stack outputs: whatever the templates export)
        ("proton", "ListServiceInstanceOutputs", {"serviceInstanceName": "i", "serviceName": "s"}),
    ],
)
def test_credential_operations_never_reach_the_upstream(
    start_fault: Any, start_fault_proxy: Any, service: str, operation: str, params: dict[str, Any]
) -> None:
    fault = start_fault(answer(200, {}))
    model = botocore.session.get_session().get_service_model(service)
    for allow in (["*"], [f"{operation[:3]}*"]):  # all, and a pattern that matches the operation
        proxy = start_fault_proxy(fault.url, upstream={"service": service}, policy={"allow_actions": allow})
        target = f"{model.metadata['targetPrefix']}.{operation}"
        content_type = f"application/x-amz-json-{model.metadata['jsonVersion']}"
        r = sdk_call(proxy.port, target, json.dumps(params).encode(), content_type)
        assert r.status == 400 and json.loads(r.body)["__type"] == "AccessDeniedException", r.body
        query = "&".join(
            [f"Action={operation}", f"Version={model.api_version}", *(f"{k}={v}" for k, v in params.items())]
        )
        r = raw_request(proxy.port, "GET", f"/?{query}")
        assert r.status == 403 and xml_error(r.body)[1] == "AccessDenied", r.body
    assert fault.seen == []  # refused before any upstream call
    proxy = start_fault_proxy(fault.url, upstream={"service": service}, policy={"allow_actions": [operation]})
    r = sdk_call(proxy.port, f"{model.metadata['targetPrefix']}.{operation}", json.dumps(params).encode(), content_type)
    assert r.status == 200, r.body  # named exactly: served
    assert fault.operations() == [operation]


# ---------------------------------------------------------------------------------------------------------
# allow_actions is required for any service but Secrets Manager


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"upstream": {"service": "ecr"}}, "policy.allow_actions"),
        ({"upstream": {"service": "sts"}, "policy": {"allow_secrets": ["x"]}}, "policy.allow_actions"),
        ({"routes": [{"port": 0, "upstream": {"service": "ecr", "region": REGION}}]}, "routes[0].policy.allow_actions"),
        (
            {
                "routes": [
                    {
                        "port": 0,
                        "upstream": {"service": "sns", "region": REGION},
                        "policy": {"allow_actions": ["ListTopics"]},
                    },
                    {"port": 0, "upstream": {"service": "lightsail", "region": REGION}},
                ]
            },
            "routes[1].policy.allow_actions",
        ),
    ],
)
def test_a_service_without_allow_actions_is_a_config_error(
    start_proxy: Any, tmp_path: Path, data: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(f"{key}: required for ")):
        start_proxy(**data)
    # the CLI: the proxy and check-config exit 2 with one line naming the key
    path = tmp_path / "proxy.yaml"
    document = {**data, "listen": {"port": 0}, "upstream": {**data.get("upstream", {}), "region": REGION}}
    path.write_text(json.dumps(document))
    for args in (["check-config", str(path)], ["--config", str(path)]):
        out = subprocess.run(
            [sys.executable, "-m", "proxy", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_aws_environ(),
            cwd=ROOT,
        )
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"query-signing-proxy: config error: {key}: required for")
