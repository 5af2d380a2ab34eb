"""``query-signing-proxy iam-policy`` for real where the emulator can: the printed permission policy attached to a
role in moto's IAM with authorization on, the proxy assuming that role with its own policy wide open, and IAM
itself letting the config's actions through and refusing the others.

moto authorizes Secrets Manager calls against resource ``*`` and cannot match ARN patterns (TESTING.md), so the
statements' resources are widened to ``*`` before the policy is attached: this checks the actions;
tests/unit/test_iam_policy.py checks the resource ARNs against AWS's documented ARN format."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
import yaml

from proxy.local import ACCOUNT_ID, DEMO_SECRET, DEMO_SECRET_VALUE, DEMO_USER, clean_aws_environ, policy_document
from tests.conftest import Emulator, StartProxy
from tests.process import console_script
from tests.support import legacy_client


def iam_policy(config: dict[str, Any], tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"proxy-{uuid.uuid4().hex}.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [console_script(), "iam-policy", "--config", str(path), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_aws_environ(),
    )


def role_with_policy(emulator: Emulator, policy: dict[str, Any]) -> str:
    """A new role the demo user may assume, with ``policy`` (resources widened to ``*`` for moto) attached."""
    iam = emulator.direct("iam")
    name = f"iam-policy-{uuid.uuid4().hex[:8]}"
    role = iam.create_role(
        RoleName=name,
        AssumeRolePolicyDocument=policy_document(
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:user/{DEMO_USER}"},
                "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
            }
        ),
    )["Role"]
    widened = {**policy, "Statement": [{**s, "Resource": "*"} for s in policy["Statement"]]}
    iam.put_role_policy(RoleName=name, PolicyName="from-iam-policy", PolicyDocument=json.dumps(widened))
    arn: str = role["Arn"]
    return arn


def refused_by_iam(call: Any, action: str) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        call()
    error = refused.value.response["Error"]
    assert error["Code"] in ("AccessDenied", "AccessDeniedException"), error
    assert f"not authorized to perform: secretsmanager:{action}" in error["Message"], error  # IAM's words


def test_the_printed_policy_lets_the_configs_actions_through_and_iam_refuses_the_rest(
    emulator: Emulator, start_proxy: StartProxy, tmp_path: Path
) -> None:
    role_name = f"signing-{uuid.uuid4().hex[:8]}"
    role_arn = f"arn:aws:iam::{ACCOUNT_ID}:role/{role_name}"
    config = {
        "upstream": {"service": "secretsmanager", "region": "us-east-1"},
        "credentials": {"role_arn": role_arn},
        "policy": {"allow_actions": ["GetSecretValue", "DescribeSecret"], "allow_secrets": ["demo/*"]},
    }
    out = iam_policy(config, tmp_path)
    assert out.returncode == 0, out.stderr
    policy = json.loads(out.stdout)
    actions = {a for s in policy["Statement"] for a in s["Action"] if a.startswith("secretsmanager:")}
    assert actions == {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}
    signing_role = role_with_policy(emulator, policy)
    # the proxy lets everything through: what is refused below, IAM refused
    proxy = start_proxy(
        credentials={"role_arn": signing_role, "role_session_name": "tests"}, policy={"allow_actions": ["*"]}
    )
    app = legacy_client(proxy.url, str(tmp_path))
    assert app.get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == DEMO_SECRET_VALUE
    assert app.describe_secret(SecretId=DEMO_SECRET)["Name"] == DEMO_SECRET
    refused_by_iam(lambda: app.list_secrets(), "ListSecrets")
    refused_by_iam(lambda: app.put_secret_value(SecretId=DEMO_SECRET, SecretString="x"), "PutSecretValue")
    refused_by_iam(lambda: app.delete_secret(SecretId=DEMO_SECRET), "DeleteSecret")
    assert emulator.direct().get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == DEMO_SECRET_VALUE


def test_the_read_only_default_is_what_iam_lets_through(
    emulator: Emulator, start_proxy: StartProxy, tmp_path: Path
) -> None:
    """``allow_actions`` left out: the proxy's read-only default (Get*, Describe*, List*, BatchGet*), and the
    batch read needs GetSecretValue as well (AWS checks it per secret)."""
    config = {"upstream": {"service": "secretsmanager", "region": "us-east-1"}, "policy": {"allow_secrets": ["demo/*"]}}
    out = iam_policy(config, tmp_path, "--account-id", ACCOUNT_ID)
    assert out.returncode == 0, out.stderr
    proxy = start_proxy(
        credentials={"role_arn": role_with_policy(emulator, json.loads(out.stdout)), "role_session_name": "tests"},
        policy={"allow_actions": ["*"]},
    )
    app = legacy_client(proxy.url, str(tmp_path))
    assert any(s["Name"] == DEMO_SECRET for s in app.list_secrets()["SecretList"])
    assert app.get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == DEMO_SECRET_VALUE
    refused_by_iam(lambda: app.update_secret(SecretId=DEMO_SECRET, Description="x"), "UpdateSecret")
    refused_by_iam(lambda: app.create_secret(Name=f"demo/{uuid.uuid4().hex}", SecretString="x"), "CreateSecret")


def test_the_source_role_policy_lets_the_pods_role_assume_the_signing_role(
    emulator: Emulator, start_proxy: StartProxy, tmp_path: Path
) -> None:
    """--source-role: attached to the identity the proxy starts from (the demo user here, the pod's role in a
    cluster), it is all that identity needs to chain into ``credentials.role_arn``."""
    iam = emulator.direct("iam")
    user = f"pod-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    signing = iam.create_role(
        RoleName=f"chained-{uuid.uuid4().hex[:8]}",
        AssumeRolePolicyDocument=policy_document(
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:user/{user}"},
                "Action": "sts:AssumeRole",
            }
        ),
    )["Role"]["Arn"]
    iam.put_role_policy(
        RoleName=signing.rsplit("/", 1)[1],
        PolicyName="secrets",
        PolicyDocument=policy_document({"Effect": "Allow", "Action": "secretsmanager:*", "Resource": "*"}),
    )
    out = iam_policy(
        {"upstream": {"region": "us-east-1"}, "credentials": {"role_arn": signing}}, tmp_path, "--source-role"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["Statement"] == [
        {"Sid": "AssumeTheSigningRole", "Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": signing}
    ]
    iam.put_user_policy(UserName=user, PolicyName="from-iam-policy", PolicyDocument=out.stdout)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        env.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        proxy = start_proxy(
            credentials={"role_arn": signing, "role_session_name": "tests"}, policy={"allow_actions": ["*"]}
        )
        app = legacy_client(proxy.url, str(tmp_path))
        assert app.get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == DEMO_SECRET_VALUE


@pytest.mark.parametrize(
    ("config", "flags", "says"),
    [
        ({"upstream": {"region": "us-east-1"}}, ["--source-role"], "credentials.role_arn: not set"),
        ({"upstream": {"region": "us-east-1"}}, ["--account-id", "12345"], "--account-id"),
        (
            {"upstream": {"region": "us-east-1"}, "credentials": {"role_arn": "arn:aws:iam::1:user/x"}},
            [],
            "credentials.role_arn",
        ),
        (
            {"upstream": {"region": "us-east-1"}, "policy": {"allow_secrets": ["arn:aws:s3:::bucket"]}},
            [],
            "policy.allow_secrets",
        ),
        (
            {"upstream": {"region": "us-east-1"}, "policy": {"allow_actions": ["GetSecretValu"]}},
            [],
            "policy.allow_actions",
        ),
        (
            {"upstream": {"region": "us-east-1", "service": "sns"}, "policy": {"allow_actions": ["Publish"]}},
            [],
            "secretsmanager",
        ),
        ({"upstream": {"region": "us-east-1"}, "bogus": 1}, [], "bogus"),
        ({}, [], "upstream.region"),
    ],
)
def test_what_it_cannot_write_a_policy_for_exits_2_naming_it(
    tmp_path: Path, config: dict[str, Any], flags: list[str], says: str
) -> None:
    out = iam_policy(config, tmp_path, *flags)
    assert out.returncode == 2 and says in out.stderr and out.stdout == "", (out.stdout, out.stderr)
    assert out.stderr.count("\n") == 1


def test_trust_policies_from_the_command_line(tmp_path: Path) -> None:
    provider = "arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/5C0FFEE5C0FFEE"
    run = [console_script(), "iam-policy", "--trust", "irsa", "--oidc-provider", provider]
    out = subprocess.run([*run, "--namespace", "shop", "--service-account", "web"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    condition = json.loads(out.stdout)["Statement"][0]["Condition"]["StringEquals"]
    assert condition["oidc.eks.eu-west-1.amazonaws.com/id/5C0FFEE5C0FFEE:sub"] == "system:serviceaccount:shop:web"
    out = subprocess.run([*run, "--namespace", "shop"], capture_output=True, text=True)
    assert out.returncode == 2 and "--service-account" in out.stderr
    out = subprocess.run([console_script(), "iam-policy", "--trust", "pod-identity"], capture_output=True, text=True)
    assert json.loads(out.stdout)["Statement"][0]["Principal"] == {"Service": "pods.eks.amazonaws.com"}


def test_each_listener_gets_its_own_actions_on_its_own_secrets_in_its_own_region(tmp_path: Path) -> None:
    """The printed policy, as the CLI prints it, for a main listener that reads ``a/*`` in eu-west-1 and a route
    that writes ``b/*`` in us-east-1: no statement lets ``a/*`` be written or read in us-east-1, nor ``b/*`` be
    reached in eu-west-1 (IAM's own matching: ``*`` any run, ``?`` one character)."""
    from tests.unit.test_iam_policy import iam_matches, secret_arn

    config = {
        "upstream": {"region": "eu-west-1"},
        "policy": {"allow_secrets": ["a/*"], "allow_actions": ["GetSecretValue"]},
        "routes": [
            {
                "port": 8979,
                "upstream": {"region": "us-east-1"},
                "policy": {"allow_secrets": ["b/*"], "allow_actions": ["GetSecretValue", "PutSecretValue"]},
            }
        ],
    }
    out = iam_policy(config, tmp_path, "--account-id", "111122223333")
    assert out.returncode == 0, out.stderr
    granted = [
        (action, resource)
        for statement in json.loads(out.stdout)["Statement"]
        if statement["Effect"] == "Allow"
        for action in statement["Action"]
        for resource in ([statement["Resource"]] if isinstance(statement["Resource"], str) else statement["Resource"])
    ]

    def allows(action: str, name: str, region: str) -> bool:
        arn = secret_arn(name, region, "111122223333")
        return any(a == f"secretsmanager:{action}" and iam_matches(r, arn) for a, r in granted)

    assert allows("GetSecretValue", "a/x", "eu-west-1") and allows("PutSecretValue", "b/x", "us-east-1")
    for action, name, region in [
        ("PutSecretValue", "a/x", "eu-west-1"),
        ("GetSecretValue", "a/x", "us-east-1"),
        ("GetSecretValue", "b/x", "eu-west-1"),
        ("PutSecretValue", "b/x", "eu-west-1"),
    ]:
        assert not allows(action, name, region), (action, name, region, out.stdout)
